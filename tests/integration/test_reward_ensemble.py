"""A reward-model ensemble (reward.ensemble: k score heads on one trunk) and PPO's uncertainty penalty
(ppo.ensemble_penalty: optimise the heads' mean less lambda x their standard deviation)."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.graph.plan import make_plan
from pipeline.graph.runner import run_plan
from pipeline.recipe import load_recipe
from support import copy_artifacts
from support.upstream import TINY


@pytest.fixture(scope="module")
def ensemble_run(tiny_upstream, tmp_path_factory):
    """The tiny recipe's SFT and pairs, a reward model of 3 heads, and 3 PPO steps against it (penalty 0.5)."""
    out = copy_artifacts(tiny_upstream, tmp_path_factory.mktemp("ensemble") / "out", ("sft", "preferences"))
    recipe = load_recipe(TINY, [f"output_dir={out}", "evaluate=null", "stages.reward.ensemble=3",
                                "stages.reward.train.max_steps=20", "stages.ppo.train.max_steps=3",
                                "stages.ppo.train.logging_steps=1", "stages.ppo.ensemble_penalty=0.5"])
    run_plan(make_plan(recipe, only=["reward", "ppo"]))
    return out


@pytest.mark.slow  # a tiny-model training run of a minute or more: the full suite runs it
def test_the_ensemble_is_a_plain_classifier_with_one_output_a_head_and_scores_their_mean(ensemble_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from pipeline.models.reward_model import RewardModel

    folder = ensemble_run / "reward"
    plain = AutoModelForSequenceClassification.from_pretrained(folder)
    assert plain.config.num_labels == 3
    tokenizer = AutoTokenizer.from_pretrained(folder)
    scorer = RewardModel(plain, tokenizer)
    ids = scorer.token_ids(["What is 2 plus 3?", "Say a number."], ["5", "the film was good"])
    heads = torch.tensor(scorer.head_scores(ids))
    assert heads.shape == (2, 3) and heads.std(-1).min() > 1e-3  # the heads disagree: each began elsewhere
    with torch.no_grad():
        alone = plain(input_ids=torch.tensor([ids[0]])).logits[0]
    torch.testing.assert_close(heads[0], alone, atol=1e-5, rtol=0)
    assert scorer.score_ids(ids) == pytest.approx(heads.mean(-1).tolist(), abs=1e-6)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert 0 <= metrics["eval_accuracy"] <= 1


@pytest.mark.slow  # a tiny-model training run of a minute or more: the full suite runs it
def test_ppo_optimises_the_mean_less_the_penalty_times_the_disagreement(ensemble_run):
    steps = json.loads((ensemble_run / "ppo" / "log_history.json").read_text())
    assert [s["step"] for s in steps] == [1, 2, 3]
    for step in steps:  # the tiny recipe shapes nothing else: shaped = mean - 0.5 x std, averaged over the rollout
        assert step["score_std"] > 0
        assert step["score_shaped"] == pytest.approx(step["score"] - 0.5 * step["score_std"], abs=1e-5)


def test_a_penalty_without_an_ensemble_is_refused(tiny_upstream, tmp_path):
    from pipeline.errors import PipelineError

    out = copy_artifacts(tiny_upstream, tmp_path / "out", ("sft", "preferences", "reward"))
    recipe = load_recipe(TINY, [f"output_dir={out}", "evaluate=null", "stages.ppo.ensemble_penalty=0.5",
                                "stages.ppo.train.max_steps=1"])
    with pytest.raises(PipelineError, match="this reward model has one"):
        run_plan(make_plan(recipe, only=["ppo"]))

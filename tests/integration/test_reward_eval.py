"""The reward stage's held-out figures come from one scoring pass: TRL's evaluation metrics computed from the rewards
that pass gives must equal what ``trainer.evaluate()`` (a second pass, TRL's own) gives."""

from __future__ import annotations

import json
import time

import pytest
from trl import RewardConfig, RewardTrainer

from pipeline.models.reward_model import RewardModel
from stages.reward import trainer_eval_metrics
from support import synthetic_pairs, write_jsonl
from support.upstream import TINY

TRL_KEYS = ("eval_loss", "eval_min_reward", "eval_mean_reward", "eval_max_reward", "eval_accuracy", "eval_margin")
"""The figures trainer.evaluate() computes from rewards (beside its timings and the training token count)."""


def reward_model(folder, chat_template: bool = True):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if not chat_template:
        tokenizer.chat_template = None
    model = AutoModelForSequenceClassification.from_pretrained(folder, dtype="float32")
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def fresh_trainer(folder, rows: list[dict], tmp_path, batch_size: int, max_length: int, chat_template: bool = True,
                  **method) -> RewardTrainer:
    """A RewardTrainer around a trained reward model, set up as the stage sets one up (float32, on the CPU)."""
    from datasets import Dataset

    model, tokenizer = reward_model(folder, chat_template)
    args = RewardConfig(output_dir=str(tmp_path / "trainer"), per_device_eval_batch_size=batch_size,
                        max_length=max_length, use_cpu=True, bf16=False, fp16=False, report_to="none",
                        logging_nan_inf_filter=False, disable_tqdm=True, **method)
    return RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                         eval_dataset=Dataset.from_list(rows), processing_class=tokenizer)


def one_pass(trainer, rows: list[dict]) -> dict | None:
    scorer = RewardModel(trainer.model, trainer.processing_class)
    prompts = [r["prompt"] for r in rows]
    chosen_ids = scorer.token_ids(prompts, [r["chosen"] for r in rows])
    rejected_ids = scorer.token_ids(prompts, [r["rejected"] for r in rows])
    chosen, rejected = scorer.score_ids(chosen_ids), scorer.score_ids(rejected_ids)
    return trainer_eval_metrics(trainer, rows, chosen_ids, rejected_ids, chosen, rejected, time.time())


def heldout_rows(upstream) -> list[dict]:
    """The tiny recipe's held-out pairs as the reward stage scored them (conversations)."""
    rows = [json.loads(line) for line in (upstream / "reward" / "eval_scores.jsonl").read_text().splitlines()]
    return [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows]


def test_the_tiny_reward_stage_metrics_equal_trainer_evaluate(tiny_upstream, tmp_path):
    import yaml

    stage = yaml.safe_load(TINY.read_text())["stages"]["reward"]
    folder = tiny_upstream / "reward"
    metrics = json.loads((folder / "metrics.json").read_text())
    rows = heldout_rows(tiny_upstream)
    trainer = fresh_trainer(folder, rows, tmp_path, stage["train"]["batch_size"], stage["max_length"])
    evaluated = trainer.evaluate()
    assert len(trainer.eval_dataset) == len(rows) == metrics["eval_pairs"]
    for key in TRL_KEYS:
        if key != "eval_accuracy":  # the stage keeps its exact accuracy, not TRL's batch average
            assert metrics[key] == pytest.approx(evaluated[key], abs=1e-5), key
    # eval_num_tokens is TRL's count of training tokens: the last one the training logged
    logged = [row["num_tokens"] for row in json.loads((folder / "log_history.json").read_text()) if "num_tokens" in row]
    assert metrics["eval_num_tokens"] == logged[-1]
    assert {"eval_runtime", "eval_samples_per_second", "eval_steps_per_second"} <= metrics.keys()
    # the evaluation row of the live log is there as before (the last row, with TRL's accuracy)
    last = json.loads((folder / "log_history.jsonl").read_text().splitlines()[-1])
    assert last.keys() == {"eval_loss", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second",
                           "eval_num_tokens", "eval_min_reward", "eval_mean_reward", "eval_max_reward",
                           "eval_accuracy", "eval_margin", "epoch", "step"}
    assert last["eval_accuracy"] == pytest.approx(evaluated["eval_accuracy"], abs=1e-5)


@pytest.mark.parametrize("smallest_batch, method", [
    (3, {}),
    (4, {"center_rewards_coefficient": 0.1}),
    (5, {"center_rewards_coefficient": 0.01, "margin": True}),
])
def test_one_pass_metrics_equal_trainer_evaluate_with_batches_filtering_margins_and_centring(
        tiny_upstream, tmp_path, smallest_batch, method):
    rows = heldout_rows(tiny_upstream)
    if method.pop("margin", False):
        rows = [{**r, "margin": 0.25 * (i % 4)} for i, r in enumerate(rows)]
    folder = tiny_upstream / "reward"
    _, tokenizer = reward_model(folder)
    lengths = sorted(max(len(tokenizer.apply_chat_template(r["prompt"] + r[side], tokenize=True,
                                                           return_dict=False)) for side in ("chosen", "rejected"))
                     for r in rows)
    max_length = lengths[len(lengths) * 2 // 3] - 1  # TRL leaves out the pairs over it
    kept = sum(length <= max_length for length in lengths)
    assert 1 < kept < len(rows)
    # several batches, the last one partial: TRL averages its figures per batch
    batch_size = next(b for b in range(smallest_batch, kept) if kept % b)
    trainer = fresh_trainer(folder, rows, tmp_path, batch_size, max_length, **method)
    assert len(trainer.eval_dataset) == kept
    got = one_pass(trainer, rows)
    evaluated = trainer.evaluate()
    # a trainer that never trained prepares its model in evaluate() and reports the time that took
    assert got is not None and got.keys() == evaluated.keys() - {"eval_model_preparation_time"}
    for key in TRL_KEYS:
        assert got[key] == pytest.approx(evaluated[key], abs=1e-5), key
    assert got["eval_num_tokens"] == evaluated["eval_num_tokens"] == 0  # the fresh trainer never trained
    # the same evaluation row was logged twice
    mine, theirs = trainer.state.log_history[-2:]
    assert mine.keys() == theirs.keys() - {"eval_model_preparation_time"}


def test_string_rows_fall_back_to_trainer_evaluate(tiny_upstream, tmp_path):
    """Without a chat template TRL appends EOS to each side before tokenising and RewardModel does not: the token
    ids differ, so the figures come from trainer.evaluate() instead."""
    rows = [{"prompt": r["prompt"][0]["content"], "chosen": r["chosen"][0]["content"],
             "rejected": r["rejected"][0]["content"]} for r in heldout_rows(tiny_upstream)]
    trainer = fresh_trainer(tiny_upstream / "reward", rows, tmp_path, 4, 64, chat_template=False)
    assert len(trainer.eval_dataset) == len(rows)
    assert one_pass(trainer, rows) is None


def test_the_stage_scores_its_held_out_pairs_once(make_recipe, tmp_path, monkeypatch):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", synthetic_pairs(48))
    stage = {"kind": "reward", "data": {"path": str(pairs), "eval_fraction": 0.25}, "lora": None, "max_length": 48,
             "train": {"max_steps": 4, "batch_size": 8, "save_steps": 100}}
    monkeypatch.setattr(RewardTrainer, "evaluate", lambda *a, **k: pytest.fail("a second scoring pass ran"))
    from pipeline.graph.plan import make_plan
    from pipeline.graph.runner import run_plan
    from pipeline.recipe import load_recipe

    run_plan(make_plan(load_recipe(make_recipe({"reward": stage}))))
    metrics = json.loads((tmp_path / "out" / "reward" / "metrics.json").read_text())
    assert metrics["eval_pairs"] == 12 and {*TRL_KEYS, "eval_runtime", "eval_num_tokens"} <= metrics.keys()

"""The online RL stages (grpo, rloo, on TRL's trainers) from the tiny SFT policy and reward model of
recipes/online.yaml: the policy moves away from SFT while the reference stays SFT, the adapter loads with plain peft,
TRL's reward and KL figures reach metrics.json, and batch sizes that cannot hold whole groups are refused."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from pipeline.errors import RecipeError
from pipeline.graph.plan import make_plan
from pipeline.graph.runner import run_plan
from pipeline.recipe import load_recipe
from support import ROOT, copy_artifacts, run_cli
from support.upstream import UPSTREAM

ONLINE = ROOT / "recipes" / "online.yaml"
KINDS = ("grpo", "rloo")
IDS = torch.tensor([[5, 6, 7, 8, 9, 10]])


def plan_for(out: Path, *overrides: str, only=KINDS):
    recipe = load_recipe(ONLINE, [f"output_dir={out}", "evaluate=null", *overrides])
    return make_plan(recipe, only=list(only))


def short(kind: str, steps: int = 4) -> list[str]:
    return [f"stages.{kind}.train.max_steps={steps}", f"stages.{kind}.train.logging_steps=1",
            f"stages.{kind}.train.save_steps=100"]


@pytest.fixture(scope="module")
def upstream(upstreams) -> Path:
    """The recipe's SFT policy (an unmerged LoRA adapter), preference pairs and reward model, built once per session
    (the stage blocks are tiny.yaml's: the same folder as the ``tiny_upstream`` fixture's). Read it, never write."""
    return upstreams.get(ONLINE, UPSTREAM)


@pytest.fixture
def out(upstream, tmp_path) -> Path:
    """A fresh output folder holding copies of the upstream artifacts."""
    return copy_artifacts(upstream, tmp_path / "out", UPSTREAM)


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def logged(folder: Path) -> list[dict]:
    """The training steps of log_history.json (the final summary row has no reward)."""
    return [row for row in json.loads((folder / "log_history.json").read_text()) if "reward" in row]


@pytest.mark.parametrize("kind", KINDS)
def test_lora_policy_moves_off_sft_and_reloads_with_plain_peft(out, kind):
    run_plan(plan_for(out, f"stages.{kind}.lora={{r: 4, alpha: 16, dropout: 0.0}}",
                      f"stages.{kind}.train.learning_rate=3e-2", *short(kind), only=(kind,)))
    folder = out / kind
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["output"]["format"] == "adapter" and manifest["output"]["base"]["path"].startswith(
        "../../.bases/sft-")

    # TRL's per-step reward and KL figures, in the log and summarised in metrics.json
    steps = logged(folder)
    assert [row["step"] for row in steps] == [1, 2, 3, 4]
    for row in steps:
        # the reward function is the reward stage's model, named after its folder
        assert row["rewards/reward/mean"] == pytest.approx(row["reward"]) and "kl" in row and "entropy" in row
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["global_step"] == 4 and metrics["train_prompts"] == 64
    for key in ("reward_first", "reward_last", "reward_mean", "reward_std_last", "kl_first", "kl_last", "kl_mean",
                "entropy_last", "completion_mean_length_last", "step_time_mean"):
        assert math.isfinite(metrics[key]), key
    assert metrics["reward_first"] == steps[0]["reward"] and metrics["kl_last"] == steps[-1]["kl"]
    # the first samples come from the unchanged policy (fresh adapter): KL to the reference is 0, then it grows
    assert abs(metrics["kl_first"]) < 1e-6 and metrics["kl_last"] > 0

    from peft import PeftModel

    from pipeline.artifacts.policy import load_policy

    # the tiny recipe's SFT stage leaves an unmerged adapter: the start weights are it merged into the base model
    policy = PeftModel.from_pretrained(load_policy(out / "sft"), str(folder))  # plain peft
    tuned, start = logits(policy), logits(load_policy(out / "sft"))
    with policy.disable_adapter():
        torch.testing.assert_close(logits(policy), start, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(tuned, start, atol=1e-5), "the adapter learned something"
    torch.testing.assert_close(logits(load_policy(folder)), tuned, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_full_fine_tuning_keeps_the_sft_policy_as_reference(out, kind):
    """As in recipes/online.yaml: full weights. TRL rebuilds the reference from the policy's name_or_path, which must be
    the SFT policy (not the base model the SFT adapter sits on): the KL of the very first step is then exactly 0."""
    run_plan(plan_for(out, *short(kind, steps=3), only=(kind,)))
    folder = out / kind
    assert json.loads((folder / "manifest.json").read_text())["output"]["format"] == "full"
    steps = logged(folder)
    # RLOO logs the mean summed log-ratio (k1), which can be slightly negative once the policy moves: only its
    # departure from 0 says the reference stayed put while the policy trained.
    assert steps[0]["kl"] == 0.0 and any(abs(step["kl"]) > 1e-6 for step in steps[1:]), steps

    from transformers import AutoModelForCausalLM

    from pipeline.artifacts.policy import load_policy

    policy = AutoModelForCausalLM.from_pretrained(folder)
    assert not torch.allclose(logits(policy), logits(load_policy(out / "sft")), atol=1e-4)


def test_without_a_kl_term_there_is_no_reference_and_every_weight_still_trains(out):
    """beta 0 (TRL's GRPO default): no reference model and no `kl` in the logs. The SFT adapter merged into its base
    comes back from peft frozen; full fine-tuning must train it all the same."""
    run_plan(plan_for(out, "stages.grpo.beta=0", *short("grpo", steps=2), only=("grpo",)))
    folder = out / "grpo"
    assert all("kl" not in row for row in logged(folder))
    assert "kl_last" not in json.loads((folder / "metrics.json").read_text())

    from transformers import AutoModelForCausalLM

    from pipeline.artifacts.policy import load_policy

    policy = AutoModelForCausalLM.from_pretrained(folder)
    assert not torch.allclose(logits(policy), logits(load_policy(out / "sft")), atol=1e-4)


def test_trl_scores_the_text_the_reward_stage_trained_on(upstream):
    """GRPO/RLOO render (prompt, completion) through the reward tokenizer's chat template; the token ids must be those
    the reward stage trained and evaluated on (pipeline.reward_model)."""
    from trl.data_utils import apply_chat_template

    from pipeline.models.reward_model import RewardModel

    scorer = RewardModel.from_pretrained(upstream / "reward")
    prompts, completions = ["What is 2 plus 2?", "Say the number 5."], ["2 + 2 = 4.", "five"]
    for prompt, completion in zip(prompts, completions):
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
        text = apply_chat_template({"messages": messages}, scorer.tokenizer)["text"]
        assert scorer.tokenizer(text, add_special_tokens=False)["input_ids"] == scorer.token_ids([prompt],
                                                                                                 [completion])[0]


# --- validation ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_a_batch_that_cannot_hold_whole_groups_is_refused_naming_the_keys(kind):
    with pytest.raises(RecipeError) as info:
        load_recipe(ONLINE, [f"stages.{kind}.train.batch_size=6"])
    (problem,) = info.value.problems
    assert problem.where == f"stages.{kind}.num_generations"
    assert "train.batch_size x train.gradient_accumulation_steps (6 x 1 = 6)" in problem.message
    assert "multiple of num_generations (4)" in problem.message
    with pytest.raises(RecipeError, match="greater than or equal to 2"):
        load_recipe(ONLINE, [f"stages.{kind}.num_generations=1"])
    # gradient accumulation and more processes count towards the step's batch
    load_recipe(ONLINE, [f"stages.{kind}.train.batch_size=2", f"stages.{kind}.train.gradient_accumulation_steps=2"])


def test_processes_count_towards_the_batch_from_the_caller_never_the_environment(monkeypatch):
    with pytest.raises(RecipeError):
        load_recipe(ONLINE, ["stages.grpo.train.batch_size=2"])
    load_recipe(ONLINE, ["stages.grpo.train.batch_size=2"], processes=2)
    with pytest.raises(RecipeError, match=r"\(3 x 1 x 2 processes = 6\)"):
        load_recipe(ONLINE, ["stages.grpo.train.batch_size=3"], processes=2)
    # a launcher's WORLD_SIZE does not change what validation says: `validate` agrees with and without it
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RecipeError):
        load_recipe(ONLINE, ["stages.grpo.train.batch_size=2"])
    plain = run_cli("validate", "recipes/online.yaml", "--set", "stages.grpo.train.batch_size=2",
                    env={"WORLD_SIZE": "2"})
    assert plain.returncode == 2 and "stages.grpo.num_generations" in plain.stderr
    launched = run_cli("validate", "recipes/online.yaml", "--set", "stages.grpo.train.batch_size=2", "--launch",
                       "launch/cpu_2proc.yaml")
    assert launched.returncode == 0, launched.stderr


def test_online_recipe_validates_and_a_bad_batch_names_the_key():
    result = run_cli("validate", "recipes/online.yaml")
    assert result.returncode == 0, result.stderr
    assert "sft -> preferences -> reward -> grpo -> rloo" in result.stdout
    result = run_cli("validate", "recipes/online.yaml", "--set", "stages.rloo.num_generations=3")
    assert result.returncode == 2
    assert "stages.rloo.num_generations: train.batch_size x train.gradient_accumulation_steps (16 x 1 = 16)" in (
        result.stdout + result.stderr)


def test_online_stages_need_a_reward_stage_and_prompts():
    with pytest.raises(RecipeError) as info:
        load_recipe(ONLINE, ["stages.grpo.from=sft", "stages.rloo.prompts=nowhere.yaml"])
    problems = {str(p) for p in info.value.problems}
    assert "stages.grpo.from: a grpo stage needs a reward_model stage upstream" in problems
    assert any(p.startswith("stages.rloo.prompts: file not found: nowhere.yaml") for p in problems), problems


@pytest.mark.parametrize("kind", KINDS)
def test_beta_control_follows_the_logged_kl_with_the_pi_controller(out, kind):
    """beta_control: beta waits at its start until TRL's logged KL first reaches the target, then every logged step
    sets the beta of the next ones by the PI rule (replayed here on the logged KL), and the beta in use is logged."""
    from pipeline.rl.ppo_math import PIKLController

    target = 0.02
    run_plan(plan_for(out, f"stages.{kind}.beta_control={{target: {target}, kp: 1.0, ki: 0.5}}",
                      *short(kind, steps=12), f"stages.{kind}.train.save_steps=6", only=(kind,)))
    steps = logged(out / kind)
    assert [row["step"] for row in steps] == list(range(1, 13))
    replay = PIKLController(0.05, target, 1.0, 0.5)
    for row in steps:
        assert row["beta"] == pytest.approx(replay.value, rel=1e-9), (row["step"], steps)
        replay.update(row["kl"], 1)
    assert replay.reached, [row["kl"] for row in steps]
    assert len({round(row["beta"], 9) for row in steps}) > 2, "beta moved after the warm-up"
    metrics = json.loads((out / kind / "metrics.json").read_text())
    assert metrics["beta_first"] == 0.05 and metrics["beta_last"] == steps[-1]["beta"]


def test_beta_control_needs_a_starting_beta():
    with pytest.raises(RecipeError, match="beta_control: beta is 0"):
        load_recipe(ONLINE, ["stages.grpo.beta=0", "stages.grpo.beta_control={target: 0.1}"])


@pytest.mark.parametrize("kind", KINDS)
def test_every_step_logs_the_gold_judge_of_its_completions_and_trains_as_without(upstream, tmp_path, kind):
    """judge_rollouts: TRL scores each step's completions with the recipe's gold judge (VADER here) as a reward
    function of weight 0. `gold` is in every logged row, the history's and the live log's, equal to TRL's
    rewards/gold/mean; metrics.json has its peak; and the policy trains exactly as it does without the judge (a
    weight other than 0 would change the reward TRL logs and the adapter)."""
    from safetensors.torch import load_file

    runs = {}
    for judged in (True, False):
        out = copy_artifacts(upstream, tmp_path / f"judged-{judged}", UPSTREAM)
        recipe = load_recipe(ONLINE, [f"output_dir={out}", *short(kind), f"stages.{kind}.judge_rollouts={judged}"])
        run_plan(make_plan(recipe, only=[kind]))
        runs[judged] = out / kind
    steps, plain = logged(runs[True]), logged(runs[False])
    assert len(steps) == 4 and all(row["gold"] == row["rewards/gold/mean"] for row in steps), steps
    assert all(-1.0 <= row["gold"] <= 1.0 for row in steps) and len({row["gold"] for row in steps}) > 1
    live = [json.loads(line) for line in (runs[True] / "log_history.jsonl").read_text().splitlines()]
    assert [row["gold"] for row in live if "gold" in row] == [row["gold"] for row in steps]
    assert all("gold" not in row and "rewards/gold/mean" not in row for row in plain)
    metrics = json.loads((runs[True] / "metrics.json").read_text())
    peak = max(steps, key=lambda row: row["gold"])
    assert (metrics["gold_peak"], metrics["gold_peak_step"]) == (peak["gold"], peak["step"])
    assert [row["reward"] for row in steps] == pytest.approx([row["reward"] for row in plain], rel=1e-6)
    weights, judged_files = ([str(path.relative_to(runs[j])) for path in sorted(runs[j].rglob("*.safetensors"))]
                             for j in (False, True))
    assert weights and weights == judged_files
    for name in weights:
        judged_weights, plain_weights = (load_file(str(runs[j] / name)) for j in (True, False))
        assert all(torch.allclose(judged_weights[k], plain_weights[k], atol=1e-7) for k in plain_weights), name

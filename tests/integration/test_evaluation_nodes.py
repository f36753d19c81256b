"""Gold evaluation as nodes of the graph: `evaluate:` expands into eval-base and eval-<stage>, each fingerprinted,
cached apart from training, shown by `plan`, selectable with --only, with lineage in its manifest."""

from __future__ import annotations

import json

from pipeline.artifacts.artifact import Artifact
from pipeline.graph.plan import make_plan
from pipeline.recipe import load_recipe, topological_order
from support import CARDS, make_card, run_cli, run_recipe, sft_stage, write_jsonl


def finished_at(out, name):
    return Artifact.read(out / name).manifest["finished_at"]


def eval_recipe(make_recipe, chat_data, tmp_path, **extra):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "What is 30 plus 4?"}, {"prompt": "Say 9."},
                                                       {"prompt": "Hi"}])
    card = make_card(tmp_path, "prompts", source={"path": str(prompts)}, format="prompt",
                     splits={"eval_fraction": 1.0, "seed": 0})
    evaluate = {"prompts": str(card), "n": 3, "sampling": {"max_new_tokens": 4, "batch_size": 2}, **extra}
    stages = {"sft": sft_stage(chat_data), "next": {**sft_stage(chat_data, steps=2), "from": "sft"}}
    return make_recipe(stages, evaluate=evaluate)


def test_evaluate_expands_into_nodes_placed_after_what_they_evaluate(make_recipe, chat_data, tmp_path):
    recipe = load_recipe(eval_recipe(make_recipe, chat_data, tmp_path))
    assert topological_order(recipe) == ["eval-base", "sft", "eval-sft", "next", "eval-next"]
    assert recipe.stages["eval-sft"].from_ == ["sft"] and recipe.stages["eval-base"].from_ == []
    assert recipe.stages["eval-sft"].kind == "evaluate" and recipe.stages["eval-sft"].n == 3
    only_sft = load_recipe(eval_recipe(make_recipe, chat_data, tmp_path, stages=["sft"], baseline=False))
    assert [n for n in only_sft.stages if n.startswith("eval-")] == ["eval-sft"]


def test_evaluations_are_cached_apart_from_training_with_lineage(make_recipe, chat_data, tmp_path):
    path = eval_recipe(make_recipe, chat_data, tmp_path)
    out = tmp_path / "out"
    run_recipe(path)
    base = json.loads((out / "eval-base" / "eval.json").read_text())
    sft = json.loads((out / "eval-sft" / "eval.json").read_text())
    assert base["n"] == sft["n"] == 3 and base["kl_mean"] == 0.0, "the base model is its own reference"
    assert sft["kl_mean"] != 0.0, "the SFT policy is compared with the base model it started from"
    assert len((out / "eval-sft" / "eval_samples.jsonl").read_text().splitlines()) == 3
    manifest = Artifact.read(out / "eval-next").manifest
    assert [a["stage"] for a in manifest["lineage"]] == ["next", "sft"] and manifest["output"]["target"] == "next"
    assert not (out / "sft" / "eval.json").exists(), "evaluation never writes into the evaluated artifact"
    trained_at = finished_at(out, "sft")

    plan = run_recipe(path)  # nothing changed: neither retrained nor re-evaluated
    assert {s.action for s in plan.stages} == {"cached"}

    plan = run_recipe(path, ["evaluate.sampling.max_new_tokens=2"])  # re-evaluate, do not retrain
    assert {s.name: s.action for s in plan.stages} == {"eval-base": "run", "sft": "cached", "eval-sft": "run",
                                                       "next": "cached", "eval-next": "run"}
    assert plan["eval-sft"].reason == "config: stages.eval-sft.sampling.max_new_tokens 4 -> 2"
    assert json.loads((out / "eval-sft" / "eval.json").read_text())["mean_length"] <= 2
    assert finished_at(out, "sft") == trained_at

    report = run_cli("report", str(path))
    assert report.returncode == 0, report.stderr
    rows = [line.split()[0] for line in report.stdout.splitlines()[2:]]
    assert rows == ["base", "sft", "next"]


def test_plan_shows_the_nodes_and_only_selects_them(make_recipe, chat_data, tmp_path):
    path = eval_recipe(make_recipe, chat_data, tmp_path)
    shown = run_cli("plan", str(path))
    assert shown.returncode == 0, shown.stderr
    assert [line.split()[:2] for line in shown.stdout.splitlines() if line.startswith("eval-")] == [
        ["eval-base", "evaluate"], ["eval-sft", "evaluate"], ["eval-next", "evaluate"]]
    recipe = load_recipe(path)
    selected = lambda plan: [s.name for s in plan.stages if s.action != "skip"]  # noqa: E731
    assert selected(make_plan(recipe)) == ["eval-base", "sft", "eval-sft", "next", "eval-next"]
    # a stage selected by --only brings its evaluation; the baseline comes with stages that start from the base model
    assert selected(make_plan(recipe, only=["sft"])) == ["eval-base", "sft", "eval-sft"]
    run_recipe(path, only=["sft"])
    assert selected(make_plan(recipe, only=["next"])) == ["next", "eval-next"]
    assert selected(make_plan(recipe, only=["eval-sft"])) == ["eval-sft"]
    assert selected(make_plan(recipe, from_stage="next")) == ["next", "eval-next"]


def test_user_stage_names_cannot_take_the_node_prefix(make_recipe, chat_data):
    import pytest

    from pipeline.errors import RecipeError

    with pytest.raises(RecipeError, match="stages.eval-mine: names starting with eval- are kept"):
        load_recipe(make_recipe({"eval-mine": sft_stage(chat_data)}))
    # a recipe may name an evaluate stage itself
    explicit = load_recipe(make_recipe({"sft": sft_stage(chat_data), "check": {
        "kind": "evaluate", "from": "sft", "prompts": str(CARDS / "tiny_eval_prompts.yaml"), "n": 2}}))
    assert explicit.stages["check"].produces == "evaluation"


def test_a_panel_of_judges_is_reported_beside_the_gold_judge(make_recipe, chat_data, tmp_path):
    from pipeline.evaluation.judges import make_judge
    from support import synthetic_pairs

    pairs = write_jsonl(tmp_path / "pairs.jsonl", synthetic_pairs(32))
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "What is 30 plus 4?"}, {"prompt": "Say 9."}])
    card = make_card(tmp_path, "prompts", source={"path": str(prompts)}, format="prompt",
                     splits={"eval_fraction": 1.0, "seed": 0})
    reward = {"kind": "reward", "data": {"path": str(pairs)}, "lora": None, "max_length": 48,
              "train": {"max_steps": 2, "batch_size": 8}}
    path = make_recipe({"sft": sft_stage(chat_data), "reward": reward}, evaluate={
        "prompts": str(card), "n": 2, "sampling": {"max_new_tokens": 4, "batch_size": 2},
        "judges": ["reward:reward", "support.judges:length_judge"]})
    recipe = load_recipe(path)
    assert recipe.stages["eval-base"].from_ == ["reward"] and recipe.stages["eval-sft"].from_ == ["sft", "reward"]
    assert topological_order(recipe).index("reward") < topological_order(recipe).index("eval-base")
    out = tmp_path / "out"
    run_recipe(path)
    for node, target in (("eval-base", "base"), ("eval-sft", "sft")):
        metrics = json.loads((out / node / "eval.json").read_text())
        assert metrics["target"] == target and metrics["judge"] == "vader"
        assert set(metrics["judges"]) == {"reward:reward", "support.judges:length_judge"}
        samples = [json.loads(line) for line in (out / node / "eval_samples.jsonl").read_text().splitlines()]
        lengths = [len(s["completion"]) for s in samples]
        assert [s["judges"]["support.judges:length_judge"] for s in samples] == lengths
        assert metrics["judges"]["support.judges:length_judge"]["mean"] == sum(lengths) / len(lengths)
        lo, hi = metrics["judges"]["reward:reward"]["ci95"]
        assert lo <= metrics["judges"]["reward:reward"]["mean"] <= hi
    report = run_cli("report", str(path))
    assert report.returncode == 0 and "judge reward:reward: base " in report.stdout and "; sft " in report.stdout, \
        report.stdout + report.stderr
    reward = make_judge(f"reward:{out / 'reward'}")  # the stage's artifact scored the samples
    sample = samples[0]
    assert reward.score([sample["prompt"]], [sample["completion"]])[0] == sample["judges"]["reward:reward"]


def test_bad_panel_judges_are_named(make_recipe, chat_data, tmp_path):
    nowhere = run_cli("validate", str(eval_recipe(make_recipe, chat_data, tmp_path, judges=["reward:nope"])))
    assert nowhere.returncode == 2 and "'nope' is neither a stage of this recipe nor a reward artifact folder" \
        in nowhere.stderr, nowhere.stderr
    policy = run_cli("validate", str(eval_recipe(make_recipe, chat_data, tmp_path, judges=["reward:sft"])))
    assert policy.returncode == 2 and "'reward:sft': 'sft' makes a policy, not a reward model" in policy.stderr, \
        policy.stderr
    twice = run_cli("validate", str(eval_recipe(make_recipe, chat_data, tmp_path, judges=["vader", " vader"])))
    assert twice.returncode == 2 and "each judge once" in twice.stderr

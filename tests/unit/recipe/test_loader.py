"""Recipe validation: every problem at once, each with its YAML path; exit 2 and nothing written."""

from __future__ import annotations

import pytest
import yaml

from pipeline.config.schema import StageConfig
from pipeline.errors import RecipeError
from pipeline.recipe import downstream_of, load_recipe, loader, topological_order
from support import ROOT, run_cli, sft_stage


def problems_of(path, overrides=()) -> list[str]:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, list(overrides))
    return [str(p) for p in info.value.problems]


HUB_RECIPES = ("zephyr_dpo.yaml", "hh_ppo.yaml")
"""Their model and data come from the hub: tests/integration/test_gpu_recipes.py validates them against a local hub
cache."""


@pytest.mark.parametrize("path", [p for p in sorted((ROOT / "recipes").glob("*.yaml")) if p.name not in HUB_RECIPES],
                         ids=lambda p: p.name)
def test_every_shipped_recipe_is_valid(path):
    assert load_recipe(path).stages


def test_unknown_key_suggests_the_right_one(make_recipe, chat_data):
    stage = sft_stage(chat_data)
    stage["lora"]["rank"] = 8
    stage["trian"] = {}
    problems = problems_of(make_recipe({"sft": stage}))
    assert "stages.sft.lora.rank: unknown key 'rank' (did you mean 'r'?)" in problems
    assert "stages.sft.trian: unknown key 'trian' (did you mean 'train'?)" in problems


def test_names_from_trl_transformers_and_axolotl_point_to_ours(make_recipe, chat_data):
    stage = sft_stage(chat_data)
    stage["lora"]["lora_target"] = ["q_proj"]
    stage["train"].update(bf16=True, warmup_steps=10, micro_batch_size=4)
    stage["cutoff_len"] = 512
    problems = problems_of(make_recipe({"sft": stage}))
    for expected in ("stages.sft.lora.lora_target: unknown key 'lora_target' (did you mean 'target_modules'?)",
                     "stages.sft.train.bf16: unknown key 'bf16' (did you mean 'precision: bf16'?)",
                     "stages.sft.train.warmup_steps: unknown key 'warmup_steps' (did you mean 'warmup_ratio', a "
                     "fraction of the steps?)",
                     "stages.sft.train.micro_batch_size: unknown key 'micro_batch_size' (did you mean 'batch_size'?)",
                     "stages.sft.cutoff_len: unknown key 'cutoff_len' (did you mean 'max_length'?)"):
        assert expected in problems, problems


def test_top_level_unknown_key_and_missing_model(make_recipe, chat_data, tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "sed": 3, "stages": {"sft": sft_stage(chat_data)}}))
    problems = problems_of(path)
    assert "sed: unknown key 'sed' (did you mean 'seed'?)" in problems
    assert "model: missing (required)" in problems


def test_wrong_types_and_ranges(make_recipe, chat_data):
    stage = sft_stage(chat_data, lora={"r": 0}, train={"learning_rate": "fast"})
    problems = problems_of(make_recipe({"sft": stage}))
    assert any(p.startswith("stages.sft.lora.r: Input should be greater than or equal to 1") for p in problems)
    assert any(p.startswith("stages.sft.train.learning_rate: Input should be a valid number") for p in problems)


def test_missing_data_file(make_recipe, tmp_path):
    problems = problems_of(make_recipe({"sft": sft_stage(tmp_path / "nope.jsonl")}))
    assert len(problems) == 1 and problems[0].startswith("stages.sft.data.path: file not found")


def test_unknown_kind_and_unknown_model(make_recipe, chat_data):
    stage = {**sft_stage(chat_data), "kind": "stf"}
    problems = problems_of(make_recipe({"sft": stage}, model="builtin:huge-llama"))
    assert "stages.sft.kind: unknown stage kind 'stf' (did you mean 'sft'?)" in problems
    assert any(p.startswith("model.source: unknown builtin model 'huge-llama'") for p in problems)


def test_missing_reference_and_cycle(make_recipe, chat_data):
    stages = {
        "sft": sft_stage(chat_data),
        "a": {**sft_stage(chat_data), "from": "sfft"},
        "b": {**sft_stage(chat_data), "from": "c"},
        "c": {**sft_stage(chat_data), "from": "b"},
    }
    problems = problems_of(make_recipe(stages))
    assert "stages.a.from: no stage named 'sfft' (did you mean 'sft'?)" in problems
    assert any(p.startswith("stages: cycle: b -> c -> b") or p.startswith("stages: cycle: c -> b -> c")
               for p in problems)


def test_kind_that_cannot_take_its_upstream(monkeypatch, make_recipe, chat_data):
    class ToyPreferences(StageConfig):
        kind: str = "toyprefs"
        produces = "preferences"
        accepts = {"policy": True}

    kinds = {**loader.config_classes(), "toyprefs": ToyPreferences}
    monkeypatch.setattr(loader, "config_classes", lambda: kinds)
    stages = {"prefs": {"kind": "toyprefs"}, "sft": {**sft_stage(chat_data), "from": "prefs"}}
    problems = problems_of(make_recipe(stages))
    assert problems == [
        "stages.sft.from: a sft stage cannot take 'prefs' (toyprefs, a preferences); it takes: policy"
    ]


def test_two_policies_upstream_is_refused(make_recipe, chat_data):
    stages = {"a": sft_stage(chat_data), "b": sft_stage(chat_data), "c": {**sft_stage(chat_data), "from": ["a", "b"]}}
    assert problems_of(make_recipe(stages)) == ["stages.c.from: takes one policy, got a, b"]


def test_all_problems_reported_together(make_recipe, chat_data, tmp_path):
    stage = sft_stage(tmp_path / "missing.jsonl", lora={"alpha": -1}, max_length=2)
    stage["packing"] = "sometimes"
    stages = {"sft": stage, "x": {**sft_stage(chat_data), "from": "y"}}
    problems = problems_of(make_recipe(stages, seed="abc"))
    wheres = {p.split(":")[0] for p in problems}
    assert {"seed", "stages.sft.data.path", "stages.sft.lora.alpha", "stages.sft.max_length", "stages.sft.packing",
            "stages.x.from"} <= wheres


def test_overrides(make_recipe, chat_data):
    path = make_recipe({"sft": sft_stage(chat_data)})
    recipe = load_recipe(path, ["stages.sft.lora.r=2", "seed=11", "stages.sft.train.precision=fp32"])
    assert recipe.stages["sft"].lora.r == 2 and recipe.seed == 11
    assert problems_of(path, ["stages.sft.lora=3"])[0].startswith("stages.sft.lora: Input should be")
    assert problems_of(path, ["stages.sft.lora.r.deep=1"]) == [
        "--set stages.sft.lora.r.deep=1: 'stages.sft.lora.r' is not a mapping"]
    assert problems_of(path, ["justakey"]) == ["--set justakey: expected KEY.PATH=VALUE"]


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nstages:\n  sft: {kind: sft\n")
    problems = problems_of(path)
    assert len(problems) == 1 and "line" in problems[0] and "not valid YAML" in problems[0]


def test_order_branches_and_downstream(make_recipe, chat_data):
    stages = {
        "dpo_like": {**sft_stage(chat_data), "from": "sft"},
        "sft": sft_stage(chat_data),
        "ppo_like": {**sft_stage(chat_data), "from": "sft"},
        "after": {**sft_stage(chat_data), "from": "ppo_like"},
    }
    recipe = load_recipe(make_recipe(stages))
    order = topological_order(recipe)
    assert order[0] == "sft"
    assert order.index("after") > order.index("ppo_like")
    assert sorted(order) == sorted(stages)
    assert downstream_of(recipe, "ppo_like") == {"ppo_like", "after"}
    assert downstream_of(recipe, "sft") == set(stages)


def test_cli_validate_exits_2_without_traceback_and_writes_nothing(make_recipe, chat_data, tmp_path):
    stage = sft_stage(chat_data)
    stage["lora"]["rr"] = 1
    path = make_recipe({"sft": stage})
    for command in ("validate", "run", "plan"):
        result = run_cli(command, str(path))
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        assert "stages.sft.lora.rr: unknown key 'rr' (did you mean 'r'?)" in result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_help_explains_each_command():
    for command in ("run", "validate", "plan"):
        result = run_cli(command, "--help")
        assert result.returncode == 0
        assert "--set" in result.stdout
    assert "--force" in run_cli("run", "--help").stdout
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("alignment-pipeline 0.")


def test_relative_paths_are_taken_from_the_recipe_folder_wherever_it_runs_from(tmp_path):
    for cwd in (ROOT, tmp_path, ROOT / "recipes"):
        result = run_cli("validate", str(ROOT / "recipes" / "tiny.yaml"), cwd=cwd)
        assert result.returncode == 0, (cwd, result.stderr)
    recipe = load_recipe(ROOT / "recipes" / "tiny.yaml")
    assert recipe.stages["sft"].data.card == ROOT / "data_cards" / "tiny_chat.yaml"
    assert recipe.evaluate.prompts == ROOT / "data_cards" / "tiny_eval_prompts.yaml"


def test_a_missing_input_is_one_problem_without_follow_on_errors(tmp_path):
    text = (ROOT / "recipes" / "tiny.yaml").read_text().replace("../data_cards/tiny_prompts.yaml", "missing.yaml", 1)
    path = tmp_path / "tiny.yaml"
    path.write_text(text.replace("../data_cards/", str(ROOT / "data_cards") + "/"))
    problems = problems_of(path)
    # the preferences stage's prompts are missing; reward and dpo still see it as their preferences upstream
    assert problems == [f"stages.preferences.prompts: file not found: missing.yaml (relative to {tmp_path})"]


def test_settings_a_stage_does_not_use_are_refused_with_the_key_named():
    problems = problems_of(ROOT / "recipes" / "tiny.yaml", ["stages.ppo.train.callbacks=[support.callbacks:Probe]",
                                                            "stages.ppo.train.eval_steps=5"])
    assert problems == ["stages.ppo.train.callbacks: a ppo stage does not use this setting; remove it",
                        "stages.ppo.train.eval_steps: a ppo stage does not use this setting; remove it"]
    online = problems_of(ROOT / "recipes" / "online.yaml", ["stages.grpo.train.eval_steps=5"])
    assert online == ["stages.grpo.train.eval_steps: a grpo stage does not use this setting; remove it"]
    load_recipe(ROOT / "recipes" / "tiny.yaml", ["stages.sft.train.eval_steps=5"])  # sft evaluates: allowed


def test_the_quantisation_checks_ask_each_config_what_it_trains():
    problems = problems_of(ROOT / "recipes" / "tiny.yaml", ["model.quantization=4bit"])
    # tiny.yaml trains the reward model and the PPO policy in full, which a quantised base cannot do
    assert sorted(p.split(":")[0] for p in problems) == ["stages.ppo.lora", "stages.reward.lora"]


def test_trackers_default_to_tensorboard_for_every_training_stage_and_a_stage_may_opt_out():
    from support import RECIPES

    recipe = load_recipe(RECIPES / "tiny.yaml", ["stages.dpo.train.report_to=[]"])
    trained = {name: config.train.report_to for name, config in recipe.stages.items() if hasattr(config, "train")}
    assert trained.pop("dpo") == [] and set(map(tuple, trained.values())) == {("tensorboard",)}
    assert all(c.train.report_to == [] for c in load_recipe(RECIPES / "tiny.yaml", ["report_to=[]"]).stages.values()
               if hasattr(c, "train"))


def test_turning_a_tracker_on_or_off_does_not_invalidate_a_stage():
    from pipeline.graph.plan import make_plan
    from support import RECIPES

    with_tracker, without = (make_plan(load_recipe(RECIPES / "tiny.yaml", overrides))
                             for overrides in ([], ["report_to=[]"]))
    assert [s.fingerprint for s in with_tracker.stages] == [s.fingerprint for s in without.stages]

"""--set reaches every key whatever the recipe's shorthand."""

from __future__ import annotations

import pytest

from pipeline.errors import RecipeError
from pipeline.recipe import load_recipe
from support import RECIPES, sft_stage


def test_set_reaches_below_the_model_shorthand():
    recipe = load_recipe(RECIPES / "tiny.yaml", ["model.quantization=4bit", "stages.reward.lora={r: 4}",
                                                 "stages.ppo.lora={r: 4}", "stages.ppo.value_lora={r: 4}"])
    assert recipe.model.source == "builtin:tiny-llama" and recipe.model.quantization == "4bit"


def test_set_reaches_below_the_data_shorthand(make_recipe, chat_data, tmp_path):
    stage = sft_stage(chat_data)
    stage["data"] = str(chat_data)  # shorthand for {path: ...}
    path = make_recipe({"sft": stage})
    recipe = load_recipe(path, ["stages.sft.data.max_rows=2"])
    assert recipe.stages["sft"].data.path == chat_data and recipe.stages["sft"].data.max_rows == 2


def test_a_scalar_without_a_shorthand_is_still_refused(make_recipe, chat_data):
    path = make_recipe({"sft": sft_stage(chat_data)})
    with pytest.raises(RecipeError) as info:
        load_recipe(path, ["stages.sft.max_length.deep=1"])
    assert [str(p) for p in info.value.problems] == [
        "--set stages.sft.max_length.deep=1: 'stages.sft.max_length' is not a mapping"]


def test_set_changes_only_the_stage_it_names_when_yaml_aliases_share_a_mapping(tmp_path, chat_data):
    path = tmp_path / "r.yaml"
    path.write_text(f"""name: t
model: builtin:tiny-llama
stages:
  a: {{kind: sft, data: {{path: {chat_data}}}, train: &shared {{max_steps: 4, batch_size: 2}}}}
  b: {{kind: sft, data: {{path: {chat_data}}}, train: *shared, from: a}}
""")
    recipe = load_recipe(path, ["stages.b.train.max_steps=9"])
    assert recipe.stages["b"].train.max_steps == 9 and recipe.stages["a"].train.max_steps == 4


def test_set_on_a_stage_the_recipe_lacks_names_it_and_suggests_the_close_one(make_recipe, chat_data):
    path = make_recipe({"sft": sft_stage(chat_data)})
    with pytest.raises(RecipeError) as info:
        load_recipe(path, ["stages.stf.lora.r=4"])
    assert [str(p) for p in info.value.problems] == [
        "--set stages.stf.lora.r=4: no stage 'stf' in the recipe (did you mean 'sft'?); to add one, set it whole: "
        "--set 'stages.stf={kind: ..., ...}'"]
    added = load_recipe(path, [f"stages.more={{kind: sft, data: {{path: {chat_data}}}, from: sft}}"])
    assert set(added.stages) == {"sft", "more"}

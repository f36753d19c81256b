"""Property-based fuzzing of the recipe and card readers: whatever the file holds, they return a value or raise their
own error (RecipeError / DataError), never anything else."""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.data.cards import load_card, materialise
from pipeline.errors import DataError, RecipeError
from pipeline.recipe import load_recipe
from support import CARDS, RECIPES

FOLDER = Path(tempfile.mkdtemp(prefix="fuzz-"))
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=True),
                    st.text(max_size=20), st.sampled_from(["sft", "dpo", "ppo", "builtin:tiny-llama", "../x.yaml",
                                                           "vader", "all-linear", "4bit", "-1", "1e-3"]))
KEYS = st.one_of(st.text(max_size=12), st.sampled_from(
    ["name", "model", "stages", "kind", "from", "data", "lora", "train", "r", "max_steps", "learning_rate",
     "evaluate", "prompts", "seed", "output_dir", "source", "format", "splits", "path", "builder", "args"]))
VALUES = st.recursive(SCALARS, lambda children: st.one_of(st.lists(children, max_size=4),
                                                            st.dictionaries(KEYS, children, max_size=5)),
                      max_leaves=25)


def write(name: str, text: str) -> Path:
    path = FOLDER / name
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return path


def mutated(base: dict, key_path: list[str], value) -> dict:
    node = base
    for key in key_path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[key_path[-1]] = value
    return base


TINY = yaml.safe_load((RECIPES / "tiny.yaml").read_text())
PATHS = [["name"], ["seed"], ["model"], ["stages"], ["evaluate"], ["stages", "sft"], ["stages", "sft", "lora"],
         ["stages", "sft", "train"], ["stages", "ppo", "kl"], ["stages", "dpo", "from"], ["stages", "sft", "data"],
         ["evaluate", "sampling"], ["stages", "reward", "train", "max_steps"], ["stages", "preferences", "judge"]]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(max_size=300))
def test_any_text_as_a_recipe(text):
    try:
        load_recipe(write("recipe.yaml", text))
    except RecipeError:
        pass


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=VALUES, where=st.sampled_from(PATHS))
def test_any_value_anywhere_in_a_real_recipe(value, where):
    import copy

    body = mutated(copy.deepcopy(TINY), where, value)
    text = yaml.safe_dump(body).replace("../data_cards/", str(CARDS) + "/")
    try:
        load_recipe(write("mutated.yaml", text))
    except RecipeError:
        pass


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=VALUES, where=st.sampled_from([["name"], ["source"], ["format"], ["fields"], ["splits"], ["rows"],
                                            ["sha256"], ["preset"], ["source", "builder"], ["source", "path"]]))
def test_any_value_anywhere_in_a_card(value, where):
    body = yaml.safe_load((CARDS / "tiny_chat.yaml").read_text())
    body["source"]["path"] = str(CARDS.parent / "data" / "tiny" / "chat.jsonl")
    path = write("card.yaml", yaml.safe_dump(mutated(body, where, value)))
    try:
        materialise(load_card(path), str(path))
    except (RecipeError, DataError):
        pass

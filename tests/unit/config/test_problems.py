"""Reading user YAML safely: anchors allowed, alias bombs refused with the file named, before any work."""

from __future__ import annotations

import pytest

from pipeline.config.problems import MAX_YAML_NODES, read_yaml_mapping
from pipeline.data.cards import load_card
from pipeline.errors import RecipeError
from pipeline.recipe import load_recipe

BOMB = "\n".join(["a: &a [x, x, x, x, x, x, x, x, x, x]"] + [
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]"
    for i in range(8)])


def test_anchors_and_aliases_are_allowed(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("base: &b {lr: 1}\nfirst: *b\nsecond: *b\n")
    assert read_yaml_mapping(path, "recipe", "keys") == {"base": {"lr": 1}, "first": {"lr": 1}, "second": {"lr": 1}}


@pytest.mark.parametrize("reader", [load_card, load_recipe], ids=["card", "recipe"])
def test_an_alias_bomb_is_refused_naming_the_file(tmp_path, reader):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB + "\n")  # 10^9 values once expanded, from 400 bytes
    with pytest.raises(RecipeError) as info:
        reader(path)
    message = str(info.value)
    assert str(path) in message and f"more than {MAX_YAML_NODES:,} values" in message


def test_not_utf8_is_a_clear_error(tmp_path):
    path = tmp_path / "latin.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(RecipeError, match="not UTF-8"):
        read_yaml_mapping(path, "recipe", "keys")

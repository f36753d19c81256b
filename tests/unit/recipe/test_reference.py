"""The recipe reference (docs/guide/config-reference.md) is generated from the schema's field docs and committed:
it must match the code, and every key must say what it does."""

from __future__ import annotations

from pipeline.recipe.reference import OUTPUT, render


def test_the_committed_reference_is_the_code_s():
    assert OUTPUT.read_text() == render(), "run: python -m pipeline.recipe.reference (make docs)"


def test_every_key_of_every_table_says_what_it_does():
    rows = [line for line in render().splitlines() if line.startswith("| `")]
    assert len(rows) > 100
    undocumented = [row.split("|")[1].strip() for row in rows if not row.rstrip("|").split("|")[-1].strip()]
    assert undocumented == []

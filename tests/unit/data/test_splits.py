"""The one split rule: disjoint by prompt, seeded, stable, complete."""

from __future__ import annotations

import json

import pytest

from pipeline.data.cards import card_splits, load_card
from pipeline.data.rows import prompt_key
from pipeline.data.splits import split_rows
from pipeline.errors import DataError
from support import CHAT_ROWS, make_card, numbered_rows


def test_split_disjoint_complete_and_stable(tmp_path):
    rows = numbered_rows(100)
    parts = split_rows(rows, 0.2, seed=3)
    assert len(parts["eval"]) == 20 and len(parts["train"]) == 80
    canon = lambda rs: {json.dumps(r, sort_keys=True) for r in rs}  # noqa: E731
    assert not canon(parts["train"]) & canon(parts["eval"])
    assert canon(parts["train"]) | canon(parts["eval"]) == canon(rows)
    assert split_rows(rows, 0.2, seed=3) == parts  # same seed, same split
    assert split_rows(list(reversed(rows)), 0.2, seed=3)["eval"] == list(reversed(parts["eval"]))  # order-free
    assert canon(split_rows(rows, 0.2, seed=4)["eval"]) != canon(parts["eval"])  # the seed matters
    # each side keeps source order
    assert parts["train"] == [r for r in rows if r in parts["train"]]


def test_rows_sharing_a_prompt_stay_together():
    rows = [{"prompt": f"q{i % 10}", "completion": f"a{i}"} for i in range(60)]
    parts = split_rows(rows, 0.3, seed=0)
    train_prompts = {prompt_key(r) for r in parts["train"]}
    assert parts["eval"] and not any(prompt_key(r) in train_prompts for r in parts["eval"])


def test_split_edges_and_card_splits(tmp_path, chat_data):
    assert split_rows(CHAT_ROWS, 0.0, 1) == {"train": CHAT_ROWS, "eval": []}
    assert split_rows(CHAT_ROWS, 1.0, 1) == {"train": [], "eval": CHAT_ROWS}
    assert len(split_rows(CHAT_ROWS, 0.01, 1)["eval"]) == 1  # a fraction > 0 always holds something out
    with pytest.raises(DataError, match="too few distinct prompts"):
        split_rows([CHAT_ROWS[0]] * 3, 0.5, 1)
    card = load_card(make_card(tmp_path, source={"path": str(chat_data)}, splits={"eval_fraction": 0.25, "seed": 5}))
    parts = card_splits(card, "c.yaml")
    assert len(parts["eval"]) == 1 and len(parts["train"]) == 3 and parts == card_splits(card, "c.yaml")

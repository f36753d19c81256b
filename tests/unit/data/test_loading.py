"""What stages read goes through one split rule whatever the source: a plain file splits like a card (disjoint by
prompt, seeded), and max_rows is taken from the training side after the split, for files and cards alike."""

from __future__ import annotations

import pytest

from pipeline.data.loading import card_prompts, load_chat_splits, preference_splits
from pipeline.data.settings import DataSettings
from pipeline.errors import DataError
from support import CHAT_ROWS, make_card, numbered_rows, synthetic_pairs, write_jsonl


def prompts_of(dataset) -> list[str]:
    return [row["messages"][0]["content"] for row in dataset]


def test_a_file_splits_by_prompt_complete_and_seeded(tmp_path):
    # every prompt appears 5 times: a split by random rows would put copies of a prompt on both sides
    path = write_jsonl(tmp_path / "d.jsonl", CHAT_ROWS * 5)
    settings = DataSettings(path=path, eval_fraction=0.25)
    train, evaluation, fmt = load_chat_splits(settings, seed=1)
    assert fmt == "messages" and len(train) + len(evaluation) == 20
    assert not set(prompts_of(train)) & set(prompts_of(evaluation)), "no eval prompt is trained on"
    assert sorted(prompts_of(train) + prompts_of(evaluation)) == sorted(prompts_of(CHAT_ROWS * 5)), "nothing lost"
    again, again_eval, _ = load_chat_splits(settings, seed=1)
    assert train["messages"] == again["messages"] and evaluation["messages"] == again_eval["messages"]


def test_max_rows_is_taken_after_the_split_for_files_and_cards(tmp_path):
    rows = numbered_rows(40)
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    whole = load_chat_splits(DataSettings(path=path, eval_fraction=0.25), seed=3)
    cut = load_chat_splits(DataSettings(path=path, eval_fraction=0.25, max_rows=5), seed=3)
    assert cut[1]["prompt"] == whole[1]["prompt"], "the eval rows do not depend on max_rows"
    assert cut[0]["prompt"] == whole[0]["prompt"][:5]
    card = make_card(tmp_path, source={"path": str(path)}, format="prompt_completion",
                     splits={"eval_fraction": 0.25, "seed": 3})
    card_whole = load_chat_splits(DataSettings(card=card), seed=0)
    card_cut = load_chat_splits(DataSettings(card=card, max_rows=5), seed=0)
    assert card_cut[1]["prompt"] == card_whole[1]["prompt"] and card_cut[0]["prompt"] == card_whole[0]["prompt"][:5]
    # the same rows and seed split the same way from a file and from a card
    assert whole[1]["prompt"] == card_whole[1]["prompt"]


def test_preference_files_follow_the_same_rule(tmp_path):
    pairs = synthetic_pairs(30)
    path = write_jsonl(tmp_path / "p.jsonl", pairs)
    train, evaluation = preference_splits(DataSettings(path=path, eval_fraction=0.2, max_rows=7), seed=5)
    full_train, full_eval = preference_splits(DataSettings(path=path, eval_fraction=0.2), seed=5)
    assert len(train) == 7 and train == full_train[:7] and evaluation == full_eval
    assert not {str(r["prompt"]) for r in train} & {str(r["prompt"]) for r in evaluation}


def test_nothing_left_to_train_on_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [CHAT_ROWS[0]] * 3)
    with pytest.raises(DataError, match="too few distinct prompts"):
        load_chat_splits(DataSettings(path=path, eval_fraction=0.5), seed=0)


def test_card_prompts_take_the_split_asked_for(tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"p{i}"} for i in range(10)])
    split = make_card(tmp_path, "split", source={"path": str(data)}, format="prompt",
                      splits={"eval_fraction": 0.3, "seed": 0})
    train, evaluation = card_prompts(split, "train"), card_prompts(split, "eval")
    assert len(train) == 7 and len(evaluation) == 3 and not set(train) & set(evaluation)
    assert card_prompts(split, "train", 2) == train[:2]
    whole = make_card(tmp_path, "whole", source={"path": str(data)}, format="prompt")
    assert card_prompts(whole, "eval") == [f"p{i}" for i in range(10)], "a card without an eval split is used whole"
    with pytest.raises(DataError, match="prompt card is needed"):
        card_prompts(make_card(tmp_path, "chat", source={"path": str(write_jsonl(tmp_path / "c.jsonl", CHAT_ROWS))}),
                     "train")

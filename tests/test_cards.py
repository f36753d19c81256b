"""Data cards: validation errors with YAML paths, checked and pinned rows, deterministic splits, the movie builders
(on fake snippets, so no network) and `describe`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import CHAT_ROWS, ROOT, write_jsonl
from pipeline import builders, movie_reviews
from pipeline.cards import (
    card_splits,
    describe,
    load_card,
    materialise,
    prompt_key,
    rows_sha256,
    split_rows,
    validate_card,
)
from pipeline.errors import DataError, RecipeError


def make_card(tmp_path: Path, name: str = "card", **fields) -> Path:
    body = {"name": "test", "description": "test rows", "license": "MIT", "format": "messages", **fields}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


@pytest.fixture
def chat_card(tmp_path, chat_data):
    return make_card(tmp_path, source={"path": str(chat_data)})


def problems_of(path: Path) -> str:
    with pytest.raises(RecipeError) as info:
        load_card(path)
    return str(info.value)


# ---------------------------------------------------------------------------------------------------------------
# Card validation


def test_unknown_keys_have_did_you_mean_and_all_are_reported(tmp_path, chat_data):
    path = make_card(tmp_path, source={"path": str(chat_data)}, licence="MIT", splits={"eval_frac": 0.1})
    text = problems_of(path)
    assert "2 problems" in text
    assert "licence: unknown key 'licence' (did you mean 'license'?)" in text
    assert "splits.eval_frac: unknown key 'eval_frac' (did you mean 'eval_fraction'?)" in text


def test_nested_source_key_typo(tmp_path):
    path = make_card(tmp_path, source={"hub": {"ids": "org/data"}})
    text = problems_of(path)
    assert "source.hub.ids: unknown key 'ids' (did you mean 'id'?)" in text
    assert "source.hub.id: missing (required)" in text


def test_two_sources_at_once(tmp_path, chat_data):
    path = make_card(tmp_path, source={"path": str(chat_data), "hub": {"id": "org/data"}})
    assert "source: give exactly one of path, hub or builder; got path and hub" in problems_of(path)
    path = make_card(tmp_path, source={})
    assert "source: give exactly one of path, hub or builder; got none" in problems_of(path)


def test_missing_file(tmp_path):
    path = make_card(tmp_path, source={"path": "no/such/file.jsonl"})
    assert "source.path: file not found: no/such/file.jsonl" in problems_of(path)


def test_unsupported_suffix(tmp_path):
    other = tmp_path / "rows.txt"
    other.write_text("x")
    assert "unsupported file type" in problems_of(make_card(tmp_path, source={"path": str(other)}))


def test_bad_format_value(tmp_path, chat_data):
    path = make_card(tmp_path, source={"path": str(chat_data)}, format="preferences")
    assert "format: unknown format 'preferences' (did you mean 'preference'?)" in problems_of(path)


def test_unknown_builder_and_builder_argument(tmp_path):
    text = problems_of(make_card(tmp_path, source={"builder": {"name": "movie_stf"}}))
    assert "source.builder.name: no builder named 'movie_stf' (did you mean 'movie_sft'?)" in text
    text = problems_of(make_card(tmp_path, source={"builder": {"name": "movie_sft", "args": {"max_row": 5}}}))
    assert "source.builder: builder 'movie_sft' has no argument 'max_row' (did you mean 'max_rows'?)" in text


def test_fields_keys_and_preset_need_the_right_format(tmp_path, chat_data):
    text = problems_of(make_card(tmp_path, source={"path": str(chat_data)}, format="preference",
                                 fields={"chosn": "better"}))
    assert "fields: 'chosn' is not a preference column (did you mean 'chosen'?)" in text
    text = problems_of(make_card(tmp_path, source={"path": str(chat_data)}, preset="hh"))
    assert "preset 'hh' reshapes preference data; it needs format: preference" in text


def test_not_yaml_and_missing_card(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    assert "not valid YAML" in problems_of(bad)
    assert "card file not found" in problems_of(tmp_path / "absent.yaml")


def test_shipped_cards_load():
    cards = sorted((ROOT / "data_cards").glob("*.yaml"))
    names = {p.stem for p in cards}
    assert {"tiny_chat", "movie_sft", "movie_prompts", "movie_eval_prompts"} <= names
    for path in cards:
        card = load_card(path)
        assert card.name == path.stem and card.sha256 and card.rows


def test_tiny_chat_card_validates(monkeypatch):
    monkeypatch.chdir(ROOT)  # card paths are relative to the current directory, like recipes
    lines = validate_card("data_cards/tiny_chat.yaml")
    assert any("rows: 240 as declared" in line for line in lines)
    assert any("sha256" in line and "as declared" in line for line in lines)


# ---------------------------------------------------------------------------------------------------------------
# Materialising: pins and row checks


def test_checksum_and_row_count(tmp_path, chat_data):
    digest = rows_sha256(CHAT_ROWS)
    good = load_card(make_card(tmp_path, source={"path": str(chat_data)}, rows=4, sha256=digest))
    assert materialise(good, "c.yaml") == CHAT_ROWS

    wrong_hash = load_card(make_card(tmp_path, source={"path": str(chat_data)}, sha256="0" * 64))
    with pytest.raises(DataError, match=r"^c\.yaml, field 'sha256': the rows hash to " + digest):
        materialise(wrong_hash, "c.yaml")

    wrong_count = load_card(make_card(tmp_path, source={"path": str(chat_data)}, rows=5, sha256=digest))
    with pytest.raises(DataError, match=r"^c\.yaml, field 'rows': the card declares 5 rows, the source gives 4"):
        materialise(wrong_count, "c.yaml")


def test_rows_sha256_is_canonical():
    assert rows_sha256([{"b": 1, "a": "é"}]) == rows_sha256([{"a": "é", "b": 1}])
    import hashlib

    assert rows_sha256([{"a": "é"}]) == hashlib.sha256('{"a": "é"}\n'.encode()).hexdigest()


def test_bad_chat_row_is_named(tmp_path):
    rows = [*CHAT_ROWS, {"messages": [{"role": "human", "content": "hi"}, {"role": "assistant", "content": "x"}]}]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    card = load_card(make_card(tmp_path, source={"path": str(data)}))
    with pytest.raises(DataError, match=r"d\.jsonl, row 5, field 'messages\[0\]\.role': must be one of"):
        materialise(card, "c.yaml")


def test_bad_prompt_rows_are_counted_not_dropped(tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "ok"}, {"prompt": "  "}, {"prompt": 3}])
    card = load_card(make_card(tmp_path, source={"path": str(data)}, format="prompt"))
    with pytest.raises(DataError, match=r"p\.jsonl, row 2, field 'prompt': is empty \(2 bad rows of 3"):
        materialise(card)


def test_preference_rows_checked(tmp_path):
    rows = [{"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."},
            {"prompt": "Hi", "chosen": "x", "rejected": "x"}]
    data = write_jsonl(tmp_path / "pref.jsonl", rows)
    card = load_card(make_card(tmp_path, source={"path": str(data)}, format="preference"))
    with pytest.raises(DataError, match=r"pref\.jsonl, row 2, field 'rejected': is identical to chosen"):
        materialise(card)
    mixed = [{"prompt": [{"role": "user", "content": "Hi"}], "chosen": "a", "rejected": "b"}]
    card = load_card(make_card(tmp_path, source={"path": str(write_jsonl(tmp_path / "m.jsonl", mixed))},
                               format="preference"))
    with pytest.raises(DataError, match=r"row 1, field 'chosen': must be a list of messages"):
        materialise(card)


def test_field_mapping(tmp_path):
    rows = [{"question": "2+2?", "better": "4", "worse": "5", "id": 1},
            {"question": "3+3?", "better": "6", "worse": "7", "id": 2}]
    data = write_jsonl(tmp_path / "raw.jsonl", rows)
    card = load_card(make_card(tmp_path, source={"path": str(data)}, format="preference",
                               fields={"prompt": "question", "chosen": "better", "rejected": "worse"}))
    assert materialise(card) == [{"prompt": "2+2?", "chosen": "4", "rejected": "5"},
                                 {"prompt": "3+3?", "chosen": "6", "rejected": "7"}]

    card = load_card(make_card(tmp_path, source={"path": str(data)}, format="prompt_completion",
                               fields={"prompt": "question", "completion": "answer"}))
    with pytest.raises(DataError, match=r"raw\.jsonl, row 1, field 'answer': missing column 'answer' "
                                        r"\(read as 'completion' per fields\)"):
        materialise(card)


def test_csv_source(tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("q,a\nSay yes.,yes\nSay no.,no\n")
    card = load_card(make_card(tmp_path, source=str(data), format="prompt_completion",
                               fields={"prompt": "q", "completion": "a"}))
    assert materialise(card)[1] == {"prompt": "Say no.", "completion": "no"}


def test_hh_preset(tmp_path):
    rows = [{
        "chosen": "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Name a fruit.\n\nAssistant: An apple.",
        "rejected": "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Name a fruit.\n\nAssistant: No.",
    }]
    data = write_jsonl(tmp_path / "hh.jsonl", rows)
    card = load_card(make_card(tmp_path, source={"path": str(data)}, format="preference", preset="hh"))
    assert materialise(card) == [{
        "prompt": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"},
                   {"role": "user", "content": "Name a fruit."}],
        "chosen": [{"role": "assistant", "content": "An apple."}],
        "rejected": [{"role": "assistant", "content": "No."}],
    }]
    rows[0]["rejected"] = "\n\nHuman: Something else\n\nAssistant: No."
    write_jsonl(data, rows)
    with pytest.raises(DataError, match=r"row 1, field 'rejected': the conversation before the last reply differs"):
        materialise(card)


def test_ultrafeedback_preset(tmp_path):
    user = {"role": "user", "content": "Name a colour."}
    rows = [{"prompt": "Name a colour.", "chosen": [user, {"role": "assistant", "content": "Blue."}],
             "rejected": [user, {"role": "assistant", "content": "Dog."}], "score_chosen": 9.0}]
    data = write_jsonl(tmp_path / "uf.jsonl", rows)
    card = load_card(make_card(tmp_path, source={"path": str(data)}, format="preference", preset="ultrafeedback"))
    assert materialise(card) == [{"prompt": [user], "chosen": [{"role": "assistant", "content": "Blue."}],
                                  "rejected": [{"role": "assistant", "content": "Dog."}]}]


def test_hub_source_offline_is_a_clear_error(tmp_path):
    card = load_card(make_card(tmp_path, source={"hub": {"id": "nobody/no-such-dataset-xyz"}}))
    with pytest.raises(DataError, match=r"hub:nobody/no-such-dataset-xyz \[train\]: cannot load this dataset"):
        materialise(card)


# ---------------------------------------------------------------------------------------------------------------
# Splits


def numbered_rows(n: int) -> list[dict]:
    return [{"prompt": f"question {i}", "completion": f"answer {i}"} for i in range(n)]


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


# ---------------------------------------------------------------------------------------------------------------
# Movie-review builders, on fake snippets


def fake_snippets() -> list[dict]:
    rows = []
    for i in range(1, 201):
        length = 6 + i % 20  # 6..25 words
        rows.append({"id": str(i), "rating": (i % 9) - 4.0, "text": " ".join(f"w{i}x{j}" for j in range(length))})
    return rows


@pytest.fixture
def snippets(monkeypatch):
    rows = fake_snippets()
    heldout = [r for r in rows if builders.is_heldout(r["id"])]
    assert heldout and len(heldout) < len(rows)
    # A training snippet that starts like a held-out one must not be trained on.
    copy = next(r for r in heldout if len(r["text"].split()) >= 14)
    twin = next(r for r in rows if not builders.is_heldout(r["id"]) and len(r["text"].split()) >= 14)
    twin["text"] = " ".join(copy["text"].split()[:8] + ["twin"] * 10)
    monkeypatch.setattr(movie_reviews, "movie_review_rows", lambda: [dict(r) for r in rows])
    return rows


def starts(text: str) -> str:
    assert text.startswith(builders.PROMPT_TEMPLATE.format(start=""))
    return text.removeprefix(builders.PROMPT_TEMPLATE.format(start=""))


def test_movie_sft_shape(snippets):
    rows = builders.movie_sft(prompt_words=8, min_words=14)
    assert rows
    by_start = {" ".join(s["text"].split()[:8]): s for s in snippets}
    for row in rows:
        user, assistant = row["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        source = by_start[starts(user["content"])]
        words = source["text"].split()
        assert len(words) >= 14 and assistant["content"] == " ".join(words[8:])
        assert not builders.is_heldout(source["id"])
    eligible = [s for s in snippets if not builders.is_heldout(s["id"]) and len(s["text"].split()) >= 14]
    assert len(rows) == len(eligible) - 1  # the twin of a held-out prompt is left out
    subset = builders.movie_sft(max_rows=10)
    assert len(subset) == 10 and subset == builders.movie_sft(max_rows=10)
    assert all(row in rows for row in subset)


def test_heldout_prompts_are_disjoint_from_training(snippets):
    train = {r["prompt"] for r in builders.movie_prompts(min_words=9)}
    train |= {r["messages"][0]["content"] for r in builders.movie_sft(min_words=9)}
    evaluation = builders.movie_eval_prompts(n=None, min_words=9)
    assert evaluation and all(set(r) == {"prompt"} for r in evaluation)
    assert not train & {r["prompt"] for r in evaluation}
    heldout_starts = {" ".join(s["text"].split()[:8]) for s in snippets if builders.is_heldout(s["id"])}
    assert all(starts(r["prompt"]) in heldout_starts for r in evaluation)
    assert len(builders.movie_eval_prompts(n=2, min_words=9)) == 2


def test_builder_card_materialises(snippets, tmp_path):
    rows = builders.movie_prompts(max_rows=5)
    path = make_card(tmp_path, source={"builder": {"name": "movie_prompts", "args": {"max_rows": 5}}},
                     format="prompt", rows=5, sha256=rows_sha256(rows))
    assert materialise(load_card(path), str(path)) == rows
    bad = make_card(tmp_path, "bad", source={"builder": {"name": "movie_prompts", "args": {"prompt_words": 0}}},
                    format="prompt")
    with pytest.raises(DataError, match=r"bad\.yaml \(builder movie_prompts\), field 'source\.builder\.args': "
                                        r"prompt_words must be at least 1"):
        materialise(load_card(bad), str(bad))


# ---------------------------------------------------------------------------------------------------------------
# describe


def test_describe(tmp_path):
    rows = numbered_rows(20) + [numbered_rows(1)[0]]  # one duplicate row
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    path = make_card(tmp_path, source={"path": str(data)}, format="prompt_completion",
                     splits={"eval_fraction": 0.2, "seed": 1}, citation="Someone (2024).")
    text = describe(path)
    assert "rows: 21  (train 17, eval 4; eval_fraction 0.2, seed 1)" in text
    assert "lengths in whitespace words:" in text
    assert "p50" in text and "p90" in text and "p99" in text and "max" in text
    assert "train  prompt" in text and "eval   completion" in text
    assert "duplicate rows: 1" in text
    assert "empty fields: 0" in text
    assert "train/eval overlap (eval rows whose prompt is in train): 0" in text
    assert text.count("\n  row ") == 3 and "samples:" in text
    assert "cite: Someone (2024)." in text and f"sha256: {rows_sha256(rows)}" in text

    class Chars:  # a stand-in tokenizer: one token per character
        name_or_path = "chars"

        def encode(self, text, add_special_tokens=False):
            return list(text)

    flat = make_card(tmp_path, "flat", source={"path": str(data)}, format="prompt_completion")
    text = describe(flat, tokenizer=Chars())
    assert "lengths in tokens (chars):" in text
    # "question 0".."question 19" and "answer 0".."answer 19" (plus one more "question 0" / "answer 0"), in characters
    assert "  train  prompt          10     11     11     11" in text
    assert "  train  completion       8      9      9      9" in text

"""Data cards: validation errors with YAML paths, relative paths from the card's folder, checked and pinned rows,
presets and sources."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.data.cards import load_card, materialise
from pipeline.data.inspect import validate_card
from pipeline.data.rows import rows_sha256
from pipeline.errors import DataError, RecipeError
from support import CHAT_ROWS, ROOT, make_card, write_jsonl


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


def test_fields_keys_need_the_right_format(tmp_path, chat_data):
    text = problems_of(make_card(tmp_path, source={"path": str(chat_data)}, format="preference",
                                 fields={"chosn": "better"}))
    assert "fields: 'chosn' is not a preference column (did you mean 'chosen'?)" in text


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
        assert card.name == path.stem and card.rows
        # every card pins its rows: by their sha256, or (a hub dataset, not downloadable here to hash it) by the
        # commit it is read at; `data validate` prints the sha256 to add once the rows are downloaded
        assert card.sha256 or (card.source.hub is not None and re.fullmatch(r"[0-9a-f]{40}", card.source.hub.revision
                                                                             or "")), path


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


HH_ROW = {"chosen": "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Name a fruit.\n\nAssistant: An apple.",
          "rejected": "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Name a fruit.\n\nAssistant: No."}
HH_PROMPT = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"},
             {"role": "user", "content": "Name a fruit."}]


@pytest.mark.parametrize("format,expected", [
    ("messages", {"messages": HH_PROMPT + [{"role": "assistant", "content": "An apple."}]}),
    ("prompt_completion", {"prompt": HH_PROMPT, "completion": [{"role": "assistant", "content": "An apple."}]}),
    ("prompt", {"prompt": HH_PROMPT}),
])
def test_a_preset_reads_one_preference_dataset_as_any_format(tmp_path, format, expected):
    """SFT on the chosen conversations, PPO on the prompts: the same HH rows, reshaped by the card's format."""
    data = write_jsonl(tmp_path / "hh.jsonl", [HH_ROW])
    card = load_card(make_card(tmp_path, source={"path": str(data)}, format=format, preset="hh"))
    assert materialise(card) == [expected]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{**HH_ROW, "rejected": "\n\nHuman: Other\n\nAssistant: No."}])
    card = load_card(make_card(tmp_path, source={"path": str(bad)}, format=format, preset="hh"))
    with pytest.raises(DataError, match=r"row 1, field 'rejected': the conversation before the last reply differs"):
        materialise(card)  # the pair is checked whatever part of it the card keeps


def test_a_preset_card_maps_the_columns_the_preset_reads(tmp_path):
    """With a preset, `fields` renames the preset's source columns (chosen, rejected), whatever the card's format."""
    data = write_jsonl(tmp_path / "hh.jsonl", [{"better": HH_ROW["chosen"], "worse": HH_ROW["rejected"]}])
    card = load_card(make_card(tmp_path, source={"path": str(data)}, format="prompt", preset="hh",
                               fields={"chosen": "better", "rejected": "worse"}))
    assert materialise(card) == [{"prompt": HH_PROMPT}]


def test_a_preset_card_refuses_fields_the_preset_does_not_read(tmp_path):
    """`prompt` is a preference column but the hh preset never reads it: mapping it would be silently ignored."""
    data = write_jsonl(tmp_path / "hh.jsonl", [{**HH_ROW, "question": "unused"}])
    path = make_card(tmp_path, source={"path": str(data)}, format="preference", preset="hh",
                     fields={"prompt": "question"})
    with pytest.raises(RecipeError) as info:
        load_card(path)
    assert info.value.source == str(path)
    [problem] = info.value.problems
    assert "\n" not in str(problem)
    assert str(problem).startswith("fields: 'prompt' is not a column of the hh preset (the keys of fields are the "
                                   "preset's column names: chosen, rejected; the values are the source's)")


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

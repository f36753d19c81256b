"""Reading and checking rows: errors name the file, the row and the field; bad rows are counted, never dropped."""

from __future__ import annotations

import json

import pytest

from pipeline.data.rows import check_chat_rows, read_rows
from pipeline.data.settings import DataSettings
from pipeline.errors import DataError
from support import CHAT_ROWS, write_jsonl


def test_bad_role_names_file_row_and_field(tmp_path):
    rows = [*CHAT_ROWS, {"messages": [{"role": "human", "content": "hi"}, {"role": "assistant", "content": "x"}]}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError) as info:
        check_chat_rows(read_rows(path), str(path))
    assert str(info.value).startswith(f"{path}, row 5, field 'messages[0].role': must be one of")


def test_bad_rows_are_counted(tmp_path):
    rows = [CHAT_ROWS[0], {"messages": [{"role": "user", "content": "no answer"}]}, {"messages": []}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match=r"row 2, field 'messages': has no assistant message.*2 bad rows of 3"):
        check_chat_rows(read_rows(path), str(path))


def test_invalid_json_line_is_located(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(CHAT_ROWS[0]) + "\n{not json\n")
    with pytest.raises(DataError, match=r"d.jsonl, row 2: not valid JSON"):
        read_rows(path)


def test_prompt_completion_and_empty_fields(tmp_path):
    rows = [{"prompt": "Say yes.", "completion": "yes"}, {"prompt": "Say no.", "completion": "  "}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match=r"row 2, field 'completion': is empty"):
        check_chat_rows(read_rows(path), str(path))
    assert check_chat_rows(rows[:1], "x") == "prompt_completion"


def test_csv_and_unknown_suffix(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("prompt,completion\nSay yes.,yes\n")
    assert read_rows(csv) == [{"prompt": "Say yes.", "completion": "yes"}]
    other = tmp_path / "d.txt"
    other.write_text("x")
    with pytest.raises(ValueError, match="unsupported file type"):
        DataSettings(path=other)


def test_conversational_prompt_completion_has_the_reply_as_assistant_turns():
    """TRL's conversational prompt-completion: prompt = the turns up to the reply, completion = the assistant's
    reply. The completion is not a conversation of its own (it does not start with a user turn)."""
    user, reply = {"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "An apple."}
    check_chat_rows([{"prompt": [user], "completion": [reply]}], "rows.jsonl")
    with pytest.raises(DataError, match=r"row 1, field 'completion\[0\].role': the completion must start with an "
                                        r"assistant turn"):
        check_chat_rows([{"prompt": [user], "completion": [user, reply]}], "rows.jsonl")
    with pytest.raises(DataError, match=r"row 1, field 'prompt\[0\].role': the conversation must start with a user"):
        check_chat_rows([{"prompt": [reply], "completion": [reply]}], "rows.jsonl")

"""Rows of data: reading local files, checking every row for its format, canonical hashing, and what a row asks.

Bad rows are errors naming the file, row (1-based) and field; no row is ever dropped without being counted and
reported.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from ..errors import DataError

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
ROLES = ("system", "user", "assistant")

FORMATS: tuple[str, ...] = ("messages", "prompt_completion", "prompt", "preference")
COLUMNS: dict[str, tuple[str, ...]] = {
    "messages": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "prompt": ("prompt",),
    "preference": ("prompt", "chosen", "rejected"),
}
"""The columns a row of each format has (a preference row may also carry a numeric `margin`)."""


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise DataError(str(path), f"not UTF-8 text (byte {exc.start}, line {line}); save it as UTF-8") from None


def read_rows(path: Path) -> list[dict]:
    """Rows of a local data file as dicts; a line that is not JSON is reported with its number."""
    path = Path(path)
    if path.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(_text(path).splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(str(path), f"not valid JSON ({exc.msg})", row=number) from None
            if not isinstance(row, dict):
                raise DataError(str(path), "each line must be a JSON object", row=number)
            rows.append(row)
        return rows
    if path.suffix == ".json":
        try:
            rows = json.loads(_text(path))
        except json.JSONDecodeError as exc:
            raise DataError(str(path), f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise DataError(str(path), "a .json data file must hold a list of objects")
        return rows
    if path.suffix == ".csv":
        import io

        return list(csv.DictReader(io.StringIO(_text(path), newline="")))
    if path.suffix == ".parquet":
        import pyarrow
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except (pyarrow.ArrowException, OSError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(str(path), f"not a readable parquet file ({first[:200]})") from None
    raise DataError(str(path), f"unsupported file type; use one of {', '.join(SUFFIXES)}")


ChatFormat = Literal["messages", "prompt_completion"]


def detect_chat_format(rows: list[dict], path: str) -> ChatFormat:
    if not rows:
        raise DataError(path, "no rows")
    first = rows[0]
    if "messages" in first:
        return "messages"
    if "prompt" in first and "completion" in first:
        return "prompt_completion"
    raise DataError(path, f"rows need `messages`, or `prompt` and `completion`; found keys {sorted(first)}", row=1)


def check_chat_rows(rows: list[dict], path: str) -> ChatFormat:
    """Check every row of SFT data; raise DataError counting the bad rows and naming the first."""
    fmt = detect_chat_format(rows, path)
    bad: list[tuple[int, str, str]] = []
    for number, row in enumerate(rows, start=1):
        problem = _messages_problem(row) if fmt == "messages" else _prompt_completion_problem(row)
        if problem:
            bad.append((number, *problem))
    if bad:
        number, field, message = bad[0]
        more = f" ({len(bad)} bad rows of {len(rows)}; this is the first)" if len(bad) > 1 else ""
        raise DataError(path, message + more, row=number, field=field)
    return fmt


def message_problem(messages: list, field: str) -> tuple[str, str] | None:
    """(field, message) for the first malformed {role, content} entry of a message list, or None."""
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"{field}[{i}]", "must be an object with role and content"
        if message.get("role") not in ROLES:
            return f"{field}[{i}].role", f"must be one of {', '.join(ROLES)}, got {message.get('role')!r}"
        if not isinstance(message.get("content"), str) or not message["content"].strip():
            return f"{field}[{i}].content", "must be a non-empty string"
    return None


def turn_order_problem(messages: list[dict], field: str, ends_with_reply: bool = True) -> tuple[str, str] | None:
    """A conversation is an optional system turn first, then user and assistant turns, a user turn first."""
    for i, message in enumerate(messages):
        if message["role"] == "system" and i > 0:
            return f"{field}[{i}].role", "a system turn may only come first"
    turns = [m for m in messages if m["role"] != "system"]
    if turns and turns[0]["role"] != "user":
        first = messages.index(turns[0])
        return f"{field}[{first}].role", "the conversation must start with a user turn (after an optional system turn)"
    return None


def _messages_problem(row: dict) -> tuple[str, str] | None:
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages", "must be a non-empty list of {role, content}"
    if problem := message_problem(messages, "messages"):
        return problem
    if not any(m["role"] == "assistant" for m in messages):
        return "messages", "has no assistant message to learn from"
    return turn_order_problem(messages, "messages")


def _prompt_completion_problem(row: dict) -> tuple[str, str] | None:
    for field in ("prompt", "completion"):
        value = row.get(field)
        if isinstance(value, str):
            if not value.strip():
                return field, "is empty"
        elif isinstance(value, list) and field == "prompt":  # conversational: the turns up to the reply
            problem = _messages_problem({"messages": value + [{"role": "assistant", "content": "x"}]})
            if problem:
                return field + problem[0].removeprefix("messages"), problem[1]
        elif isinstance(value, list):  # the reply (TRL's conversational completion: assistant turns)
            if not value:
                return field, "is an empty list"
            if problem := message_problem(value, field):
                return problem
            if value[0]["role"] != "assistant":
                return f"{field}[0].role", "the completion must start with an assistant turn"
        else:
            return field, "must be a string or a list of messages"
    return None


def _turns_problem(value: Any, field: str) -> tuple[str, str] | None:
    """A string, or a conversational list of {role, content}: what is wrong with it, if anything."""
    if isinstance(value, str):
        return (field, "is empty") if not value.strip() else None
    if not isinstance(value, list):
        return field, f"must be a string or a list of messages, got {type(value).__name__}"
    if not value:
        return field, "is an empty list"
    return message_problem(value, field)


def _prompt_problem(row: dict) -> tuple[str, str] | None:
    prompt = row.get("prompt")
    if problem := _turns_problem(prompt, "prompt"):
        return problem
    return turn_order_problem(prompt, "prompt") if isinstance(prompt, list) else None


def _preference_problem(row: dict) -> tuple[str, str] | None:
    for field in ("prompt", "chosen", "rejected"):
        if problem := _turns_problem(row.get(field), field):
            return problem
    if isinstance(row["prompt"], list) and (problem := turn_order_problem(row["prompt"], "prompt")):
        return problem
    conversational = isinstance(row["prompt"], list)
    for field in ("chosen", "rejected"):
        if isinstance(row[field], list) != conversational:
            kind = "a list of messages" if conversational else "a string"
            return field, f"must be {kind}, like prompt (a row is all text or all conversational)"
    if row["chosen"] == row["rejected"]:
        return "rejected", "is identical to chosen, so the pair says nothing"
    margin = row.get("margin")
    if margin is not None and (not isinstance(margin, (int, float)) or isinstance(margin, bool) or margin != margin):
        return "margin", f"must be a number, got {margin!r}"
    return None


def check_rows(rows: list[dict], fmt: str, origin: str) -> None:
    """Check every row for ``fmt``; raise DataError counting the bad rows and naming the first (row and field)."""
    if not rows:
        raise DataError(origin, "no rows")
    if fmt in ("messages", "prompt_completion"):
        check_chat_rows(rows, origin)
        return
    problem_of = _prompt_problem if fmt == "prompt" else _preference_problem
    bad = [(number, *problem) for number, row in enumerate(rows, start=1) if (problem := problem_of(row))]
    if bad:
        number, field, message = bad[0]
        more = f" ({len(bad)} bad rows of {len(rows)}; this is the first)" if len(bad) > 1 else ""
        raise DataError(origin, message + more, row=number, field=field)


def rows_sha256(rows: list[dict]) -> str:
    """sha256 of rows as canonical JSON lines: json.dumps(row, sort_keys=True, ensure_ascii=False) + "\\n" each."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update((json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8"))
    return digest.hexdigest()


def prompt_key(row: dict) -> str:
    """What a row asks, as canonical JSON: its prompt, or for messages every turn before the last assistant turn."""
    if "messages" in row:
        messages = row["messages"]
        last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=len(messages))
        prompt: Any = messages[:last]
    else:
        prompt = row.get("prompt")
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)



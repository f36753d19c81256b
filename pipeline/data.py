"""Reading training data from local files, checking every row, and splitting off an eval set.

Bad rows are errors naming the file, row and field; no row is ever dropped without being counted and reported.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from .errors import DataError
from .hashing import sha256_file  # noqa: F401  (re-exported for callers of pipeline.data)
from .schema import ExistingPath, Strict

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
ROLES = ("system", "user", "assistant")


class DataSettings(Strict):
    """Where a stage's data comes from and how it is split. `data: some/card.yaml` is short for `data: {card: ...}`,
    `data: some/file.jsonl` for `data: {path: ...}`."""

    card: ExistingPath | None = None
    """A data card (data_cards/*.yaml): source, format, checksum and splits of a dataset."""
    path: ExistingPath | None = None
    """Or a plain data file: .jsonl, .json, .csv or .parquet."""
    eval_path: ExistingPath | None = None
    """With `path`: separate evaluation data in the same format; otherwise eval_fraction of `path` is held out.
    A card brings its own train/eval split."""
    eval_fraction: float = Field(0.0, ge=0, lt=1)
    """With `path`: share of it held out for evaluation (seeded), used when eval_path is not given."""
    max_rows: int | None = Field(None, ge=1)
    """Use only the first max_rows rows (after validation), for quick trials."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value):
        if isinstance(value, str):
            return {"card": value} if value.endswith((".yaml", ".yml")) else {"path": value}
        return value

    @model_validator(mode="after")
    def _one_source(self):
        if (self.card is None) == (self.path is None):
            raise ValueError("give exactly one of `card` (a data card) or `path` (a data file)")
        if self.card is not None and (self.eval_path is not None or self.eval_fraction):
            raise ValueError("a card defines its own splits: drop eval_path / eval_fraction")
        for path in (self.path, self.eval_path):
            if path is not None and path.suffix not in SUFFIXES:
                raise ValueError(f"{path}: unsupported file type; use one of {', '.join(SUFFIXES)}")
        return self

    def files(self) -> list[Path]:
        """Files whose bytes the data depends on; a card pins what it builds by its sha256."""
        return [p for p in (self.card, self.path, self.eval_path) if p is not None]


def read_rows(path: Path) -> list[dict]:
    """Rows of a local data file as dicts; a line that is not JSON is reported with its number."""
    path = Path(path)
    if path.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(path.read_text().splitlines(), start=1):
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
            rows = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(str(path), f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise DataError(str(path), "a .json data file must hold a list of objects")
        return rows
    if path.suffix == ".csv":
        with path.open(newline="") as handle:
            return list(csv.DictReader(handle))
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
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


def _messages_problem(row: dict) -> tuple[str, str] | None:
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages", "must be a non-empty list of {role, content}"
    if problem := message_problem(messages, "messages"):
        return problem
    if not any(m["role"] == "assistant" for m in messages):
        return "messages", "has no assistant message to learn from"
    return None


def _prompt_completion_problem(row: dict) -> tuple[str, str] | None:
    for field in ("prompt", "completion"):
        value = row.get(field)
        if isinstance(value, str):
            if not value.strip():
                return field, "is empty"
        elif isinstance(value, list):  # conversational prompt/completion
            problem = _messages_problem({"messages": value + [{"role": "assistant", "content": "x"}]})
            if problem:
                return field + problem[0].removeprefix("messages"), problem[1]
        else:
            return field, "must be a string or a list of messages"
    return None


def load_chat_splits(settings: DataSettings, seed: int):
    """Train and eval ``datasets.Dataset`` (eval may be None) with only the columns TRL's SFTTrainer reads."""
    from datasets import Dataset

    if settings.card is not None:
        return _card_chat_splits(settings)
    rows = read_rows(settings.path)
    fmt = check_chat_rows(rows, str(settings.path))
    columns = ["messages"] if fmt == "messages" else ["prompt", "completion"]
    rows = [{c: r[c] for c in columns} for r in rows]
    eval_rows = None
    if settings.eval_path is not None:
        eval_rows = read_rows(settings.eval_path)
        if check_chat_rows(eval_rows, str(settings.eval_path)) != fmt:
            raise DataError(str(settings.eval_path), f"eval data must have the same format as {settings.path} ({fmt})")
        eval_rows = [{c: r[c] for c in columns} for r in eval_rows]
    if settings.max_rows is not None:
        rows = rows[: settings.max_rows]
    train = Dataset.from_list(rows)
    evaluation = Dataset.from_list(eval_rows) if eval_rows else None
    if evaluation is None and settings.eval_fraction > 0:
        if len(train) < 2:
            raise DataError(str(settings.path), "too few rows to hold out an eval split")
        parts = train.train_test_split(test_size=settings.eval_fraction, seed=seed)
        train, evaluation = parts["train"], parts["test"]
    return train, evaluation, fmt


def _card_chat_splits(settings: DataSettings):
    from datasets import Dataset

    from .cards import card_splits, load_card

    card = load_card(settings.card)
    if card.format not in ("messages", "prompt_completion"):
        raise DataError(str(settings.card), f"this stage trains on messages or prompt_completion data; the card "
                                            f"holds {card.format} rows")
    splits = card_splits(card, str(settings.card))
    train_rows = splits["train"][: settings.max_rows] if settings.max_rows else splits["train"]
    evaluation = Dataset.from_list(splits["eval"]) if splits.get("eval") else None
    return Dataset.from_list(train_rows), evaluation, card.format


def preference_splits(settings: DataSettings | None, upstream=None, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Train and eval preference pairs from a card or file (``settings``), or else from the data card of an
    upstream preferences artifact."""
    from .cards import card_splits, check_rows, load_card, split_rows

    if settings is None:
        card_path = upstream.path / upstream.manifest["data_card"]
    elif settings.card is not None:
        card_path = settings.card
    else:
        rows = read_rows(settings.path)
        check_rows(rows, "preference", str(settings.path))
        splits = split_rows(rows, settings.eval_fraction, seed, str(settings.path))
        return splits["train"], splits["eval"]
    splits = card_splits(load_card(card_path), str(card_path))
    return splits["train"], splits["eval"]

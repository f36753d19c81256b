"""``data show`` and ``data validate``: what a card holds, and a check of it end to end."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from ..store.hashing import sha256_file
from .cards import load_card, materialise
from .rows import COLUMNS, prompt_key, rows_sha256
from .splits import split_rows


def _text(value: Any) -> str:
    if isinstance(value, list):
        return "\n".join(str(m.get("content", "")) if isinstance(m, dict) else str(m) for m in value)
    return "" if value is None else str(value)


def _length_fields(row: dict, fmt: str) -> dict[str, str]:
    """The texts whose lengths `describe` reports, per format."""
    if fmt == "messages":
        messages = row["messages"]
        last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=len(messages))
        return {"prompt": _text(messages[:last]), "completion": _text(messages[last:]), "total": _text(messages)}
    return {column: _text(row.get(column)) for column in COLUMNS[fmt]}


def _empty_count(value: Any) -> int:
    if value is None or (isinstance(value, str) and not value.strip()) or (isinstance(value, list) and not value):
        return 1
    if isinstance(value, list):
        return sum(_empty_count(m.get("content")) if isinstance(m, dict) else _empty_count(m) for m in value)
    return 0


def _percentile(sorted_values: list[int], q: float) -> int:
    """Nearest-rank percentile of an ascending list."""
    return sorted_values[max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))]


def _length_function(tokenizer):
    if tokenizer is None:
        return lambda text: len(text.split()), "whitespace words"
    if isinstance(tokenizer, (str, Path)):
        from transformers import AutoTokenizer

        name = str(tokenizer)
        tokenizer = AutoTokenizer.from_pretrained(name)
    else:
        name = getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__
    if hasattr(tokenizer, "encode"):
        return lambda text: len(tokenizer.encode(text, add_special_tokens=False)), f"tokens ({name})"
    return lambda text: len(tokenizer(text)), f"tokens ({name})"


def _short(row: dict, limit: int = 300) -> str:
    text = json.dumps(row, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(card_path: str | Path, tokenizer=None) -> str:
    """A plain-text summary for `data show`: rows per split, length percentiles per field (tokens if a tokenizer
    or tokenizer path is given, else whitespace words), duplicate rows, empty fields, train/eval prompt overlap and
    three sample rows."""
    card = load_card(card_path)
    where = str(card_path)
    rows = materialise(card, where)
    parts = split_rows(rows, card.splits.eval_fraction, card.splits.seed, where)
    length, unit = _length_function(tokenizer)

    lines = [f"{card.name}  ({where})", f"  {card.description.strip().splitlines()[0]}"]
    lines.append(f"  source: {card.source.describe()}")
    lines.append(f"  format: {card.format}" + (f", preset {card.preset}" if card.preset else "")
                 + (f", fields {card.fields}" if card.fields else ""))
    lines.append(f"  license: {card.license}" + (f"; cite: {' '.join(card.citation.split())}" if card.citation else ""))
    digest = rows_sha256(rows)
    pinned = "matches the card" if card.sha256 else "not pinned in the card"
    lines.append(f"  sha256: {digest} ({pinned})")
    lines.append(f"rows: {len(rows)}  (train {len(parts['train'])}, eval {len(parts['eval'])}; "
                 f"eval_fraction {card.splits.eval_fraction:g}, seed {card.splits.seed})")

    lines.append(f"lengths in {unit}:")
    lines.append(f"  {'split':<6} {'field':<11} {'p50':>6} {'p90':>6} {'p99':>6} {'max':>6}")
    for split in ("train", "eval"):
        if not parts[split]:
            continue
        per_field: dict[str, list[int]] = {}
        for row in parts[split]:
            for field, text in _length_fields(row, card.format).items():
                per_field.setdefault(field, []).append(length(text))
        for field, values in per_field.items():
            values.sort()
            cells = " ".join(f"{v:>6}" for v in (*(_percentile(values, q) for q in (50, 90, 99)), values[-1]))
            lines.append(f"  {split:<6} {field:<11} {cells}")

    canon = [json.dumps(row, sort_keys=True, ensure_ascii=False) for row in rows]
    lines.append(f"duplicate rows: {len(canon) - len(set(canon))}")
    empty = {column: sum(_empty_count(row.get(column)) for row in rows) for column in COLUMNS[card.format]}
    lines.append(f"empty fields: {sum(empty.values())}" + (f"  ({empty})" if any(empty.values()) else ""))
    train_prompts = {prompt_key(row) for row in parts["train"]}
    overlap = sum(prompt_key(row) in train_prompts for row in parts["eval"])
    lines.append(f"train/eval overlap (eval rows whose prompt is in train): {overlap}")

    order = sorted(range(len(rows)), key=lambda i: hashlib.sha256(f"sample\0{card.splits.seed}\0{i}".encode()).digest())
    lines.append("samples:")
    for i in sorted(order[:3]):
        lines.append(f"  row {i + 1}: {_short(rows[i])}")
    return "\n".join(lines)


def validate_card(card_path: str | Path) -> list[str]:
    """Check a card end to end (schema, source, every row, count, sha256, split); return one OK line per check,
    raise RecipeError or DataError on the first failing one."""
    card = load_card(card_path)
    where = str(card_path)
    lines = [f"OK {where}: card schema ({card.name}, {card.format}, license {card.license})"]
    if card.source.path is not None:
        lines.append(f"OK source {card.source.describe()} (file sha256 {sha256_file(card.source.path)})")
    rows = materialise(card, where)
    lines.append(f"OK source {card.source.describe()}: {len(rows)} rows, every row a valid {card.format} row")
    digest = rows_sha256(rows)
    lines.append(f"OK rows: {len(rows)} as declared" if card.rows is not None
                 else f"OK rows not pinned; add `rows: {len(rows)}` to pin them")
    lines.append(f"OK sha256 {digest} as declared" if card.sha256 is not None
                 else f"OK sha256 not pinned; add `sha256: {digest}` to pin it")
    parts = split_rows(rows, card.splits.eval_fraction, card.splits.seed, where)
    lines.append(f"OK splits: train {len(parts['train'])}, eval {len(parts['eval'])}, disjoint by prompt "
                 f"(seed {card.splits.seed})")
    return lines

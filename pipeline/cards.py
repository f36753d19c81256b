"""Data cards: one YAML per dataset (``data_cards/``) saying where the rows come from, what they mean, under which
license, how they split into train and eval, and what they must hash to.

``load_card`` validates a card (every problem at once, with its YAML path); ``materialise`` reads the source, maps its
columns onto ours, checks every row for the card's format and refuses rows that do not match the declared count or
sha256; ``card_splits`` splits them deterministically; ``describe`` and ``validate_card`` back ``data show`` and
``data validate``. No row is ever dropped: a bad row is an error naming the file, row (1-based) and field.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from . import builders
from .data import SUFFIXES, check_chat_rows, message_problem, read_rows, sha256_file
from .errors import DataError, RecipeError
from .recipe import did_you_mean, pydantic_problems, read_yaml_mapping
from .schema import ExistingPath, Strict

Format = Literal["messages", "prompt_completion", "prompt", "preference"]
FORMATS: tuple[str, ...] = ("messages", "prompt_completion", "prompt", "preference")

COLUMNS: dict[str, tuple[str, ...]] = {
    "messages": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "prompt": ("prompt",),
    "preference": ("prompt", "chosen", "rejected"),
}
"""The columns a materialised row of each format has (a preference row may also carry a numeric `margin`)."""

PRESET_COLUMNS: dict[str, tuple[str, ...]] = {"hh": ("chosen", "rejected"), "ultrafeedback": ("chosen", "rejected")}
"""The (mapped) source columns each preference preset reads."""


# ---------------------------------------------------------------------------------------------------------------
# The card schema


class HubSource(Strict):
    """A dataset on the Hugging Face hub, read with ``datasets.load_dataset`` (from the local cache when offline)."""

    id: str = Field(min_length=1)
    """Dataset id, e.g. Anthropic/hh-rlhf."""
    config: str | None = None
    """Dataset configuration (subset) name, if it has several."""
    split: str = "train"
    """Which split to read (slicing such as train[:1000] is allowed)."""
    revision: str | None = None
    """Branch, tag or commit to read; pin a commit so the rows (and their sha256) cannot change under you."""


class BuilderSource(Strict):
    """Rows made by a named Python function in pipeline/builders.py."""

    name: str
    """Builder name (registered with @builder in pipeline/builders.py)."""
    args: dict[str, Any] = {}
    """Keyword arguments for the builder."""

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in builders.BUILDERS:
            known = ", ".join(sorted(builders.BUILDERS)) or "none"
            raise ValueError(f"no builder named '{name}'{did_you_mean(name, builders.BUILDERS)}; builders: {known}")
        return name

    @model_validator(mode="after")
    def _args_fit(self):
        problems = builders.builder_arg_problems(self.name, self.args)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def call(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.args.items())})"


class CardSource(Strict):
    """Where the rows come from: exactly one of path, hub or builder."""

    path: ExistingPath | None = None
    """A local .jsonl, .json, .csv or .parquet file (relative paths are taken from the current directory)."""
    hub: HubSource | None = None
    """A hub dataset: {id, config, split, revision}."""
    builder: BuilderSource | None = None
    """A builder function: {name, args}."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        # `source: data/x.jsonl` is short for `source: {path: data/x.jsonl}`.
        return {"path": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _exactly_one(self):
        given = [name for name in ("path", "hub", "builder") if getattr(self, name) is not None]
        if len(given) != 1:
            got = " and ".join(given) if given else "none"
            raise ValueError(f"give exactly one of path, hub or builder; got {got}")
        if self.path is not None and self.path.suffix not in SUFFIXES:
            raise ValueError(f"{self.path}: unsupported file type; use one of {', '.join(SUFFIXES)}")
        return self

    def describe(self) -> str:
        if self.path is not None:
            return f"file {self.path}"
        if self.hub is not None:
            extra = "".join(f", {k}={getattr(self.hub, k)}" for k in ("config", "revision") if getattr(self.hub, k))
            return f"hub {self.hub.id} (split={self.hub.split}{extra})"
        return f"builder {self.builder.call()}"


class CardSplits(Strict):
    """How rows are assigned to train and eval: deterministically, disjointly, and by prompt (rows that share a
    prompt always land on the same side, so eval never asks a prompt that training has seen)."""

    eval_fraction: float = Field(0.0, ge=0, le=1)
    """Share of rows assigned to eval (0: all train; 1: all eval, for an eval-only set)."""
    seed: int = 0
    """Seed of the assignment; the same seed and rows always give the same split."""


class DataCard(Strict):
    """One dataset: its source, meaning, license, format, split and checksum."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    """Short name of the dataset (letters, digits, '_', '-', '.')."""
    description: str = Field(min_length=1)
    """What the rows are and what they are for."""
    license: str = Field(min_length=1)
    """License of the data (SPDX id where there is one, e.g. MIT, CC-BY-4.0)."""
    citation: str | None = None
    """How to cite the data's authors."""
    source: CardSource
    """Where the rows come from: exactly one of path, hub or builder."""
    format: Format
    """Row format: messages ([{role, content}]), prompt_completion, prompt (prompt only, for RL and eval) or
    preference (prompt, chosen, rejected)."""
    fields: dict[str, str] = {}
    """Our column name -> the source's column name, for columns the source names differently
    (e.g. {prompt: question, chosen: better}). Unlisted columns are read under our own name."""
    preset: Literal["hh", "ultrafeedback"] | None = None
    """Reshape a known preference layout (format: preference only). hh: Anthropic-HH transcripts
    ("\\n\\nHuman: ... \\n\\nAssistant: ...") in chosen/rejected; ultrafeedback: UltraFeedback-binarized message
    lists in chosen/rejected. Both become a conversational prompt (the turns before the last reply) and one-message
    chosen/rejected replies."""
    splits: CardSplits = CardSplits()
    """Train/eval assignment."""
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    """sha256 of the materialised rows (one json.dumps(row, sort_keys=True, ensure_ascii=False) line each, in
    order); rows that hash differently are refused. `data validate` prints the value to pin."""
    rows: int | None = Field(None, ge=1)
    """Expected number of rows after mapping; a different count is refused."""

    @field_validator("format", mode="before")
    @classmethod
    def _known_format(cls, value: Any) -> Any:
        if isinstance(value, str) and value not in FORMATS:
            raise ValueError(f"unknown format '{value}'{did_you_mean(value, FORMATS)}; one of: {', '.join(FORMATS)}")
        return value

    @model_validator(mode="after")
    def _fields_and_preset(self):
        if self.preset is not None and self.format != "preference":
            raise ValueError(f"preset '{self.preset}' reshapes preference data; it needs format: preference")
        allowed = COLUMNS[self.format]
        unknown = [k for k in self.fields if k not in allowed]
        if unknown:
            raise ValueError(
                "; ".join(f"fields: '{k}' is not a {self.format} column{did_you_mean(k, allowed)}" for k in unknown)
                + f" (the keys of fields are our column names: {', '.join(allowed)}; the values are the source's)"
            )
        return self

    def input_files(self) -> list[Path]:
        """Local files the rows depend on (for fingerprinting); builder and hub sources are pinned by sha256."""
        return [self.source.path] if self.source.path is not None else []


# ---------------------------------------------------------------------------------------------------------------
# Loading a card


def load_card(path: str | Path) -> DataCard:
    """Read and validate a card; raise RecipeError listing every problem with its YAML path."""
    raw = read_yaml_mapping(path, "data card", "name, source, format, ...")
    try:
        return DataCard.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError(str(path), pydantic_problems(exc, DataCard)) from None


# ---------------------------------------------------------------------------------------------------------------
# Materialising rows


def rows_sha256(rows: list[dict]) -> str:
    """sha256 of rows as canonical JSON lines: json.dumps(row, sort_keys=True, ensure_ascii=False) + "\\n" each."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update((json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8"))
    return digest.hexdigest()


def _read_source(card: DataCard, where: str) -> tuple[list, str]:
    """The source's rows, and the name errors about them use (the data file, hub id or builder)."""
    source = card.source
    if source.path is not None:
        return read_rows(source.path), str(source.path)
    if source.hub is not None:
        hub = source.hub
        origin = f"hub:{hub.id}" + (f" ({hub.config})" if hub.config else "") + f" [{hub.split}]"
        try:
            import datasets

            dataset = datasets.load_dataset(hub.id, hub.config, split=hub.split, revision=hub.revision)
        except Exception as exc:  # offline, unknown id, bad split: all the user's to fix, none needs a traceback
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(
                origin,
                f"cannot load this dataset ({type(exc).__name__}: {message}). With HF_HUB_OFFLINE=1 only datasets "
                "already in the local hub cache load; download it once online, or export it to a local file and "
                "use source.path",
            ) from None
        return dataset.to_list(), origin
    origin = f"{where or card.name} (builder {source.builder.name})"
    try:
        rows = builders.run_builder(source.builder.name, source.builder.args)
    except (ValueError, TypeError) as exc:
        raise DataError(origin, str(exc), field="source.builder.args") from None
    if not isinstance(rows, list):
        raise DataError(origin, f"a builder must return a list of dicts, got {type(rows).__name__}")
    return rows, origin


def _map_row(raw: Any, card: DataCard, origin: str, number: int) -> dict:
    if not isinstance(raw, dict):
        raise DataError(origin, f"must be an object, got {type(raw).__name__}", row=number)
    wanted = PRESET_COLUMNS[card.preset] if card.preset else COLUMNS[card.format]
    row = {}
    for column in wanted:
        source_column = card.fields.get(column, column)
        if source_column not in raw:
            via = f" (read as '{column}' per fields)" if source_column != column else ""
            raise DataError(origin, f"missing column '{source_column}'{via}; the row has: {', '.join(sorted(raw))}",
                            row=number, field=source_column)
        row[column] = raw[source_column]
    if card.preset == "hh":
        row = _hh_row(row, origin, number)
    elif card.preset == "ultrafeedback":
        row = _ultrafeedback_row(row, origin, number)
    margin_column = card.fields.get("margin", "margin")
    if card.format == "preference" and margin_column in raw:
        # Optional: how much better chosen is than rejected, for reward training with a margin.
        margin = raw[margin_column]
        if not isinstance(margin, (int, float)) or isinstance(margin, bool) or margin != margin:
            raise DataError(origin, f"must be a number, got {margin!r}", row=number, field=margin_column)
        row["margin"] = float(margin)
    return row


def _hh_turns(text: Any, origin: str, number: int, field: str) -> list[dict]:
    if not isinstance(text, str):
        raise DataError(origin, "must be an Anthropic-HH transcript string", row=number, field=field)
    parts = re.split(r"\n\n(Human|Assistant): ?", "\n\n" + text.lstrip("\n"))
    if len(parts) < 3 or parts[0].strip():
        raise DataError(origin, "must be a transcript of '\\n\\nHuman: ...' / '\\n\\nAssistant: ...' turns",
                        row=number, field=field)
    roles = {"Human": "user", "Assistant": "assistant"}
    turns = [{"role": roles[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts), 2)]
    if turns[-1]["role"] != "assistant":
        raise DataError(origin, "the transcript must end with an Assistant turn", row=number, field=field)
    return turns


def _hh_row(row: dict, origin: str, number: int) -> dict:
    chosen = _hh_turns(row["chosen"], origin, number, "chosen")
    rejected = _hh_turns(row["rejected"], origin, number, "rejected")
    if chosen[:-1] != rejected[:-1]:
        raise DataError(origin, "the conversation before the last reply differs from chosen's", row=number,
                        field="rejected")
    return {"prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]}


def _ultrafeedback_row(row: dict, origin: str, number: int) -> dict:
    for field in ("chosen", "rejected"):
        value = row[field]
        if not isinstance(value, list) or len(value) < 2 or not isinstance(value[-1], dict):
            raise DataError(origin, "must be a list of messages ending with the assistant reply", row=number,
                            field=field)
        if value[-1].get("role") != "assistant":
            raise DataError(origin, "the last message must be the assistant's reply", row=number, field=field)
    if row["chosen"][:-1] != row["rejected"][:-1]:
        raise DataError(origin, "the conversation before the last reply differs from chosen's", row=number,
                        field="rejected")
    return {"prompt": row["chosen"][:-1], "chosen": row["chosen"][-1:], "rejected": row["rejected"][-1:]}


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
    return _turns_problem(row.get("prompt"), "prompt")


def _preference_problem(row: dict) -> tuple[str, str] | None:
    for field in ("prompt", "chosen", "rejected"):
        if problem := _turns_problem(row.get(field), field):
            return problem
    conversational = isinstance(row["prompt"], list)
    for field in ("chosen", "rejected"):
        if isinstance(row[field], list) != conversational:
            kind = "a list of messages" if conversational else "a string"
            return field, f"must be {kind}, like prompt (a row is all text or all conversational)"
    if row["chosen"] == row["rejected"]:
        return "rejected", "is identical to chosen, so the pair says nothing"
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


def materialise(card: DataCard, where: str = "") -> list[dict]:
    """The card's rows in source order, mapped to our columns and checked: every row for the format, then the
    declared row count and sha256. ``where`` (the card's path) names the card in errors."""
    where = where or f"card {card.name}"
    raw_rows, origin = _read_source(card, where)
    rows = [_map_row(raw, card, origin, number) for number, raw in enumerate(raw_rows, start=1)]
    check_rows(rows, card.format, origin)
    if card.rows is not None and len(rows) != card.rows:
        raise DataError(where, f"the card declares {card.rows} rows, the source gives {len(rows)}", field="rows")
    if card.sha256 is not None:
        actual = rows_sha256(rows)
        if actual != card.sha256:
            raise DataError(
                where,
                f"the rows hash to {actual}, the card declares {card.sha256}: the source changed since the card "
                "was written (check it, then update sha256)",
                field="sha256",
            )
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Splits


def prompt_key(row: dict) -> str:
    """What a row asks, as canonical JSON: its prompt, or for messages every turn before the last assistant turn."""
    if "messages" in row:
        messages = row["messages"]
        last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=len(messages))
        prompt: Any = messages[:last]
    else:
        prompt = row.get("prompt")
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def split_rows(rows: list[dict], eval_fraction: float, seed: int, where: str = "rows") -> dict[str, list[dict]]:
    """{"train", "eval"}: disjoint, each in source order. Rows are grouped by prompt and the groups ordered by a
    seeded hash; eval takes groups from the front until it holds round(eval_fraction x rows) rows (at least one when
    eval_fraction > 0). A row's side depends only on the seed, its prompt and that count, not on row order."""
    if eval_fraction <= 0:
        return {"train": list(rows), "eval": []}
    if eval_fraction >= 1:
        return {"train": [], "eval": list(rows)}
    keys = [prompt_key(row) for row in rows]
    sizes: dict[str, int] = {}
    for key in keys:
        sizes[key] = sizes.get(key, 0) + 1
    order = sorted(sizes, key=lambda k: (hashlib.sha256(f"{seed}\0{k}".encode()).hexdigest(), k))
    target = max(1, round(eval_fraction * len(rows)))
    chosen: set[str] = set()
    taken = 0
    for key in order:
        if taken >= target:
            break
        chosen.add(key)
        taken += sizes[key]
    train = [row for row, key in zip(rows, keys) if key not in chosen]
    evaluation = [row for row, key in zip(rows, keys) if key in chosen]
    if not train:
        raise DataError(where, f"too few distinct prompts ({len(sizes)}) to hold out {eval_fraction:g} of the rows "
                               "for eval and keep some for training", field="splits.eval_fraction")
    return {"train": train, "eval": evaluation}


def card_splits(card: DataCard, where: str = "") -> dict[str, list[dict]]:
    """The card's rows as {"train": [...], "eval": [...]}: disjoint, seeded by splits.seed, stable across runs."""
    rows = materialise(card, where)
    return split_rows(rows, card.splits.eval_fraction, card.splits.seed, where or f"card {card.name}")


# ---------------------------------------------------------------------------------------------------------------
# describe / validate


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

"""Data cards: one YAML per dataset (``data_cards/``) saying where the rows come from, what they mean, under which
license, how they split into train and eval, and what they must hash to.

``load_card`` validates a card (every problem at once, with its YAML path); ``materialise`` reads the source, maps its
columns onto ours, checks every row for the card's format and refuses rows that do not match the declared count or
sha256; ``card_splits`` splits them with the one split rule (``pipeline.data.splits``). No row is ever dropped: a bad
row is an error naming the file, row (1-based) and field. Relative paths in a card are taken from the card's folder.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from ..config.problems import did_you_mean, pydantic_problems, read_yaml_mapping
from ..config.schema import ExistingPath, Strict
from ..errors import DataError, RecipeError
from . import builders
from .rows import COLUMNS, FORMATS, SUFFIXES, check_rows, read_rows, rows_sha256
from .splits import split_rows

Format = Literal["messages", "prompt_completion", "prompt", "preference"]

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
    """Rows made by a named Python function registered with ``@builder`` (pipeline/data/builders.py)."""

    name: str
    """Builder name (see pipeline/data/builders.py; the movie-review builders are in pipeline/builtin/)."""
    args: dict[str, Any] = {}
    """Keyword arguments for the builder."""

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        known = builders.known_builders()
        if name not in known:
            names = ", ".join(sorted(known)) or "none"
            raise ValueError(f"no builder named '{name}'{did_you_mean(name, known)}; builders: {names}")
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
    """A local .jsonl, .json, .csv or .parquet file (a relative path is taken from the card's folder)."""
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
    """Reshape a known preference layout. hh: Anthropic-HH transcripts ("\\n\\nHuman: ... \\n\\nAssistant: ...") in
    chosen/rejected; ultrafeedback: UltraFeedback-binarized message lists in chosen/rejected. Both become a
    conversational prompt (the turns before the last reply) and one-message chosen/rejected replies (format:
    preference); or, from the same rows, the chosen conversation (messages), the prompt and the chosen reply
    (prompt_completion), or the prompt alone (prompt), so SFT, reward, DPO and PPO can share one dataset."""
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
        allowed = self.read_columns()
        column = f"column of the {self.preset} preset" if self.preset else f"{self.format} column"
        ours = "the preset's" if self.preset else "our"
        unknown = [k for k in self.fields if k not in allowed]
        if unknown:
            raise ValueError(
                "; ".join(f"fields: '{k}' is not a {column}{did_you_mean(k, allowed)}" for k in unknown)
                + f" (the keys of fields are {ours} column names: {', '.join(allowed)}; the values are the source's)"
            )
        return self

    def read_columns(self) -> tuple[str, ...]:
        """The columns read from each source row, under the names `fields` maps: a preset's own (it reshapes them
        into the format's afterwards), else the format's. Validating `fields` against anything else would refuse
        real columns and let unread ones pass, silently ignored."""
        return PRESET_COLUMNS[self.preset] if self.preset else COLUMNS[self.format]

    def input_files(self) -> list[Path]:
        """Local files the rows depend on (for fingerprinting); builder and hub sources are pinned by sha256."""
        return [self.source.path] if self.source.path is not None else []


# ---------------------------------------------------------------------------------------------------------------
# Loading a card


def load_card(path: str | Path) -> DataCard:
    """Read and validate a card; raise RecipeError listing every problem with its YAML path."""
    raw = read_yaml_mapping(path, "data card", "name, source, format, ...")
    try:
        return DataCard.model_validate(raw, context={"base_dir": Path(path).absolute().parent})
    except ValidationError as exc:
        raise RecipeError(str(path), pydantic_problems(exc, DataCard)) from None


# ---------------------------------------------------------------------------------------------------------------
# Materialising rows


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
    row = {}
    for column in card.read_columns():
        source_column = card.fields.get(column, column)
        if source_column not in raw:
            via = f" (read as '{column}' per fields)" if source_column != column else ""
            raise DataError(origin, f"missing column '{source_column}'{via}; the row has: {', '.join(sorted(raw))}",
                            row=number, field=source_column)
        row[column] = raw[source_column]
    if card.preset is not None:
        pair = _hh_row(row, origin, number) if card.preset == "hh" else _ultrafeedback_row(row, origin, number)
        row = _as_format(pair, card.format)
    margin_column = card.fields.get("margin", "margin")
    if card.format == "preference" and margin_column in raw:
        # Optional: how much better chosen is than rejected, for reward training with a margin.
        margin = raw[margin_column]
        if not isinstance(margin, (int, float)) or isinstance(margin, bool) or margin != margin:
            raise DataError(origin, f"must be a number, got {margin!r}", row=number, field=margin_column)
        row["margin"] = float(margin)
    return row


def _as_format(pair: dict, format: str) -> dict:
    """A preset's preference row (prompt turns, one-message chosen and rejected) in the card's format."""
    if format == "messages":
        return {"messages": pair["prompt"] + pair["chosen"]}
    if format == "prompt_completion":
        return {"prompt": pair["prompt"], "completion": pair["chosen"]}
    if format == "prompt":
        return {"prompt": pair["prompt"]}
    return pair


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


def card_splits(card: DataCard, where: str = "") -> dict[str, list[dict]]:
    """The card's rows as {"train": [...], "eval": [...]}: disjoint, seeded by splits.seed, stable across runs."""
    rows = materialise(card, where)
    return split_rows(rows, card.splits.eval_fraction, card.splits.seed, where or f"card {card.name}")




def files_behind(path: Path) -> list[Path]:
    """The files a data input's rows come from: the file itself and, for a data card, its local source file (so that
    a card without a pinned sha256 still notices its source changing)."""
    path = Path(path)
    if path.suffix not in (".yaml", ".yml"):
        return [path]
    try:
        card = load_card(path)
    except (RecipeError, DataError):
        return [path]
    return [path, *card.input_files()]

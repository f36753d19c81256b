"""Where a stage's data comes from (``data:`` in a recipe): a data card or a plain file, and its split."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from ..config.schema import ExistingPath, Strict
from .rows import SUFFIXES


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
    """With `path`: share of its rows held out for evaluation, used when eval_path is not given. Split like a card:
    disjoint by prompt (rows asking the same prompt stay on one side), seeded by the recipe's seed."""
    max_rows: int | None = Field(None, ge=1)
    """Train on only the first max_rows training rows, for quick trials. Applied after the split, for cards and
    files alike, so the eval rows stay the same."""

    @classmethod
    def expand_shorthand(cls, value):
        if isinstance(value, str):
            return {"card": value} if value.endswith((".yaml", ".yml")) else {"path": value}
        return None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value):
        return cls.expand_shorthand(value) or value

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



"""The one split rule of every data source: train and eval disjoint by prompt, seeded, stable across runs."""

from __future__ import annotations

import hashlib

from ..errors import DataError
from .rows import prompt_key


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




def take_rows(split: list[dict], max_rows: int | None) -> list[dict]:
    """The first ``max_rows`` rows of a split (all when None). Applied after splitting, so a smaller trial run keeps
    the same eval rows and never moves a row from one side to the other."""
    return split[:max_rows] if max_rows else split

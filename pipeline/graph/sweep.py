"""Sweeps: ``--sweep KEY=V1,V2,...`` (several make a grid) or a recipe's ``sweep:`` block runs every combination as
its own variant. Stages the variants share (same fingerprint) are computed once: the first variant builds them, the
others find them in the store. A sweep is resumable like any run."""

from __future__ import annotations

import itertools

import yaml

from ..errors import Problem, RecipeError


def parse_sweeps(specs: list[str], block: dict | None, source: str) -> list[tuple[str, list]]:
    """(key, values) pairs from --sweep options and the recipe's sweep: block (the options win for a key given in
    both). Each value is read as YAML, like --set."""
    problems, axes = [], {}
    for key, values in (block or {}).items():
        if not isinstance(values, list) or not values:
            problems.append(Problem(f"sweep.{key}", "must be a non-empty list of values"))
        else:
            axes[str(key)] = values
    for spec in specs:
        key, sep, text = spec.partition("=")
        if not sep or not key or not text:
            problems.append(Problem(f"--sweep {spec}", "expected KEY.PATH=VALUE1,VALUE2,..."))
            continue
        values = []
        for part in text.split(","):
            try:
                values.append(yaml.safe_load(part))
            except yaml.YAMLError:
                values.append(part)
        axes[key] = values
    if problems:
        raise RecipeError(source, problems)
    return list(axes.items())


def combinations(axes: list[tuple[str, list]]) -> list[list[str]]:
    """Every point of the grid as a list of --set overrides (one empty list when there is no sweep)."""
    if not axes:
        return [[]]
    keys = [k for k, _ in axes]
    return [[f"{k}={_yaml(v)}" for k, v in zip(keys, point)] for point in itertools.product(*(v for _, v in axes))]


def _yaml(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...").strip()

"""``--set a.b.c=value``: one override of a recipe's raw mapping, reaching keys below a shorthand too."""

from __future__ import annotations

from typing import Any, Callable

import yaml
from pydantic import BaseModel

from ..config.problems import did_you_mean, field_by_key, unwrap_model
from ..errors import Problem

SchemaAt = Callable[[list[str]], "type[BaseModel] | None"]
"""The schema class of the mapping at a key path of the recipe (None when unknown)."""


def apply_override(raw: dict, override: str, schema_at: SchemaAt | None = None) -> Problem | None:
    """Apply one ``a.b.c=value`` override in place; the value is parsed as YAML (so 8 is an int, [a, b] a list).

    A key below a shorthand (``--set model.quantization=4bit`` where the recipe says ``model: builtin:x``) expands
    the shorthand first, with the schema's own ``expand_shorthand``."""
    key, sep, text = override.partition("=")
    if not sep or not key:
        return Problem(f"--set {override}", "expected KEY.PATH=VALUE")
    parts = key.split(".")
    if not all(parts):
        return Problem(f"--set {override}", "empty key in the path")
    stages = raw.get("stages") if isinstance(raw.get("stages"), dict) else {}
    if len(parts) > 2 and parts[0] == "stages" and parts[1] not in stages:
        # a typo would otherwise invent a stage ("kind: missing"); a new stage is set whole
        return Problem(f"--set {override}", f"no stage '{parts[1]}' in the recipe{did_you_mean(parts[1], stages)}; "
                       f"to add one, set it whole: --set 'stages.{parts[1]}={{kind: ..., ...}}'")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            schema = schema_at(parts[: i + 1]) if schema_at else None
            expanded = schema.expand_shorthand(child) if schema is not None and hasattr(schema, "expand_shorthand") \
                else None
            if not isinstance(expanded, dict):
                return Problem(f"--set {override}", f"'{'.'.join(parts[: i + 1])}' is not a mapping")
            child = node[part] = expanded
        else:
            # a copy, so that a mapping shared through a YAML alias (`train: *defaults`) changes only here
            child = node[part] = dict(child)
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(text)
    except yaml.YAMLError:
        node[parts[-1]] = text
    return None


def schema_walker(root: type[BaseModel], stage_class: Callable[[str], "type[BaseModel] | None"],
                  raw: dict) -> SchemaAt:
    """A ``SchemaAt`` for recipes: follows field annotations from ``root``; under ``stages.<name>`` it uses the class
    of that stage's kind (read from ``raw``)."""

    def schema_at(path: list[str]) -> type[BaseModel] | None:
        current: Any = root
        for i, part in enumerate(path):
            if current is root and part == "stages" and len(path) > i + 1:
                body = (raw.get("stages") or {}).get(path[i + 1])
                kind = body.get("kind") if isinstance(body, dict) else None
                current = stage_class(kind) if isinstance(kind, str) else None
                rest = path[i + 2:]
                return _follow(current, rest) if current is not None else None
            current = _follow(current, [part])
            if current is None:
                return None
        return current

    return schema_at


def _follow(model: Any, path: list[str]) -> type[BaseModel] | None:
    current = model
    for part in path:
        current = unwrap_model(current)
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = field_by_key(current, part)
        if field is None:
            return None
        current = unwrap_model(field.annotation)
    current = unwrap_model(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None

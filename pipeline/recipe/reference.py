"""The recipe reference (docs/guide/config-reference.md), generated from the schema classes' field docs.

    python -m pipeline.recipe.reference            # rewrite docs/guide/config-reference.md
    python -m pipeline.recipe.reference --check    # exit 1 if the committed file differs from the code

Every key of a recipe is a field of a pydantic class with a docstring below it (``use_attribute_docstrings``); this
walks the recipe class, each stage kind's config class and every settings class they reach, and writes one table per
class: key, type, default, what it does. The classes' own docstrings head their sections.
"""

from __future__ import annotations

import inspect
import sys
import types
import typing
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from ..config.schema import StageConfig
from .kinds import config_classes
from .schema import Recipe

OUTPUT = Path(__file__).resolve().parents[2] / "docs" / "guide" / "config-reference.md"

HEADER = """# Recipe reference

Generated from the code by `python -m pipeline.recipe.reference` (`make docs`); a test fails when this file and the
code disagree, so edit the field docs in the classes, not this file. A recipe is YAML: the top-level keys, `model`,
`evaluate`, and under `stages:` one mapping per stage whose `kind` picks its table below. Any key can be overridden
on the command line with `--set KEY.PATH=VALUE`.
"""


def _models_in(annotation) -> list[type[BaseModel]]:
    """The pydantic classes an annotation refers to (through Optional, unions, lists and dicts)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found = []
    for arg in typing.get_args(annotation):
        found += _models_in(arg)
    return found


def _type_name(annotation) -> str:
    origin = typing.get_origin(annotation)
    if annotation is type(None):
        return "null"
    if origin is typing.Literal:
        return " | ".join(repr(a) if isinstance(a, str) else str(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is typing.Annotated:
        return _type_name(typing.get_args(annotation)[0])
    if origin in (list, tuple, set):
        args = typing.get_args(annotation)
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        key, value = typing.get_args(annotation) or (str, typing.Any)
        return f"mapping {_type_name(key)} -> {_type_name(value)}"
    if annotation is typing.Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation)).replace("ExistingPath", "path")


def _default(field) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        value = field.default_factory()
    else:
        value = field.default
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel):
        changed = value.model_dump(exclude_defaults=True, mode="json")
        return f"`{type(value).__name__}` defaults" + (f", but `{changed}`" if changed else "")
    if isinstance(value, str) or value is None or isinstance(value, (int, float, bool, list, dict)):
        text = "null" if value is None else str(value).lower() if isinstance(value, bool) else repr(value) \
            if isinstance(value, str) else str(value)
        return f"`{text}`"
    return f"`{value}`"


def _cell(text: str | None) -> str:
    return " ".join((text or "").split()).replace("|", "\\|")


def _section(cls: type[BaseModel], title: str) -> str:
    lines = [f"## {title}", ""]
    doc = inspect.getdoc(cls)
    if doc and cls.__doc__ and cls.__doc__ is not BaseModel.__doc__:
        lines += [" ".join(doc.split()), ""]
    lines += ["| key | type | default | what it does |", "|---|---|---|---|"]
    for name, field in cls.model_fields.items():
        key = field.alias or name
        what = field.description or ("the stage kind: this table" if name == "kind" else "")
        lines.append(f"| `{key}` | {_cell(_type_name(field.annotation))} | {_cell(_default(field))} | {_cell(what)} |")
    return "\n".join(lines) + "\n"


def render() -> str:
    """The whole reference, as committed."""
    roots: list[tuple[type[BaseModel], str]] = [(Recipe, "Top level")]
    roots += [(cls, f"Stage kind `{kind}`") for kind, cls in sorted(config_classes().items())]
    sections, seen, queue = [], set(), list(roots)
    shared: list[type[BaseModel]] = []
    while queue:
        cls, title = queue.pop(0)
        if cls in seen:
            continue
        seen.add(cls)
        sections.append(_section(cls, title))
        for field in cls.model_fields.values():
            for nested in _models_in(field.annotation):
                if nested not in seen and nested not in shared and nested not in [c for c, _ in roots] \
                        and nested is not StageConfig:  # the base of the kinds, each documented above
                    shared.append(nested)
        if not queue and shared:  # the settings classes after the recipe and every kind
            queue += [(c, f"`{c.__name__}`") for c in shared]
            shared = []
    contents = ["## Contents", ""] + [f"- {s.splitlines()[0].removeprefix('## ')}" for s in sections]
    return HEADER + "\n" + "\n".join(contents) + "\n\n" + "\n".join(sections)


def main(argv: list[str]) -> int:
    text = render()
    if argv[:1] == ["--check"]:
        if not OUTPUT.is_file() or OUTPUT.read_text() != text:
            print(f"{OUTPUT} is out of date: run python -m pipeline.recipe.reference", file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

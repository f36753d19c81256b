"""Recipes: YAML in, a validated ``Recipe`` out, or a ``RecipeError`` listing every problem with its YAML path.

Validation never reads the environment: the process count that some checks need comes from the caller (the running
job for ``run``, ``--launch`` for ``validate``/``plan``), so ``validate`` gives the same answer with or without
``accelerate launch``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..config.problems import did_you_mean, pydantic_problems, read_yaml_mapping
from ..config.schema import StageConfig
from ..errors import Problem, RecipeError
from .graph import graph_problems
from .kinds import config_classes
from .overrides import apply_override, schema_walker
from .schema import Recipe

STAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
"""Stage names become folder names: letters, digits, '_' and '-', nothing else (no spaces, no newline)."""


def load_recipe(path: str | Path, overrides: list[str] = (), processes: int = 1) -> Recipe:
    """Read, override and validate a recipe; raise RecipeError with every problem found. Relative paths inside it
    are taken from the recipe's folder."""
    path = Path(path)
    raw = read_yaml_mapping(path, "recipe", "name, model and stages")
    kinds = config_classes()
    schema_at = schema_walker(Recipe, kinds.get, raw)
    problems: list[Problem] = []
    for override in overrides:
        problem = apply_override(raw, override, schema_at)
        if problem:
            problems.append(problem)
    recipe = None
    if not problems:
        recipe, problems = validate_raw(raw, path.absolute().parent, processes)
    if problems:
        raise RecipeError(str(path), problems)
    return recipe


def validate_raw(raw: dict, base_dir: Path | None = None, processes: int = 1) -> tuple[Recipe | None, list[Problem]]:
    """Validate a parsed recipe; returns the recipe (None if invalid) and every problem found."""
    context = {"base_dir": base_dir} if base_dir is not None else None
    kinds = config_classes()
    problems: list[Problem] = []
    stages_raw = raw.get("stages")
    top = {k: v for k, v in raw.items() if k != "stages"}
    if stages_raw is None:
        problems.append(Problem("stages", "missing: a recipe needs at least one stage"))
        stages_raw = {}
    elif not isinstance(stages_raw, dict) or not stages_raw:
        problems.append(Problem("stages", "must be a non-empty mapping of stage name -> stage config"))
        stages_raw = {}

    class _Top(Recipe):
        stages: dict[str, Any] = {}

    top_recipe = None
    try:
        top_recipe = _Top.model_validate(top, context=context)
    except ValidationError as exc:
        problems += pydantic_problems(exc, Recipe)

    reserved = {cls.node_prefix for cls in kinds.values() if cls.node_prefix}
    stages: dict[str, StageConfig] = {}
    produced: dict[str, tuple[str, str]] = {}
    for name, body in stages_raw.items():
        where = f"stages.{name}"
        if not isinstance(name, str) or not STAGE_NAME.fullmatch(name):
            problems.append(Problem(where, "stage names use letters, digits, '_' and '-' only"))
            continue
        if any(name.startswith(prefix) for prefix in reserved):
            problems.append(Problem(where, f"names starting with {', '.join(sorted(reserved))} are kept for the nodes "
                                           "the runner adds (evaluations); rename the stage"))
            continue
        if not isinstance(body, dict):
            problems.append(Problem(where, "must be a mapping with at least `kind`"))
            continue
        kind = body.get("kind")
        if kind is None:
            problems.append(Problem(f"{where}.kind", f"missing; one of: {', '.join(sorted(kinds))}"))
            continue
        if not isinstance(kind, str) or kind not in kinds:
            problems.append(Problem(f"{where}.kind", f"unknown stage kind '{kind}'{did_you_mean(str(kind), kinds)}"))
            continue
        produced[name] = (kind, kinds[kind].produces)
        try:
            stages[name] = kinds[kind].model_validate(body, context=context)
        except ValidationError as exc:
            problems += pydantic_problems(exc, kinds[kind], prefix=where)

    names = [n for n in stages_raw if isinstance(n, str)]
    problems += graph_problems(stages, produced, set(names))
    if top_recipe is not None:
        nodes, section_problems = _section_nodes(top_recipe, stages, produced, names, kinds, context)
        problems += section_problems
        stages = _with_nodes(stages, nodes)
    quantization = top_recipe.model.quantization if top_recipe is not None else None
    for name, config in stages.items():
        found = config.setting_problems() + config.launch_problems(processes)
        if quantization:
            found += config.quantization_problems(quantization)
        problems += [Problem(f"stages.{name}.{key}", message) for key, message in found]
    if problems:
        return None, problems
    top["stages"] = stages
    return Recipe.model_validate(top, context=context), []


def _with_nodes(stages: dict[str, StageConfig], nodes: dict[str, StageConfig]) -> dict[str, StageConfig]:
    """The stages with the section nodes placed where they run best: a node without upstream first, every other
    node right after its last upstream (the order breaks ties of the topological order)."""
    ordered = {name: node for name, node in nodes.items() if not node.from_}
    for name, config in stages.items():
        ordered[name] = config
        for node_name, node in nodes.items():
            if node.from_ and node.from_[-1] == name:
                ordered[node_name] = node
    ordered.update({n: c for n, c in nodes.items() if n not in ordered})
    return ordered


def _section_nodes(top: Recipe, stages: dict[str, StageConfig], produced: dict[str, tuple[str, str]],
                   names: list[str], kinds: dict[str, type[StageConfig]], context) -> tuple[dict, list[Problem]]:
    """The graph nodes that recipe sections (``evaluate:``) expand into, each validated like a stage."""
    nodes: dict[str, StageConfig] = {}
    problems: list[Problem] = []
    for kind, cls in kinds.items():
        section_name = cls.recipe_section
        section = getattr(top, section_name, None) if section_name else None
        if section is None:
            continue
        bodies, found = cls.nodes_from_section(section, {n: t for n, (_, t) in produced.items()}, names)
        problems += [Problem(f"{section_name}.{key}", message) for key, message in found]
        for name, body in bodies.items():
            try:
                nodes[name] = cls.model_validate({**body, "kind": kind}, context=context)
            except ValidationError as exc:
                problems += pydantic_problems(exc, cls, prefix=section_name)
    return nodes, problems

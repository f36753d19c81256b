"""Named data builders: functions ``(**args) -> list[dict]`` that a data card names as its source.

A card says ``source: {builder: {name: movie_sft, args: {max_rows: 2000}}}``; the card checks the args against the
function's signature when it is loaded, and checks every row the function returns when it is materialised.
Builders register themselves with ``@builder``; the modules in ``BUILDER_MODULES`` (the project's own, e.g. the
movie-review builders of the demo recipe) are imported the first time a builder is looked up.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Callable

from ..config.problems import did_you_mean

Builder = Callable[..., list[dict]]
BUILDERS: dict[str, Builder] = {}
"""Builder name -> function; filled by ``@builder``."""

BUILDER_MODULES: tuple[str, ...] = ("pipeline.builtin.movie_builders",)
"""Modules whose ``@builder`` functions are known without being imported by hand."""


def builder(name: str) -> Callable[[Builder], Builder]:
    """Register a function ``(**args) -> list[dict]`` under ``name`` for data cards to use."""

    def register(function: Builder) -> Builder:
        if name in BUILDERS and BUILDERS[name] is not function:
            raise ValueError(f"a builder named '{name}' is already registered ({BUILDERS[name].__qualname__})")
        BUILDERS[name] = function
        return function

    return register


def known_builders() -> dict[str, Builder]:
    """Every registered builder, after importing BUILDER_MODULES."""
    for module in BUILDER_MODULES:
        importlib.import_module(module)
    return BUILDERS


def builder_arg_problems(name: str, args: dict) -> list[str]:
    """What is wrong with calling builder ``name`` with ``args`` (unknown or missing arguments); [] if fine."""
    function = known_builders()[name]
    params = inspect.signature(function).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return []
    problems = []
    for key in args:
        if key not in params:
            problems.append(f"builder '{name}' has no argument '{key}'{did_you_mean(str(key), params)}; "
                            f"it takes: {', '.join(params) or 'nothing'}")
    for key, param in params.items():
        if param.default is inspect.Parameter.empty and key not in args:
            problems.append(f"builder '{name}' needs argument '{key}'")
    return problems


def run_builder(name: str, args: dict) -> list[dict]:
    """Call builder ``name`` with ``args``."""
    return known_builders()[name](**args)

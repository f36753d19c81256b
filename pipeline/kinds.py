"""Discovery of stage kinds.

A stage kind is two files in ``stages/``: ``<kind>_config.py`` defining a ``StageConfig`` subclass named in
``CONFIG``, and ``<kind>.py`` defining ``run(ctx) -> dict``. Nothing else registers it. Config modules import
only pydantic, so validating a recipe never imports torch or trl.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from types import ModuleType

import stages

from .schema import StageConfig


@cache
def config_classes() -> dict[str, type[StageConfig]]:
    """Every known kind mapped to its config class."""
    found: dict[str, type[StageConfig]] = {}
    for info in pkgutil.iter_modules(stages.__path__):
        if not info.name.endswith("_config"):
            continue
        module = importlib.import_module(f"stages.{info.name}")
        config_cls = getattr(module, "CONFIG", None)
        if config_cls is None or not issubclass(config_cls, StageConfig):
            raise TypeError(f"stages/{info.name}.py must define CONFIG, a StageConfig subclass")
        kind = info.name.removesuffix("_config")
        found[kind] = config_cls
    return found


def stage_module(kind: str) -> ModuleType:
    """The module holding ``run(ctx)`` for a kind (imported only when the stage actually runs)."""
    module = importlib.import_module(f"stages.{kind}")
    if not callable(getattr(module, "run", None)):
        raise TypeError(f"stages/{kind}.py must define run(ctx)")
    return module

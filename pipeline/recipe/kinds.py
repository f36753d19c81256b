"""Discovery of stage kinds.

A stage kind is two files in ``stages/``: ``<kind>_config.py`` defining a ``StageConfig`` subclass named in
``CONFIG``, and ``<kind>.py`` (or a package ``<kind>/``) defining ``run(ctx) -> StageResult``. Nothing else
registers it. Folders named in ``$PIPELINE_STAGE_PATH`` (separated like PATH) are searched too, so a kind can live
outside this project. Config modules import only pydantic, so validating a recipe never imports torch or trl.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from functools import cache
from pathlib import Path
from types import ModuleType

import stages

from ..config.schema import StageConfig
from ..errors import PipelineError

STAGE_PATH_ENV = "PIPELINE_STAGE_PATH"


def stage_folders() -> list[Path]:
    """Where stage modules are looked for: the project's stages/ and the folders of $PIPELINE_STAGE_PATH."""
    extra = [Path(p).absolute() for p in os.environ.get(STAGE_PATH_ENV, "").split(os.pathsep) if p]
    folders = [Path(p) for p in stages.__path__]
    for folder in extra:
        if str(folder) not in stages.__path__:
            stages.__path__.append(str(folder))  # modules there import as stages.<name>, relative imports work
        folders.append(folder)
    return folders


@cache
def config_classes() -> dict[str, type[StageConfig]]:
    """Every known kind mapped to its config class."""
    found: dict[str, type[StageConfig]] = {}
    for info in pkgutil.iter_modules([str(f) for f in stage_folders()]):
        if not info.name.endswith("_config") or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"stages.{info.name}")
        config_cls = getattr(module, "CONFIG", None)
        if config_cls is None or not (isinstance(config_cls, type) and issubclass(config_cls, StageConfig)):
            raise PipelineError(f"{module.__file__}: a stage config module must define CONFIG, a StageConfig "
                                "subclass")
        found[info.name.removesuffix("_config")] = config_cls
    return found


def stage_module_name(kind: str) -> str:
    return f"stages.{kind}"


def stage_module(kind: str) -> ModuleType:
    """The module holding ``run(ctx)`` for a kind (imported only when the stage actually runs)."""
    stage_folders()
    module = importlib.import_module(stage_module_name(kind))
    if not callable(getattr(module, "run", None)):
        raise PipelineError(f"{module.__file__}: a stage module must define run(ctx)")
    return module

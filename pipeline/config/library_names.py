"""Names transformers accepts for schedulers and optimizers, read from its source without importing it (importing
transformers' trainer modules takes seconds and pulls in torch; validating a recipe must not)."""

from __future__ import annotations

import ast
import importlib.util
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=None)
def _enum_values(module_file: str, class_name: str) -> frozenset[str] | None:
    spec = importlib.util.find_spec("transformers")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / module_file
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            values = {s.value.value for s in node.body if isinstance(s, ast.Assign)
                      and isinstance(s.value, ast.Constant) and isinstance(s.value.value, str)}
            return frozenset(values) or None
    return None  # transformers moved it: the trainer will say it, no check here rather than a wrong one


def scheduler_names() -> frozenset[str] | None:
    """transformers' SchedulerType values, or None when they cannot be read."""
    return _enum_values("trainer_utils.py", "SchedulerType")


def optimizer_names() -> frozenset[str] | None:
    """transformers' OptimizerNames values, or None when they cannot be read."""
    return _enum_values("training_args.py", "OptimizerNames")

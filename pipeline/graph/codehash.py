"""What code computes a stage: the project modules its stage module reaches through imports, each hashed without its
comments, docstrings and formatting, and the versions of the libraries that do its maths.

A stage's fingerprint covers both, so after a bug fix in a stage (or in a helper it uses) or an upgrade of trl, the
affected stages run again, and only those; a comment or docstring edit changes nothing. Imports are read from the
source (``ast``), never executed, so fingerprinting imports neither torch nor the stage itself.
"""

from __future__ import annotations

import ast
import hashlib
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROJECT_PACKAGES = ("pipeline", "stages")
MATH_LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "deepspeed", "bitsandbytes")
"""Libraries whose version is part of the fingerprint of every stage whose code imports them."""
ALWAYS_TRACKED = ("torch", "transformers")
"""Every stage loads or runs models through these, whatever its own imports say."""
PLANNING_ONLY = ("pipeline.models.flops", "pipeline.models.duration", "pipeline.models.estimate")
"""Modules that estimate what a stage costs (FLOPs, time, memory: `plan`), imported by the config classes, never what
a stage computes: not part of any stage's code, so refitting the time model does not retrain every stage."""


def _stage_folders() -> list[Path]:
    from ..recipe.kinds import stage_folders

    return stage_folders()


def module_file(name: str) -> Path | None:
    """The source file of a project module (``pipeline.x.y`` or ``stages.z``), or None if it is not one."""
    top, _, rest = name.partition(".")
    if top not in PROJECT_PACKAGES:
        return None
    roots = [PROJECT_ROOT / "pipeline"] if top == "pipeline" else _stage_folders()
    relative = Path(*rest.split(".")) if rest else Path()
    for root in roots:
        for candidate in (root / relative.with_suffix(".py") if rest else None, root / relative / "__init__.py"):
            if candidate is not None and candidate.is_file():
                return candidate
    return None


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    """Drop every statement that is only a string constant (docstrings, attribute docstrings): they do not run."""
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list):
            kept = [s for s in body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)
                                             and isinstance(s.value.value, str))]
            node.body = kept or [ast.Pass()]
    return tree


@lru_cache(maxsize=None)
def _parse(path: str, mtime_ns: int) -> tuple[str, tuple[str, ...]]:
    """(normalised digest, its import statements as "level|module|names") of one source file; cached by path and
    modification time."""
    source = Path(path).read_text(encoding="utf-8")
    tree = ast.parse(source, filename=path)
    imports: list[tuple[int, str | None, tuple[str, ...]]] = []
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and _is_type_checking(block.test)
                   for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:  # `if TYPE_CHECKING:` imports never run
            continue
        if isinstance(node, ast.Import):
            imports.extend((0, alias.name, ()) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imports.append((node.level, node.module, tuple(alias.name for alias in node.names)))
    digest = hashlib.sha256(ast.dump(_strip_docstrings(tree), annotate_fields=False).encode()).hexdigest()
    flat = tuple(f"{level}|{module or ''}|{','.join(names)}" for level, module, names in imports)
    return digest, flat


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports_of(name: str, path: Path) -> tuple[str, set[str], set[str]]:
    """(digest, project modules, third-party top-level packages) a module imports, anywhere in its body."""
    digest, flat = _parse(str(path), path.stat().st_mtime_ns)
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    project, external = set(), set()
    for entry in flat:
        level_text, module, names_text = entry.split("|")
        level, names = int(level_text), [n for n in names_text.split(",") if n]
        if level:
            base_parts = package.split(".")
            base_parts = base_parts[: len(base_parts) - (level - 1)] if level > 1 else base_parts
            base = ".".join(base_parts + ([module] if module else []))
        else:
            base = module
        candidates = [base] + [f"{base}.{n}" for n in names]
        for candidate in candidates:
            top = candidate.partition(".")[0]
            if top in PROJECT_PACKAGES:
                if module_file(candidate) is not None:
                    project.add(candidate)
            elif not level:
                external.add(top)
    return digest, project, external


def code_closure(roots: list[str]) -> tuple[dict[str, str], set[str]]:
    """({module path: digest} of every project module reachable from ``roots``, third-party packages they import).

    Module paths are shown as files without their suffix (``stages/dpo``, ``pipeline/training/trainer``); a package
    also brings its ``__init__``."""
    digests: dict[str, str] = {}
    external: set[str] = set()
    seen: set[str] = set()
    queue = [r for r in roots if module_file(r) is not None]
    while queue:
        name = queue.pop()
        if name in seen or name in PLANNING_ONLY:
            continue
        seen.add(name)
        path = module_file(name)
        if path is None:
            continue
        # importing a.b.c runs a/__init__ and a/b/__init__ too
        parts = name.split(".")
        queue.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        digest, project, libraries = _imports_of(name, path)
        digests[display_name(name, path)] = digest
        external |= libraries
        queue.extend(project - seen)
    return dict(sorted(digests.items())), external


def display_name(name: str, path: Path) -> str:
    shown = name.replace(".", "/")
    return shown + "/__init__" if path.name == "__init__.py" and not shown.endswith("__init__") else shown


def library_versions(names) -> dict[str, str | None]:
    """Installed versions (None when not installed), read from package metadata without importing anything."""
    versions = {}
    for name in sorted(names):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def stage_code(kind: str) -> tuple[dict[str, str], dict[str, str | None]]:
    """(code digests, library versions) of a stage kind: its stage module (or package) and its config module, with
    everything in the project they import; the math libraries they import plus ALWAYS_TRACKED."""
    code, external = code_closure([f"stages.{kind}", f"stages.{kind}_config"])
    libraries = (external & set(MATH_LIBRARIES)) | set(ALWAYS_TRACKED)
    return code, library_versions(libraries) | {"python": ".".join(map(str, sys.version_info[:2]))}

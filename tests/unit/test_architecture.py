"""The import graph of pipeline/ and stages/: no circles (between modules or between packages), lower layers never
import higher ones, no private name is imported from another module, and nothing below the runner names a kind."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from support import ROOT

LAYERS = [
    {"errors"},
    {"store"},
    {"config"},
    {"data", "models", "rl"},
    {"evaluation"},
    {"artifacts"},
    {"training"},
    {"recipe"},
    {"contract"},
    {"builtin"},
    {"stages"},
    {"graph"},
    {"cli"},
    {"__main__"},
]
"""Packages of pipeline/ (and stages/) from the bottom up: a package may import only from layers below its own."""


def modules() -> dict[str, Path]:
    found = {}
    for top in ("pipeline", "stages"):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = modules()


def imports_of(name: str, path: Path) -> list[tuple[str, list[str]]]:
    """(imported project module, names imported from it) for every import statement, wherever it is."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            names = [alias.name for alias in node.names]
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            if submodules:
                found += [(m, []) for m in submodules]
                names = [n for n in names if f"{target}.{n}" not in MODULES]
            if names or not submodules:
                found.append((target, names))
    return [(target, names) for target, names in found if target.split(".")[0] in ("pipeline", "stages")]


def edges() -> dict[str, set[str]]:
    graph = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for target, _ in imports_of(name, path):
            if target in MODULES and target != name:
                graph[name].add(target)
    return graph


def package_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "stages":
        return "stages"
    return parts[1] if len(parts) > 1 else "__init__"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_every_project_import_names_an_existing_module():
    missing = [(name, target) for name, path in MODULES.items() for target, _ in imports_of(name, path)
               if target not in MODULES]
    assert not missing


def test_no_import_cycle_between_modules():
    assert find_cycle(edges()) is None


def test_no_import_cycle_between_packages():
    graph: dict[str, set[str]] = {}
    for source, targets in edges().items():
        for target in targets:
            a, b = package_of(source), package_of(target)
            if a != b and target not in ("stages", "pipeline"):
                graph.setdefault(a, set()).add(b)
    assert find_cycle(graph) is None


def test_lower_layers_never_import_higher_ones():
    layer = {package: i for i, group in enumerate(LAYERS) for package in group}
    upward = []
    for source, targets in edges().items():
        for target in targets:
            a, b = package_of(source), package_of(target)
            if target in ("stages", "pipeline") or a == b or a == "__init__":
                continue  # the bare `stages` package is where kinds are discovered, nothing is imported from it
            assert a in layer and b in layer, f"{a} or {b} is missing from LAYERS"
            if layer[b] > layer[a]:
                upward.append(f"{source} -> {target}")
    assert not upward


def test_no_private_name_is_imported_from_another_module():
    private = [f"{name}: {target}.{n}" for name, path in MODULES.items() for target, names in imports_of(name, path)
               for n in names if n.startswith("_")]
    assert not private


@pytest.mark.parametrize("package", ["config", "data", "models", "evaluation", "artifacts", "training", "recipe",
                                     "contract", "graph", "store", "rl"])
def test_the_core_never_names_a_stage_kind(package):
    kinds = {p.stem.removesuffix("_config") for p in (ROOT / "stages").glob("*_config.py")}
    offenders = []
    for path in (ROOT / "pipeline" / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and any(isinstance(c, ast.Constant) and c.value in kinds
                                                     for c in node.comparators):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, "compare with a kind name: ask the config class instead"


def test_the_checks_see_the_whole_tree():
    assert {"pipeline.graph.runner", "stages.ppo.loop", "pipeline.recipe.loader"} <= set(MODULES)
    assert any(package_of(t) == "training" for t in edges()["stages.sft"])

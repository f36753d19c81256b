"""The stage graph of a recipe: references, cycles and upstream types checked; order and downstream sets."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config.problems import did_you_mean
from ..config.schema import StageConfig
from ..errors import Problem

if TYPE_CHECKING:
    from .schema import Recipe


def graph_problems(stages: dict[str, StageConfig], produced: dict[str, tuple[str, str]],
                   names: set[str]) -> list[Problem]:
    """Missing references, cycles and upstream types a stage cannot take.

    ``stages`` holds the configs that validated; ``produced`` the (kind, artifact type) of every stage whose kind is
    known (valid or not), so that a stage whose own config has a problem still counts as the upstream it is meant to
    be (one mistake, one problem); ``names`` every stage name of the recipe."""
    problems: list[Problem] = []
    for name, config in stages.items():
        for ref in config.from_:
            if ref not in names:
                problems.append(Problem(f"stages.{name}.from", f"no stage named '{ref}'{did_you_mean(ref, names)}"))
            elif ref == name:
                problems.append(Problem(f"stages.{name}.from", "a stage cannot read its own output"))
        problems += _input_type_problems(name, config, produced, names)
    cycle = find_cycle({n: [r for r in c.from_ if r in names] for n, c in stages.items()})
    if cycle:
        problems.append(Problem("stages", f"cycle: {' -> '.join(cycle)}"))
    return problems


def _input_type_problems(name: str, config: StageConfig, produced: dict[str, tuple[str, str]],
                         names: set[str]) -> list[Problem]:
    problems = []
    seen: dict[str, list[str]] = {}
    unknown = False
    for ref in config.from_:
        if ref == name or ref not in names:
            continue
        if ref not in produced:  # its kind is unknown: reported there; nothing can be said about its type here
            unknown = True
            continue
        ref_kind, kind_of_ref = produced[ref]
        if kind_of_ref not in config.accepts:
            takes = ", ".join(sorted(config.accepts)) or "no upstream"
            problems.append(Problem(f"stages.{name}.from", f"a {config.kind} stage cannot take '{ref}' ({ref_kind}, a "
                                                           f"{kind_of_ref}); it takes: {takes}"))
        seen.setdefault(kind_of_ref, []).append(ref)
    for kind_of_ref, refs in seen.items():
        if len(refs) > 1:
            problems.append(Problem(f"stages.{name}.from", f"takes one {kind_of_ref}, got {', '.join(refs)}"))
    if unknown or any(ref not in names for ref in config.from_):
        return problems
    for message in config.input_problems(set(seen)):
        problems.append(Problem(f"stages.{name}", message))
    for needed, required in config.accepts.items():
        if required and needed not in seen and needed != "policy":  # the base model stands in for a policy
            problems.append(Problem(f"stages.{name}.from", f"a {config.kind} stage needs a {needed} stage upstream"))
    return problems


def find_cycle(edges: dict[str, list[str]]) -> list[str] | None:
    """A cycle in ``node -> upstream nodes`` as a closed path, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for up in edges.get(node, []):
            if state.get(up) == 1:
                return stack[stack.index(up) :] + [up]
            if up not in state and (found := visit(up)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in edges:
        if node not in state and (found := visit(node)):
            return found
    return None


def topological_order(recipe: "Recipe") -> list[str]:
    """Stage names, each after all of its upstreams; ties keep the recipe's order."""
    order: list[str] = []
    placed: set[str] = set()
    pending = list(recipe.stages)
    while pending:
        for name in pending:
            if all(up in placed for up in recipe.stages[name].from_):
                order.append(name)
                placed.add(name)
                pending.remove(name)
                break
        else:  # validation rejects cycles, so this is a bug
            raise AssertionError(f"cycle among {pending}")
    return order


def downstream_of(recipe: "Recipe", name: str) -> set[str]:
    """``name`` and every stage that reads from it, directly or not."""
    found = {name}
    changed = True
    while changed:
        changed = False
        for other, config in recipe.stages.items():
            if other not in found and found.intersection(config.from_):
                found.add(other)
                changed = True
    return found

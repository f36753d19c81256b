"""Upstream runs (a recipe's first stages, trained once) shared by every test module of a session.

A run is known by the fingerprints of its stages, as the pipeline's own store knows it: two recipes whose stage
blocks agree (recipes/online.yaml repeats tiny.yaml's sft, preferences and reward) get the same folder, and a recipe
whose upstream differs gets its own. The shared folders are read-only by convention: a test that runs downstream
stages works on a copy (``support.copy_artifacts``), and ``check_untouched`` (run when the session ends) names any
file that changed in them anyway."""

from __future__ import annotations

from pathlib import Path

from . import RECIPES, build_upstream

TINY = RECIPES / "tiny.yaml"
UPSTREAM = ("sft", "preferences", "reward")
"""The stages the PPO, GRPO and RLOO tests start from: the SFT policy, its preference pairs and the reward model."""


def stage_fingerprints(recipe: Path, stages: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """(stage, fingerprint) of ``stages`` as the recipe plans them (planning only: nothing runs or is written)."""
    from pipeline.graph.plan import make_plan
    from pipeline.recipe import load_recipe

    plan = make_plan(load_recipe(recipe, ["output_dir=/nonexistent/upstream", "evaluate=null"]), only=list(stages))
    return tuple((stage.name, stage.fingerprint) for stage in plan.stages if stage.name in stages)


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry below ``folder``: a link's target, a file's size and modification time (lock files left out)."""
    entries = {}
    for path in sorted(folder.rglob("*")):
        if path.name.endswith(".lock"):
            continue
        key = str(path.relative_to(folder))
        if path.is_symlink():
            entries[key] = ("link", str(path.readlink()))
        elif path.is_file():
            stat = path.stat()
            entries[key] = ("file", stat.st_size, stat.st_mtime_ns)
    return entries


class SharedUpstreams:
    """Upstream runs built on first request into ``root`` and handed out again for the rest of the session."""

    def __init__(self, root: Path):
        self.root = root
        self.built: dict[tuple, tuple[Path, dict]] = {}  # fingerprints -> (folder, its snapshot once built)

    def get(self, recipe: Path = TINY, stages: tuple[str, ...] = UPSTREAM) -> Path:
        """The folder holding ``stages`` of ``recipe`` (built now unless an identical upstream already was); never
        write into it, copy it."""
        key = stage_fingerprints(recipe, stages)
        if key not in self.built:
            folder = build_upstream(recipe, self.root / f"{Path(recipe).stem}-{len(self.built)}", stages)
            self.built[key] = folder, snapshot(folder)
        return self.built[key][0]

    def check_untouched(self) -> None:
        """Fail naming what changed in a shared folder since it was built (a test wrote into it, not a copy)."""
        changed = []
        for folder, before in self.built.values():
            after = snapshot(folder)
            changed += [f"{folder / key}" for key in sorted(before.keys() | after.keys())
                        if before.get(key) != after.get(key)]
        assert not changed, "a test wrote into a shared upstream folder (copy it first):\n" + "\n".join(changed[:20])

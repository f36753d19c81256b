"""The plan: every node of the recipe's graph fingerprinted, and for each whether it runs, is cached or is skipped,
with the reason ("new", "config: stages.dpo.beta 0.1 -> 0.2", "code changed (stages/dpo)", "trl 1.16.0 -> 1.17.0",
"upstream sft changed").

A fingerprint covers what a node's artifact depends on: its kind and resolved config (input files by content, not by
path), the seed, the fingerprints of its upstream nodes, the base model (its settings and the content of its
folder), the code that computes it and the versions of the libraries that do its maths (``codehash``). Its parts are
kept in the manifest, so that the next plan can say what changed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from ..artifacts.artifact import Artifact
from ..config.problems import did_you_mean
from ..data.cards import files_behind
from ..errors import PipelineError, UsageError
from ..models.sources import fingerprint_folder, resolve
from ..recipe.graph import downstream_of, topological_order
from ..recipe.schema import Recipe
from ..store.hashing import sha256_file
from .codehash import stage_code

FINGERPRINT_VERSION = 4  # bump when what a fingerprint covers changes
STORE = ".store"
"""Every variant of every stage lives in <output_dir>/.store/<stage>-<fingerprint[:12]>/; <output_dir>/<stage> is a
link to the variant of the settings last run."""


def variant_dir(out_dir: Path, name: str, fingerprint: str) -> Path:
    """Where the variant of ``name`` with this fingerprint is stored."""
    return Path(out_dir) / STORE / f"{name}-{fingerprint[:12]}"


class DamagedArtifact(PipelineError):
    """Stored artifacts whose files changed after their stage wrote them. ``stages`` names them, so that the message
    can say what to rebuild without anyone reading it back."""

    exit_code = 2

    def __init__(self, damage: dict[str, str]):
        """``damage``: what is wrong, by stage name."""
        self.stages = list(damage)
        super().__init__("stored artifacts do not match what their stages wrote:\n  - " + "\n  - ".join(damage.values())
                         + f"\nrebuild with: {' '.join(f'--force {name}' for name in self.stages)}")


class Action(str, Enum):
    """What a run does with a node. A str enum: it prints, compares and serialises as its value."""

    RUN = "run"
    CACHED = "cached"
    SKIP = "skip"
    """Not selected by --only/--from."""

    def __str__(self) -> str:
        return self.value


@dataclass
class StagePlan:
    name: str
    kind: str
    fingerprint: str
    action: Action
    reason: str
    """Why, for people to read ("forced", "config: stages.dpo.beta 0.1 -> 0.2"); nothing decides on it."""
    forced: bool = False
    """Selected with --force or --from: rebuilt whatever the store holds."""
    inputs: dict = field(default_factory=dict)
    """What the node reads, for the manifest's lineage: upstream fingerprints, data files and their digests, the
    base model."""
    parts: dict = field(default_factory=dict)
    """Everything the fingerprint is made of (kept in the manifest, compared by the next plan)."""

    folder: Path | None = None
    """This variant's artifact folder in the store."""

    @property
    def fresh(self) -> bool:
        """Forced stages start over: their checkpoints are discarded, not resumed."""
        return self.action is Action.RUN and self.forced


@dataclass
class Plan:
    recipe: Recipe
    out_dir: Path
    base_model_path: str
    stages: list[StagePlan]
    variant: str = ""
    """The sweep point this plan runs ("" outside a sweep)."""

    def __getitem__(self, name: str) -> StagePlan:
        return next(s for s in self.stages if s.name == name)


def computed_settings(config) -> dict:
    """A stage's settings as its fingerprint covers them: all but the trackers it reports to, which change what is
    recorded about a run, not what it computes, and an unset seed."""
    settings = config.model_dump(mode="json", by_alias=True)
    if settings.get("seed", 0) is None:  # unset: the recipe's seed, which the fingerprint holds already
        del settings["seed"]
    if isinstance(settings.get("train"), dict):
        settings["train"].pop("report_to", None)
    return settings


def digest(obj) -> str:
    """sha256 of an object's canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def make_plan(recipe: Recipe, out_dir: Path | None = None, only: list[str] = (), from_stage: str | None = None,
              force: list[str] = (), verify: bool = False, variant: str = "") -> Plan:
    """Fingerprint every node and decide what runs (``variant``: the sweep point this plan is of). Raises
    PipelineError for unknown or unbuildable selections, and for stored artifacts the run would use (cached, or read
    by a stage that runs) whose files no longer match what their stage wrote (checked by size and modification time,
    by content where those moved or with ``verify``)."""
    out_dir = Path(out_dir) if out_dir is not None else recipe.out_dir
    for name in [*only, *force, *([from_stage] if from_stage else [])]:
        if name not in recipe.stages:
            raise UsageError(f"no stage named '{name}' in the recipe{did_you_mean(name, recipe.stages)}; stages: "
                             f"{', '.join(recipe.stages)}")
    base_model_path = resolve(recipe.model.source, recipe.model.revision)
    model = recipe.model
    model_inputs = {
        # a local folder is known by its content, wherever it lies; builtin names and hub ids by their name
        "source": model.source if not Path(model.source).is_absolute() else "(local folder)",
        "revision": model.revision,
        "dtype": model.run_dtype,  # auto means different weights on different machines
        "quantization": model.quantization,
        "fingerprint": fingerprint_folder(base_model_path),
        **({"chat_template": digest(model.chat_template)} if model.chat_template is not None else {}),
    }
    selected = _selection(recipe, only, from_stage)
    forced: set[str] = set()
    for name in force:
        forced |= downstream_of(recipe, name)
    if from_stage:
        forced |= selected

    fingerprints: dict[str, str] = {}
    plans: list[StagePlan] = []
    file_digests: dict[Path, str] = {}
    for name in topological_order(recipe):
        config = recipe.stages[name]
        files = [f for path in config.input_files() for f in files_behind(Path(path))]
        for path in files:
            if path not in file_digests:
                file_digests[path] = sha256_file(path)
        code, libraries = stage_code(config.kind)
        parts = {
            "version": FINGERPRINT_VERSION,
            "kind": config.kind,
            "config": _content_keyed(computed_settings(config), file_digests),
            "seed": recipe.seed,
            "upstream": {up: fingerprints[up] for up in config.from_},
            "data": sorted({file_digests[p] for p in files}),
            "model": model_inputs,
            "code": code,
            "libraries": libraries,
        }
        fingerprint = digest(parts)
        fingerprints[name] = fingerprint
        inputs = {"upstream": parts["upstream"], "data": {str(p): file_digests[p] for p in files},
                  "model": model_inputs}
        folder = variant_dir(out_dir, name, fingerprint)
        existing = Artifact.read(folder)
        if existing is not None and existing.fingerprint != fingerprint:
            existing = None  # a 12-digit prefix shared by two fingerprints: treat as new (and overwrite)
        if name not in selected:
            action, reason = Action.SKIP, "not selected"
        elif name in forced:
            action, reason = Action.RUN, "forced"
        elif existing is not None and _is_current(out_dir, name, folder):
            action, reason = Action.CACHED, "artifact matches"
        elif existing is not None:  # an earlier variant comes back: say which, since the link will move to it
            action, reason = Action.CACHED, f"stored variant {fingerprint[:12]} ({_when(existing)})"
        else:
            action, reason = Action.RUN, _why_new(out_dir, name, parts)
        plans.append(StagePlan(name, config.kind, fingerprint, action, reason,
                               forced=action is Action.RUN and name in forced,
                               inputs=inputs, parts=parts, folder=folder))

    plan = Plan(recipe, out_dir, base_model_path, plans, variant)
    _check_upstreams_ready(plan)
    _check_artifacts_intact(plan, verify)
    return plan


def _is_current(out_dir: Path, name: str, folder: Path) -> bool:
    """Whether <output_dir>/<name> already names this variant."""
    try:
        return (out_dir / name).resolve() == folder.resolve()
    except OSError:
        return False


def _check_artifacts_intact(plan: Plan, full: bool) -> None:
    """Every stored artifact this run reads or keeps is what its stage wrote."""
    used = {s.name for s in plan.stages if s.action is Action.CACHED}
    rebuilt = {s.name for s in plan.stages if s.action is Action.RUN}
    for stage in plan.stages:
        if stage.action is Action.RUN:
            used |= {up for up in plan.recipe.stages[stage.name].from_ if up not in rebuilt}
    damage = {}
    for stage in [s for s in plan.stages if s.name in used]:
        artifact = Artifact.read(stage.folder)
        if artifact is not None and (why := artifact.damage(full)) is not None:
            damage[stage.name] = f"{plan.out_dir / stage.name} (variant {stage.fingerprint[:12]}): {why}"
    if damage:
        raise DamagedArtifact(damage)


def _when(artifact: Artifact) -> str:
    return str(artifact.manifest.get("finished_at", "?"))[:16].replace("T", " ")


def _why_new(out_dir: Path, name: str, parts: dict) -> str:
    """Why no stored variant matches: what differs from the variant run last (the one <output_dir>/<name> names)."""
    current = Artifact.read(Path(out_dir) / name)
    if current is None:
        return "new"
    return why_changed(name, current.manifest.get("fingerprint_parts") or {}, parts)


def _selection(recipe: Recipe, only: list[str], from_stage: str | None) -> set[str]:
    """The nodes a run covers. Attached nodes (evaluations) come with what they are attached to: their upstream, or,
    for one without an upstream, the base model, which a selection uses when one of its stages starts from it."""
    if only:
        selected = set(only)
    elif from_stage:
        selected = downstream_of(recipe, from_stage)
    else:
        return set(recipe.stages)
    reads_base = any(_reads_base_model(recipe, name) for name in selected if not recipe.stages[name].attached)
    for name, config in recipe.stages.items():
        if config.attached and name not in selected and (
                config.from_ and set(config.from_) <= selected or not config.from_ and reads_base):
            selected.add(name)
    return selected


def _reads_base_model(recipe: Recipe, name: str) -> bool:
    config = recipe.stages[name]
    return "policy" in config.accepts and not any(recipe.stages[up].produces == "policy" for up in config.from_)


def _content_keyed(config: dict, file_digests: dict[Path, str]):
    """The config with every input file's path replaced by its content digest: the same file elsewhere (another
    checkout, a moved folder) is the same input."""
    by_path = {str(path): f"sha256:{value}" for path, value in file_digests.items()}

    def walk(value):
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return by_path.get(value, value) if isinstance(value, str) else value

    return walk(config)


def why_changed(name: str, old: dict, new: dict) -> str:
    """Why a stored artifact no longer matches: the first differences between its fingerprint parts and today's."""
    if not old or old.get("version") != new["version"]:
        return "stored by an older version of the pipeline"
    reasons = []
    changed_upstream = [up for up, fp in new["upstream"].items() if old.get("upstream", {}).get(up) != fp]
    if changed_upstream:
        reasons.append(f"upstream {', '.join(changed_upstream)} changed")
    if old.get("kind") != new["kind"]:
        reasons.append(f"kind {old.get('kind')} -> {new['kind']}")
    config_diffs = _diff(flatten_settings(old.get("config", {})), flatten_settings(new["config"]))
    data_diffs = [key for key, a, b in config_diffs if str(a).startswith("sha256:") and str(b).startswith("sha256:")]
    config_diffs = [d for d in config_diffs if d[0] not in data_diffs]
    if data_diffs:
        reasons.append("input data changed (" + ", ".join(f"stages.{name}.{key}" for key in data_diffs) + ")")
    elif old.get("data") != new["data"]:
        reasons.append("input data changed")
    if config_diffs:
        shown = [f"stages.{name}.{key} {_short(a)} -> {_short(b)}" for key, a, b in config_diffs[:3]]
        more = f" (+{len(config_diffs) - 3} more)" if len(config_diffs) > 3 else ""
        reasons.append("config: " + ", ".join(shown) + more)
    if old.get("seed") != new["seed"]:
        reasons.append(f"seed {old.get('seed')} -> {new['seed']}")
    old_model, new_model = old.get("model", {}), new["model"]
    for key in ("source", "revision", "dtype", "quantization", "chat_template"):
        if old_model.get(key) != new_model.get(key):
            reasons.append(f"model.{key} {old_model.get(key)} -> {new_model.get(key)}")
    if old_model.get("fingerprint") != new_model.get("fingerprint") and old_model.get("source") == \
            new_model.get("source"):
        reasons.append("base model files changed")
    code_old, code_new = old.get("code", {}), new["code"]
    modules = sorted(m for m in set(code_old) | set(code_new) if code_old.get(m) != code_new.get(m))
    if modules:
        more = f" +{len(modules) - 3} more" if len(modules) > 3 else ""
        reasons.append(f"code changed ({', '.join(modules[:3])}{more})")
    libs_old, libs_new = old.get("libraries", {}), new["libraries"]
    for lib in sorted(set(libs_old) | set(libs_new)):
        if libs_old.get(lib) != libs_new.get(lib):
            reasons.append(f"{lib} {libs_old.get(lib) or 'absent'} -> {libs_new.get(lib) or 'absent'}")
    return "; ".join(reasons) or "fingerprint changed"


def flatten_settings(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        flat = {}
        for key, child in value.items():
            flat.update(flatten_settings(child, f"{prefix}{key}."))
        return flat or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): value}


def _diff(old: dict, new: dict) -> list[tuple[str, object, object]]:
    return [(key, old.get(key, "(unset)"), new.get(key, "(unset)")) for key in sorted(set(old) | set(new))
            if old.get(key, "(unset)") != new.get(key, "(unset)")]


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def _check_upstreams_ready(plan: Plan) -> None:
    """A stage's upstreams that this run does not build must already be built and current."""
    will_exist = {s.name for s in plan.stages if s.action is not Action.SKIP}
    for stage in plan.stages:
        if stage.action is not Action.RUN:
            continue
        for up in plan.recipe.stages[stage.name].from_:
            if up in will_exist:
                continue
            if Artifact.read(plan[up].folder) is not None:
                continue  # the variant of today's settings is stored
            current = Artifact.read(plan.out_dir / up)
            if current is None:
                raise PipelineError(f"stage '{stage.name}' needs '{up}', which has not been built; run it first")
            why = why_changed(up, current.manifest.get("fingerprint_parts") or {}, plan[up].parts)
            raise PipelineError(f"stage '{stage.name}' needs '{up}', whose stored variants are out of date ({why}); "
                                f"run '{up}' first or drop --only")

"""The runner: orders stages, decides what is cached, runs the rest on every process, and writes artifacts.

Multi-process protocol (``accelerate launch`` with N processes): every rank validates the recipe and computes the
same plan; every rank runs each stage (trainers need all ranks); only the main process creates and renames the
artifact folder and writes its manifest; barriers separate stages so no rank reads an artifact before it exists.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .artifacts import MANIFEST, METRICS, Artifact, git_commit, host, package_versions
from .atomic import replace_dir, write_json
from .context import StageContext
from .hashing import sha256_file
from .errors import PipelineError
from .kinds import stage_module
from .models import fingerprint_folder, resolve
from .policy_eval import BASE, run_evaluations, targets
from .recipe import Recipe, downstream_of, topological_order

log = logging.getLogger("pipeline")

FINGERPRINT_VERSION = 1  # bump when what a fingerprint covers changes


@dataclass
class StagePlan:
    name: str
    kind: str
    fingerprint: str
    action: str
    """"run", "cached", or "skip" (not selected by --only/--from)."""
    reason: str
    inputs: dict = field(default_factory=dict)


@dataclass
class Plan:
    recipe: Recipe
    out_dir: Path
    base_model_path: str
    model_fingerprint: str
    stages: list[StagePlan]

    def __getitem__(self, name: str) -> StagePlan:
        return next(s for s in self.stages if s.name == name)


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def make_plan(
    recipe: Recipe,
    out_dir: Path | None = None,
    only: list[str] = (),
    from_stage: str | None = None,
    force: list[str] = (),
) -> Plan:
    """Fingerprint every stage and decide what runs. Raises PipelineError for unknown or unbuildable selections."""
    out_dir = Path(out_dir) if out_dir is not None else recipe.out_dir
    for name in [*only, *force, *([from_stage] if from_stage else [])]:
        if name not in recipe.stages:
            raise PipelineError(f"no stage named '{name}' in the recipe; stages: {', '.join(recipe.stages)}")
    base_model_path = resolve(recipe.model.source, recipe.model.revision)
    model_inputs = {
        "source": recipe.model.source,
        "revision": recipe.model.revision,
        "dtype": recipe.model.dtype,
        "quantization": recipe.model.quantization,
        "fingerprint": fingerprint_folder(base_model_path),
    }
    selected = set(recipe.stages)
    forced: set[str] = set()
    for name in force:
        forced |= downstream_of(recipe, name)
    if from_stage:
        selected = downstream_of(recipe, from_stage)
        forced |= selected
    if only:
        selected = set(only)

    fingerprints: dict[str, str] = {}
    plans: list[StagePlan] = []
    for name in topological_order(recipe):
        config = recipe.stages[name]
        inputs = {
            "upstream": {up: fingerprints[up] for up in config.from_},
            "data": {str(p): sha256_file(p) for p in config.input_files()},
        }
        upstream_types = {recipe.stages[up].produces for up in config.from_}
        if "policy" in config.accepts and "policy" not in upstream_types or not config.from_:
            inputs["model"] = model_inputs
        fingerprint = _hash(
            {
                "version": FINGERPRINT_VERSION,
                "kind": config.kind,
                "config": config.model_dump(mode="json", by_alias=True),
                "seed": recipe.seed,
                "inputs": inputs,
            }
        )
        fingerprints[name] = fingerprint
        existing = Artifact.read(out_dir / name)
        if name not in selected:
            action, reason = "skip", "not selected"
        elif name in forced:
            action, reason = "run", "forced"
        elif existing is None:
            action, reason = "run", "no artifact yet"
        elif existing.fingerprint != fingerprint:
            action, reason = "run", "config or inputs changed"
        else:
            action, reason = "cached", "artifact matches"
        plans.append(StagePlan(name, config.kind, fingerprint, action, reason, inputs))

    plan = Plan(recipe, out_dir, base_model_path, model_inputs["fingerprint"], plans)
    _check_upstreams_ready(plan)
    return plan


def _check_upstreams_ready(plan: Plan) -> None:
    """With --only, a stage's upstreams are not rerun, so they must already be built and current."""
    will_exist = {s.name for s in plan.stages if s.action in ("run", "cached")}
    for stage in plan.stages:
        if stage.action != "run":
            continue
        for up in plan.recipe.stages[stage.name].from_:
            if up in will_exist:
                continue
            existing = Artifact.read(plan.out_dir / up)
            if existing is None:
                raise PipelineError(f"stage '{stage.name}' needs '{up}', which has not been built; run it first")
            if existing.fingerprint != plan[up].fingerprint:
                raise PipelineError(
                    f"stage '{stage.name}' needs '{up}', whose artifact is out of date (its config or inputs "
                    f"changed); run '{up}' first or drop --only"
                )


# ---------------------------------------------------------------------------------------------------------------
# Running


def run_plan(plan: Plan, keep_checkpoints: bool = False) -> dict[str, dict]:
    """Run every stage the plan marks "run"; returns each stage's metrics (cached ones read from disk)."""
    from .training import announce_deepspeed_build, distributed_state, forget_deepspeed_config

    state = distributed_state()
    if state.is_main_process:
        announce_deepspeed_build(log)
    evaluate = set(targets(plan))
    if BASE in evaluate:
        run_evaluations(plan, state, [BASE])
    results: dict[str, dict] = {}
    for stage in plan.stages:
        final = plan.out_dir / stage.name
        if stage.action == "skip":
            continue
        forget_deepspeed_config()
        if stage.action == "cached":
            if state.is_main_process:
                log.info("[%s] cached (%s)", stage.name, final)
            results[stage.name] = Artifact.read(final).metrics
        else:
            results[stage.name] = _run_stage(plan, stage, state, keep_checkpoints)
        if stage.name in evaluate:
            forget_deepspeed_config()
            run_evaluations(plan, state, [stage.name])
    state.wait_for_everyone()
    return results


def _run_stage(plan: Plan, stage: StagePlan, state, keep_checkpoints: bool) -> dict:
    from transformers import set_seed

    recipe, name = plan.recipe, stage.name
    config = recipe.stages[name]
    final = plan.out_dir / name
    # Names every rank can compute alike; the fingerprint keeps checkpoints of another config from being resumed.
    tmp = plan.out_dir / f".tmp-{name}-{stage.fingerprint[:12]}"
    work = plan.out_dir / ".work" / f"{name}-{stage.fingerprint[:12]}"
    if state.is_main_process:
        log.info("[%s] running %s stage (%s)", name, config.kind, stage.reason)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        work.mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()

    upstream = {}
    for up in config.from_:
        artifact = Artifact.read(plan.out_dir / up)
        if artifact is None:
            raise PipelineError(f"stage '{name}': upstream artifact {plan.out_dir / up} is missing")
        upstream[up] = artifact
    ctx = StageContext(
        name=name,
        config=config,
        recipe=recipe,
        out_dir=tmp,
        final_dir=final,
        work_dir=work,
        upstream=upstream,
        fingerprint=stage.fingerprint,
        base_model_path=plan.base_model_path,
        process_index=state.process_index,
        num_processes=state.num_processes,
    )
    clock = time.perf_counter()
    module = stage_module(config.kind)  # imports trl & co: timed apart from the stage's own work
    import_time = time.perf_counter() - clock
    set_seed(recipe.seed)
    started = datetime.now(timezone.utc)
    clock = time.perf_counter()
    output = module.run(ctx) or {}
    wall = time.perf_counter() - clock
    metrics = {**ctx.metrics, **output.get("metrics", {})}
    state.wait_for_everyone()

    if state.is_main_process:
        manifest = {
            "stage": name,
            "kind": config.kind,
            "produces": config.produces,
            "fingerprint": stage.fingerprint,
            "config": config.model_dump(mode="json", by_alias=True),
            "inputs": stage.inputs,
            "lineage": _lineage(upstream),
            "seed": recipe.seed,
            "world_size": state.num_processes,
            "distributed_type": _distributed_type(),
            "wall_time_s": round(wall, 3),
            "import_time_s": round(import_time, 3),
            "started_at": started.isoformat(),
            "finished_at": datetime.now(timezone.utc).isoformat(),
            "host": host(),
            "git_commit": git_commit(),
            "packages": package_versions(),
            "recipe": recipe.name,
            **{k: v for k, v in output.items() if k != "metrics"},
        }
        write_json(tmp / METRICS, metrics)
        write_json(tmp / MANIFEST, manifest)
        replace_dir(tmp, final)
        if not keep_checkpoints:
            shutil.rmtree(work, ignore_errors=True)
            if not any(work.parent.iterdir()):
                work.parent.rmdir()
        log.info("[%s] done in %.1f s -> %s", name, wall, final)
    state.wait_for_everyone()
    return metrics


def _distributed_type() -> str | None:
    """How the stage's training was distributed (NO, MULTI_GPU for DDP, DEEPSPEED, ...), as accelerate set it up for
    the stage's trainer: a launch config that asked for DeepSpeed but did not get it shows here."""
    from accelerate.state import AcceleratorState

    kind = AcceleratorState._shared_state.get("distributed_type")
    return getattr(kind, "value", None)


def _lineage(upstream: dict[str, Artifact]) -> list[dict]:
    """Every ancestor once, nearest first: stage, kind and fingerprint."""
    seen: dict[str, dict] = {}
    for name, artifact in upstream.items():
        seen.setdefault(artifact.fingerprint, {"stage": name, "kind": artifact.manifest["kind"],
                                                "fingerprint": artifact.fingerprint})
        for ancestor in artifact.manifest.get("lineage", []):
            seen.setdefault(ancestor["fingerprint"], ancestor)
    return list(seen.values())

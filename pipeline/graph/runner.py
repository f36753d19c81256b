"""The runner: runs every node the plan marks "run", on every process, and writes their artifacts.

Every node is a stage, evaluations included: the runner has no special path for any kind. Multi-process protocol
(``accelerate launch`` with N processes): every rank validates the recipe and computes the same plan; every rank
runs each stage (trainers need all ranks); only the main process creates and renames the artifact folder and writes
its manifest; barriers separate stages so no rank reads an artifact before it exists.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..artifacts.artifact import MANIFEST, METRICS, Artifact, non_finite_weights, record_files
from ..artifacts.model_card import render as model_card
from ..artifacts.outputs import StageResult, output_to_dict
from ..artifacts.policy import repoint_adapters
from ..contract.context import StageContext
from ..errors import PipelineError, TrainingDiverged, storage_error
from ..recipe.kinds import stage_module
from ..store.atomic import replace_dir, write_json
from ..store.lock import OutputLock
from ..training.distributed import current_distributed_type
from ..training.trainer import LIVE_LOG
from .eta import duration_text, expected_seconds
from .plan import STORE, Action, Plan, StagePlan
from .provenance import git_commit, host, package_versions

log = logging.getLogger("pipeline")


def run_plan(plan: Plan, keep_checkpoints: bool = False, siblings: list[Plan] = ()) -> dict[str, dict]:
    """Run every stage the plan marks "run"; returns each stage's metrics (cached ones read from disk).

    The main process holds the output folder's lock for the whole run (a second run into it refuses at once) and
    clears what dead runs left behind before anything else; the checkpoints of the ``siblings`` (the other variants
    of a sweep) are kept, so a sweep killed in any variant resumes it."""
    from ..training.distributed import (
        announce_deepspeed_build,
        distributed_state,
        forget_deepspeed_config,
        refuse_stale_build_locks,
    )

    refuse_stale_build_locks()  # once, before the first distributed_state() starts DeepSpeed's comm layer
    state = distributed_state()
    lock = OutputLock(plan.out_dir) if state.is_main_process else None
    if lock is not None:
        lock.acquire()
    try:
        if state.is_main_process:
            announce_deepspeed_build(log)
            clear_leftovers(plan, siblings)
            repoint_moved_adapters(plan)
        state.wait_for_everyone()
        results: dict[str, dict] = {}
        todo = [s for s in plan.stages if s.action is not Action.SKIP]
        expected = expected_seconds(plan) if state.is_main_process else {}
        if expected:
            announce_expected(todo, expected)
        started = time.perf_counter()
        for index, stage in enumerate(todo, start=1):
            if state.is_main_process and stage.action is Action.RUN:
                elapsed = time.perf_counter() - started
                left = [expected.get(s.name) for s in todo[index - 1:] if s.action is Action.RUN]
                eta = f", about {duration_text(sum(e.seconds for e in left))} left" if left and None not in left \
                    else ""
                log.info("[%d/%d] %s (%s): %s elapsed%s", index, len(todo), stage.name, stage.kind,
                         duration_text(elapsed), eta)
            forget_deepspeed_config()
            if stage.action is Action.CACHED:
                if state.is_main_process:
                    log.info("[%s] cached: %s", stage.name, stage.reason)
                    point_at_variant(plan, stage)
                results[stage.name] = Artifact.read(stage.folder).metrics
            else:
                results[stage.name] = _run_stage(plan, stage, state, keep_checkpoints)
        state.wait_for_everyone()
        return results
    finally:
        if lock is not None:
            lock.release()


def announce_expected(todo: list[StagePlan], expected: dict) -> None:
    """One line before the first stage: the whole run's expected time, and where the figures come from."""
    running = [s for s in todo if s.action is Action.RUN]
    known = [expected[s.name] for s in running if s.name in expected]
    if not known:
        return
    unknown = len(running) - len(known)
    sources = "earlier runs here" if all(e.measured for e in known) else \
        "the FLOP model and this CPU's matmul rate" if not any(e.measured for e in known) else \
        "earlier runs here and the FLOP model"
    rest = f" (and {unknown} stage{'s' if unknown > 1 else ''} not estimated)" if unknown else ""
    log.info("%d stage%s to run, expected about %s%s, from %s", len(running), "s" if len(running) > 1 else "",
             duration_text(sum(e.seconds for e in known)), rest, sources)


def clear_leftovers(plan: Plan, siblings: list[Plan] = ()) -> None:
    """Remove what killed runs left in the output folder: half-written artifact folders in the store (.tmp-*,
    .old-*) and work folders (checkpoints) of stages and configs neither the plan nor its siblings have. Runs under
    the folder's lock."""
    out = plan.out_dir
    if not out.is_dir():
        return
    store = out / STORE
    for leftover in [*store.glob(".tmp-*"), *store.glob(".old-*")]:
        log.info("removing %s, left by a run that did not finish", leftover)
        shutil.rmtree(leftover, ignore_errors=True)
    current = {work_dir(p, stage).name for p in [plan, *siblings] for stage in p.stages}
    work = out / ".work"
    for folder in work.glob("*") if work.is_dir() else []:
        if folder.name not in current:
            log.info("removing %s: checkpoints of a stage or config this recipe no longer has", folder)
            shutil.rmtree(folder, ignore_errors=True)


def repoint_moved_adapters(plan: Plan) -> None:
    """Adapters name their base by absolute path (what plain peft needs); after the run's folder moved, point them at
    where their base is now (every stored variant)."""
    store = plan.out_dir / STORE
    for folder in sorted(store.iterdir()) if store.is_dir() else []:
        artifact = Artifact.read(folder)
        if artifact is not None and not folder.name.startswith("."):
            for name in repoint_adapters(artifact):
                log.info("[%s] %s: base repointed to where the run now lives", folder.name, name)


def point_at_variant(plan: Plan, stage: StagePlan) -> None:
    """Make <output_dir>/<stage> name the variant this run used (a relative link, replaced atomically)."""
    link = plan.out_dir / stage.name
    tmp = link.with_name(f".link-{stage.name}")
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(stage.folder, plan.out_dir), tmp)
    os.replace(tmp, link)


def work_dir(plan: Plan, stage: StagePlan):
    """Persistent scratch (checkpoints) of one stage and fingerprint."""
    return plan.out_dir / ".work" / f"{stage.name}-{stage.fingerprint[:12]}"


def _gpu_memory_reset() -> bool:
    """Start counting this stage's peak GPU memory (False without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return False
    torch.cuda.reset_peak_memory_stats()
    return True


def _gpu_memory_peak() -> float:
    """Most GPU memory this process's tensors held during the stage, in MiB (torch's allocator: what the stage
    asked for, not the driver's reservation)."""
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def _run_stage(plan: Plan, stage: StagePlan, state, keep_checkpoints: bool) -> dict:
    """One stage, in steps every rank takes together: prepare its folders, build its context, execute it; then, on
    the main process, write its manifest and commit it (into the store, the stage link pointed at it)."""
    _prepare_folders(plan, stage, state)
    ctx = _context(plan, stage, state)
    execution = _execute(plan, stage, ctx, state)
    if state.is_main_process:
        manifest = _manifest(plan, stage, ctx, execution, state)
        _commit(plan, stage, execution.result, manifest)
        if not keep_checkpoints:
            _drop_checkpoints(work_dir(plan, stage))
        log.info("[%s] done in %.1f s -> %s", stage.name, execution.wall, stage.folder)
    state.wait_for_everyone()
    return execution.result.metrics


def _tmp_dir(stage: StagePlan) -> Path:
    """Where the stage writes its artifact before the commit renames it into place. Every rank computes the same
    name."""
    return stage.folder.with_name(f".tmp-{stage.folder.name}")


def _prepare_folders(plan: Plan, stage: StagePlan, state) -> None:
    """An empty temporary folder for the artifact, and the work folder of the checkpoints: kept to resume from, or
    emptied for a forced stage (the fingerprint in its name keeps another config's checkpoints from being resumed).
    """
    if state.is_main_process:
        tmp, work = _tmp_dir(stage), work_dir(plan, stage)
        log.info("[%s] running %s stage (%s)", stage.name, stage.kind, stage.reason)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if stage.fresh and work.exists():
            log.info("[%s] --force: discarding the checkpoints in %s", stage.name, work)
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()


def _context(plan: Plan, stage: StagePlan, state) -> StageContext:
    """What the stage receives: its config, the upstream variants of today's settings, where to write."""
    config = plan.recipe.stages[stage.name]
    upstream = {}
    for up in config.from_:
        artifact = Artifact.read(plan[up].folder)  # the variant of today's settings, whatever the link names
        if artifact is None:
            raise PipelineError(f"stage '{stage.name}': upstream artifact {plan[up].folder} is missing")
        upstream[up] = artifact
    return StageContext(
        name=stage.name,
        config=config,
        recipe=plan.recipe,
        out_dir=_tmp_dir(stage),
        final_dir=stage.folder,
        work_dir=work_dir(plan, stage),
        upstream=upstream,
        fingerprint=stage.fingerprint,
        base_model_path=plan.base_model_path,
        output_dir=plan.out_dir,
        process_index=state.process_index,
        num_processes=state.num_processes,
    )


@dataclass
class _Execution:
    """What running a stage's code gave: its result, and the timings and GPU accounting the manifest records."""

    result: StageResult
    started: datetime
    wall: float
    import_time: float
    gpu: bool
    """Whether the peak GPU memory was counted (CUDA present)."""


def _execute(plan: Plan, stage: StagePlan, ctx: StageContext, state) -> _Execution:
    """Import the kind's module, seed, run the stage and check what it returned. A failure leaves nothing half-made
    (the checkpoints in the work folder stay); storage failures are named."""
    from transformers import set_seed

    config = ctx.config
    clock = time.perf_counter()
    module = stage_module(config.kind)  # imports trl & co: timed apart from the stage's own work
    import_time = time.perf_counter() - clock
    set_seed(ctx.seed)
    gpu = _gpu_memory_reset()
    started = datetime.now(timezone.utc)
    clock = time.perf_counter()
    try:
        result = module.run(ctx)
    except BaseException as exc:
        if state.is_main_process:
            shutil.rmtree(_tmp_dir(stage), ignore_errors=True)
        if (explained := storage_error(exc, stage.name, plan.out_dir)) is not None:
            raise explained from None
        raise
    wall = time.perf_counter() - clock
    if not isinstance(result, StageResult) or result.output.produces != config.produces:
        got = type(result).__name__ if not isinstance(result, StageResult) else f"a {result.output.produces} output"
        raise PipelineError(f"stages/{config.kind}: run() must return a StageResult with a {config.produces} "
                            f"output; it returned {got}")
    state.wait_for_everyone()
    return _Execution(result, started, wall, import_time, gpu)


def _manifest(plan: Plan, stage: StagePlan, ctx: StageContext, execution: _Execution, state) -> dict:
    """The manifest of a finished stage: its output, fingerprint and lineage, where and how it ran (files are
    recorded at the commit)."""
    recipe, config = plan.recipe, ctx.config
    return {
        "stage": stage.name,
        "kind": config.kind,
        "produces": config.produces,
        "output": output_to_dict(execution.result.output),
        "fingerprint": stage.fingerprint,
        "fingerprint_parts": stage.parts,
        "config": config.model_dump(mode="json", by_alias=True),
        "inputs": stage.inputs,
        "lineage": _lineage(ctx.upstream),
        "seed": ctx.seed,
        "world_size": state.num_processes,
        "distributed_type": current_distributed_type(),
        "device": str(state.device),
        "dtype": recipe.model.run_dtype,
        **({"peak_gpu_memory_mib": _gpu_memory_peak()} if execution.gpu else {}),
        "wall_time_s": round(execution.wall, 3),
        "import_time_s": round(execution.import_time, 3),
        "started_at": execution.started.isoformat(),
        "finished_at": datetime.now(timezone.utc).isoformat(),
        "host": host(),
        "git_commit": git_commit(),
        "packages": package_versions(),
        "recipe": recipe.name,
        "chat_template": chat_template_used(_tmp_dir(stage), recipe),
        "description": (type(config).__doc__ or "").strip().split("\n\n")[0],
        "upstream": {up: artifact.produces for up, artifact in ctx.upstream.items()},
    }


def _commit(plan: Plan, stage: StagePlan, result: StageResult, manifest: dict) -> None:
    """Finish the artifact (metrics, model card, file record, manifest), move it into the store at once and point
    the stage link at it. A diverged stage is refused; on any failure nothing is committed. Main process only."""
    tmp, work = _tmp_dir(stage), work_dir(plan, stage)
    try:
        refuse_non_finite(stage.name, tmp, result.metrics)
        if (work / LIVE_LOG).is_file():
            shutil.copy2(work / LIVE_LOG, tmp / LIVE_LOG)
        write_json(tmp / METRICS, result.metrics)
        (tmp / "README.md").write_text(model_card(tmp, manifest, result.metrics))
        manifest["files"] = record_files(tmp)
        write_json(tmp / MANIFEST, manifest)
        replace_dir(tmp, stage.folder)
        point_at_variant(plan, stage)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if (explained := storage_error(exc, stage.name, plan.out_dir)) is not None:
            raise explained from None
        raise


def _drop_checkpoints(work: Path) -> None:
    """A committed stage needs no checkpoints: remove its work folder, and .work itself once empty."""
    shutil.rmtree(work, ignore_errors=True)
    if work.parent.is_dir() and not any(work.parent.iterdir()):
        work.parent.rmdir()


def chat_template_used(folder, recipe) -> dict | None:
    """The chat template the stage rendered conversations with: the recipe's, or the one its tokenizer carries."""
    import hashlib
    import json

    text = recipe.model.chat_template
    origin = "recipe (model.chat_template)"
    if text is None:
        origin = "the model's tokenizer"
        if (folder / "chat_template.jinja").is_file():
            text = (folder / "chat_template.jinja").read_text()
        elif (folder / "tokenizer_config.json").is_file():
            text = json.loads((folder / "tokenizer_config.json").read_text()).get("chat_template")
    if not text:
        return None
    return {"from": origin, "sha256": hashlib.sha256(text.encode()).hexdigest(), "text": text}


def refuse_non_finite(name: str, folder, metrics: dict) -> None:
    """Never commit a diverged stage: non-finite losses or weights fail it, naming what."""
    for key, value in metrics.items():
        if "loss" in key and isinstance(value, float) and not math.isfinite(value):
            raise TrainingDiverged(f"stage '{name}': {key} is {value}; nothing was committed")
    if (bad := non_finite_weights(folder)) is not None:
        raise TrainingDiverged(f"stage '{name}': the weights it wrote hold NaN or inf ({bad}); nothing was committed")


def _lineage(upstream: dict[str, Artifact]) -> list[dict]:
    """Every ancestor once, nearest first: stage, kind and fingerprint."""
    seen: dict[str, dict] = {}
    for name, artifact in upstream.items():
        seen.setdefault(artifact.fingerprint, {"stage": name, "kind": artifact.kind,
                                                "fingerprint": artifact.fingerprint})
        for ancestor in artifact.manifest.get("lineage", []):
            seen.setdefault(ancestor["fingerprint"], ancestor)
    return list(seen.values())

"""Expected seconds of the stages a plan will run: a stage stored here before with the same settings (a rerun after a
code change, an upgrade, a --force) takes about what it took then; any other is estimated from its FLOPs and this
CPU's matmul rate (pipeline/models/duration.py). ``plan`` prints them; ``run`` counts its ETA down with them."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from .plan import STORE, Action, Plan

log = logging.getLogger("pipeline")


@dataclass(frozen=True)
class Expected:
    seconds: float
    measured: bool
    """True where the figure is an earlier run's wall time here, False where it is the FLOP model's estimate."""


def stored_times(plan: Plan) -> dict[tuple[str, str], float]:
    """Wall time (with imports) of every stored stage, by (stage name, digest of its config): what it took here."""
    from .plan import digest

    store = plan.out_dir / STORE
    times: dict[tuple[str, str], float] = {}
    for manifest in sorted(store.glob("*/manifest.json"), key=lambda p: p.stat().st_mtime) if store.is_dir() else []:
        try:
            data = json.loads(manifest.read_text())
            key = (data["stage"], digest(data["fingerprint_parts"]["config"]))
            times[key] = float(data["wall_time_s"]) + float(data.get("import_time_s", 0))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return times


def expected_seconds(plan: Plan, rate: float | None = None) -> dict[str, Expected]:
    """Expected seconds of each stage the plan runs; stages with no measured time and no model (a GPU run, an
    epochs-based stage) are left out. ``rate``: the matmul FLOP/s to estimate with (default: probe this CPU)."""
    from .plan import digest

    todo = [s for s in plan.stages if s.action is Action.RUN]
    measured = stored_times(plan)
    expected: dict[str, Expected] = {}
    for stage in todo:
        seconds = measured.get((stage.name, digest(stage.parts.get("config"))))
        if seconds is not None:
            expected[stage.name] = Expected(seconds, True)
    missing = [s for s in todo if s.name not in expected]
    if missing:
        rate = rate if rate is not None else probe_rate(plan)
        if rate:
            for stage, seconds in estimated(plan, missing, rate).items():
                expected[stage] = Expected(seconds, False)
    return expected


def probe_rate(plan: Plan) -> float | None:
    """This CPU's matmul rate in the run's dtype; None on a GPU machine, which the estimates were not fitted to."""
    import torch

    from ..models.duration import matmul_rate

    if torch.cuda.is_available():
        return None
    return matmul_rate(getattr(torch, plan.recipe.model.run_dtype))


def estimated(plan: Plan, stages, rate: float) -> dict[str, float]:
    from transformers import AutoConfig

    from ..models import duration, flops

    try:
        shape = flops.Shape.of(AutoConfig.from_pretrained(plan.base_model_path))
    except (OSError, ValueError, AttributeError) as exc:  # not a Llama-shaped decoder: no FLOP model
        log.debug("no time estimate: %s", exc)
        return {}
    recipe = plan.recipe
    seconds = {}
    for stage in stages:
        try:
            figure = duration.estimate(recipe.stages[stage.name], shape, rate, recipe.stages).seconds
        except ValueError as exc:  # LoRA on modules the FLOP model does not know
            log.debug("no time estimate for %s: %s", stage.name, exc)
            continue
        if figure is not None:
            seconds[stage.name] = figure
    return seconds


def duration_text(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"

"""Gold evaluation of policy stages, run by the runner when the recipe has an ``evaluate:`` section.

Each policy stage's ``eval.json`` (and ``eval_samples.jsonl``) is written into its artifact folder; the base model's
goes to ``<output_dir>/base/``. An evaluation is cached apart from training: its fingerprint covers the evaluated
model's fingerprint, the evaluate settings and the prompts, so editing ``evaluate:`` re-evaluates without retraining.
The reference for KL is the policy the stage started from (its upstream policy, or the base model).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .artifacts import Artifact
from .atomic import write_json
from .context import PolicySource, artifact_source, base_source

log = logging.getLogger("pipeline")

BASE = "base"
"""Folder (and reserved stage name) of the base model's evaluation: the baseline row of every report."""
EVAL_FILE = "eval.json"
SAMPLES_FILE = "eval_samples.jsonl"


def eval_prompts(settings) -> tuple[list[str], str]:
    """The first ``settings.n`` prompts of the evaluation card, and their sha256."""
    from .cards import load_card, materialise, rows_sha256

    card = load_card(settings.prompts)
    rows = materialise(card, settings.prompts)[: settings.n]
    return [row["prompt"] for row in rows], rows_sha256(rows)


def targets(plan) -> list[str]:
    """What the recipe asks to evaluate, in run order: the base model, then the policy stages."""
    settings = plan.recipe.evaluate
    if settings is None:
        return []
    chosen = []
    # The baseline belongs to runs that start from the base model (not to `--only dpo`, say).
    starts_from_base = any(
        stage.action != "skip"
        and not any(plan.recipe.stages[up].produces == "policy" for up in plan.recipe.stages[stage.name].from_)
        for stage in plan.stages
    )
    if settings.baseline and starts_from_base:
        chosen.append(BASE)
    for stage in plan.stages:
        config = plan.recipe.stages[stage.name]
        wanted = settings.stages is None or stage.name in settings.stages
        if stage.action != "skip" and config.produces == "policy" and wanted:
            chosen.append(stage.name)
    return chosen


def _eval_fingerprint(model_fingerprint: str, settings, prompts_sha: str) -> str:
    from .runner import _hash

    return _hash({"model": model_fingerprint, "settings": settings.model_dump(mode="json"), "prompts": prompts_sha})


def _sources(plan, target: str) -> tuple[PolicySource, PolicySource | None, str, Path]:
    """(policy, reference or None when they are the same, model fingerprint, output folder) for a target."""
    base = base_source(plan.recipe, plan.base_model_path)
    if target == BASE:
        return base, None, plan.model_fingerprint, plan.out_dir / BASE
    stage = plan[target]
    config = plan.recipe.stages[target]
    policy = artifact_source(plan.recipe, plan.out_dir / target)
    reference = base
    for up in config.from_:
        if plan.recipe.stages[up].produces == "policy":
            reference = artifact_source(plan.recipe, plan.out_dir / up)
    return policy, reference, stage.fingerprint, plan.out_dir / target


def run_evaluations(plan, state, chosen: list[str]) -> None:
    """Evaluate each target whose eval.json is missing or stale. The main process evaluates; the others wait."""
    settings = plan.recipe.evaluate
    if state.is_main_process:
        prompts, prompts_sha = eval_prompts(settings)
        for target in chosen:
            policy, reference, model_fingerprint, folder = _sources(plan, target)
            fingerprint = _eval_fingerprint(model_fingerprint, settings, prompts_sha)
            existing = _read(folder / EVAL_FILE)
            if existing and existing.get("fingerprint") == fingerprint:
                log.info("[%s] evaluation cached", target)
                continue
            log.info("[%s] gold evaluation on %d prompts (judge %s)", target, len(prompts), settings.judge)
            metrics, samples = evaluate_sources(policy, reference, prompts, settings)
            folder.mkdir(parents=True, exist_ok=True)
            _write_samples(folder / SAMPLES_FILE, samples)
            write_json(folder / EVAL_FILE, {"target": target, "fingerprint": fingerprint, **metrics})
            log.info("[%s] gold_mean %.3f [%.3f, %.3f], kl %.3f", target, metrics["gold_mean"],
                     *metrics["gold_ci95"], metrics["kl_mean"])
    state.wait_for_everyone()


def evaluate_sources(policy: PolicySource, reference: PolicySource | None, prompts: list[str], settings):
    """Load the policy (and a separate reference, if any) and run the evaluation."""
    from .evaluation import evaluate

    tokenizer = policy.tokenizer()
    policy_model = policy.load()
    reference_model = reference.load() if reference is not None else None
    return evaluate(policy_model, reference_model, tokenizer, prompts, settings)


def _write_samples(path: Path, samples: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
    tmp.replace(path)


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


# ---------------------------------------------------------------------------------------------------------------
# Report


def report_rows(plan) -> list[dict]:
    """One row per evaluated target that has an eval.json, base first."""
    rows = []
    for target in [BASE, *(s.name for s in plan.stages)]:
        folder = plan.out_dir / target
        data = _read(folder / EVAL_FILE)
        if data is None:
            continue
        artifact = Artifact.read(folder)
        rows.append({"target": target, "kind": artifact.manifest["kind"] if artifact else "base model", **data})
    return rows


def format_report(rows: list[dict]) -> str:
    if not rows:
        return ""
    judge, threshold = rows[0].get("judge", "?"), rows[0].get("threshold", "?")
    lines = [
        f"gold evaluation (judge {judge}, n={rows[0].get('n')}; KL to each stage's starting policy)",
        f"{'target':<14}{'kind':<12}{'gold mean':>10}  {'95% CI':<18}{f'>{threshold}':>7}{'KL':>8}"
        f"{'dist-1':>8}{'dist-2':>8}{'len':>6}",
    ]
    for r in rows:
        lo, hi = r["gold_ci95"]
        lines.append(
            f"{r['target']:<14}{r['kind']:<12}{r['gold_mean']:>10.3f}  [{lo:.3f}, {hi:.3f}]{'':<3}"
            f"{r['gold_share_above']:>7.2f}{r['kl_mean']:>8.3f}{r['distinct_1']:>8.3f}{r['distinct_2']:>8.3f}"
            f"{r['mean_length']:>6.1f}"
        )
    return "\n".join(lines)

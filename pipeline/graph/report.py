"""The gold-evaluation table of a run: one row per evaluation node that has run, base model first."""

from __future__ import annotations

import json
from pathlib import Path

from ..artifacts.artifact import Artifact
from ..artifacts.outputs import EvaluationOutput
from .plan import Plan


def report_rows(plan: Plan) -> list[dict]:
    """One row per evaluation node of the plan whose artifact exists: target, the target's kind, eval.json."""
    rows = []
    for stage in plan.stages:
        artifact = Artifact.read(shown_folder(plan, stage))
        if artifact is None or not isinstance(artifact.output, EvaluationOutput):
            continue
        output = artifact.output
        try:
            data = json.loads((artifact.path / output.eval_file).read_text())
        except (OSError, json.JSONDecodeError):
            continue
        target = output.target
        kind = plan.recipe.stages[target].kind if target in plan.recipe.stages else "base model"
        rows.append({"target": target, "kind": kind, "node": stage.name, **data,
                     "dtype": artifact.manifest.get("dtype")})
    rows.sort(key=lambda r: r["target"] != "base")
    return rows


def shown_folder(plan: Plan, stage) -> Path:
    """The variant a report shows for a stage: the one of the recipe's settings, or else the one run last (what
    <output_dir>/<stage> names; after a code change the recipe's own is not built yet)."""
    return stage.folder if Artifact.read(stage.folder) is not None else plan.out_dir / stage.name


def share_text(value) -> str:
    """A share as a whole percentage, "-" where it was not measured (evaluations written before it existed)."""
    return "-" if value is None else f"{value:.0%}"


def format_report(rows: list[dict]) -> str:
    if not rows:
        return ""
    judge, threshold = rows[0].get("judge", "?"), rows[0].get("threshold", "?")
    lines = [
        f"gold evaluation (judge {judge}, n={rows[0].get('n')}; KL to each stage's starting policy)",
        f"{'target':<14}{'kind':<12}{'gold mean':>10}  {'95% CI':<18}{f'>{threshold}':>7}{'KL':>8}"
        f"{'dist-1':>8}{'dist-2':>8}{'repeat':>8}{'len':>6}  dtype",
    ]
    for r in rows:
        lo, hi = r["gold_ci95"]
        lines.append(
            f"{r['target']:<14}{r['kind']:<12}{r['gold_mean']:>10.3f}  [{lo:.3f}, {hi:.3f}]{'':<3}"
            f"{r['gold_share_above']:>7.2f}{r['kl_mean']:>8.3f}{r['distinct_1']:>8.3f}{r['distinct_2']:>8.3f}"
            f"{share_text(r.get('repetition_share')):>8}{r['mean_length']:>6.1f}  {r.get('dtype') or '-'}"
        )
    panel = [name for name in rows[0].get("judges", {})]
    for name in panel:  # the other judges of evaluate.judges, one line each
        lines.append(f"judge {name}: " + "; ".join(
            f"{r['target']} {r['judges'][name]['mean']:.3f} [{r['judges'][name]['ci95'][0]:.3f}, "
            f"{r['judges'][name]['ci95'][1]:.3f}]" for r in rows if name in r.get("judges", {})))
    return "\n".join(lines)

"""A paired comparison of two variants on the same held-out prompts: is B better than A, or is it noise?

Each side is one evaluation or several (the same variant trained with different seeds). Every evaluation must hold
the same prompts in the same order, so a prompt's score under A and under B form a pair: the difference of means
then varies far less than two separate intervals suggest. The 95% interval of B - A is a bootstrap that resamples
the seeds of each side (where there are several: run-to-run variation) and the prompts, the same prompts for both
sides (the pairing).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import PipelineError

SAMPLES_FILE = "eval_samples.jsonl"

METRICS = (("gold", "gold"), ("kl", "kl"), ("repeat", "repeats"), ("length", "length"))
"""(row name, sample field) of what is compared."""


@dataclass(frozen=True)
class Evaluation:
    """One evaluation's samples (an eval node's folder)."""

    folder: Path
    target: str
    """The stage it evaluated (from its eval.json), or the folder's name."""
    prompts: list[str]
    values: dict[str, list[float]]
    """Per METRICS field, one value a prompt."""


def load_evaluation(folder: str | Path) -> Evaluation:
    """The samples of the evaluation in ``folder`` (which holds eval_samples.jsonl)."""
    folder = Path(folder)
    path = folder / SAMPLES_FILE
    if not path.is_file():
        raise PipelineError(f"{folder}: no {SAMPLES_FILE}; name an evaluation's folder (eval-STAGE, or a stored "
                            "variant under .store/)")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            row = json.loads(line)
            rows.append((row["prompt"], {field: float(row[field]) for _, field in METRICS}))
        except (ValueError, KeyError, TypeError) as exc:
            raise PipelineError(f"{path}, line {number}: not an evaluation sample ({exc})") from None
    if not rows:
        raise PipelineError(f"{path}: no samples")
    target = folder.name
    summary = folder / "eval.json"
    if summary.is_file():
        target = json.loads(summary.read_text()).get("target", target)
    return Evaluation(folder, target, [p for p, _ in rows],
                      {field: [values[field] for _, values in rows] for _, field in METRICS})


def paired_comparison(a: list[Evaluation], b: list[Evaluation], resamples: int = 2000, seed: int = 0) -> dict:
    """B - A for every metric: {n, seeds: [len(a), len(b)], metrics: {name: {a, b, difference, ci95,
    b_higher}}}. ``b_higher``: the share of prompts whose mean over B's evaluations is above A's (ties count half)."""
    import numpy as np

    if not a or not b:
        raise PipelineError("a comparison needs at least one evaluation on each side")
    _same_prompts([*a, *b])
    if resamples < 1:
        raise PipelineError("resamples must be at least 1")
    n = len(a[0].prompts)
    rng = np.random.default_rng(seed)
    prompts = rng.integers(0, n, size=(resamples, n))
    seeds_a = rng.integers(0, len(a), size=(resamples, len(a)))
    seeds_b = rng.integers(0, len(b), size=(resamples, len(b)))
    metrics = {}
    for name, field in METRICS:
        side_a = np.array([e.values[field] for e in a])  # [seeds, prompts]
        side_b = np.array([e.values[field] for e in b])
        boot = _resampled(side_b, prompts, seeds_b) - _resampled(side_a, prompts, seeds_a)
        lo, hi = np.percentile(boot, [2.5, 97.5])
        per_prompt = side_b.mean(0) - side_a.mean(0)
        metrics[name] = {"a": float(side_a.mean()), "b": float(side_b.mean()),
                         "difference": float(side_b.mean() - side_a.mean()), "ci95": [float(lo), float(hi)],
                         "b_higher": float(((per_prompt > 0) + 0.5 * (per_prompt == 0)).mean())}
    return {"n": n, "seeds": [len(a), len(b)], "resamples": resamples, "metrics": metrics}


def _resampled(side, prompts, seeds):
    """The mean of each resample: its seeds (rows of ``side``, with replacement) over its prompts."""
    import numpy as np

    per_seed = side[:, prompts].mean(-1)  # [seeds, resamples]: each seed's mean over each resample's prompts
    return np.take_along_axis(per_seed.T, seeds, axis=1).mean(1)


def _same_prompts(evaluations: list[Evaluation]) -> None:
    first = evaluations[0]
    for other in evaluations[1:]:
        if other.prompts == first.prompts:
            continue
        if len(other.prompts) != len(first.prompts):
            raise PipelineError(f"{other.folder} holds {len(other.prompts)} prompts, {first.folder} "
                                f"{len(first.prompts)}: a paired comparison needs the same prompts (evaluate.n)")
        row = next(i for i, (p, q) in enumerate(zip(first.prompts, other.prompts)) if p != q)
        raise PipelineError(f"{other.folder}, sample {row + 1}: prompt {other.prompts[row][:60]!r} where "
                            f"{first.folder} has {first.prompts[row][:60]!r}: a paired comparison needs the same "
                            "prompts in the same order")


def format_comparison(result: dict, a: list[Evaluation], b: list[Evaluation]) -> str:
    def side(evaluations):
        return ", ".join(f"{e.target} ({e.folder})" for e in evaluations)

    seeds = result["seeds"]
    over = "the prompts" if seeds == [1, 1] else "each side's seeds and the prompts"
    lines = [f"A: {side(a)}", f"B: {side(b)}",
             f"paired on {result['n']} prompts; 95% CI of B - A: bootstrap over {over} ({result['resamples']} "
             "resamples)",
             f"{'metric':<8}{'A':>9}{'B':>9}{'B - A':>9}  95% CI"]
    for name, m in result["metrics"].items():
        if name == "repeat":
            cells = (f"{m['a']:.0%}", f"{m['b']:.0%}", f"{m['difference']:+.0%}",
                     f"[{m['ci95'][0]:+.0%}, {m['ci95'][1]:+.0%}]")
        else:
            cells = (f"{m['a']:.3f}", f"{m['b']:.3f}", f"{m['difference']:+.3f}",
                     f"[{m['ci95'][0]:+.3f}, {m['ci95'][1]:+.3f}]")
        lines.append(f"{name:<8}{cells[0]:>9}{cells[1]:>9}{cells[2]:>9}  {cells[3]}")
    gold = result["metrics"]["gold"]
    verdict = "B scores higher" if gold["ci95"][0] > 0 else "B scores lower" if gold["ci95"][1] < 0 else \
        "no difference at this precision (the interval includes 0)"
    lines.append(f"gold: {verdict}; B is above A on {gold['b_higher']:.0%} of the prompts (ties count half)")
    return "\n".join(lines)

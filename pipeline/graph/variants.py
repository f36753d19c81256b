"""The store of variants: every setting a stage ran with stays in <output_dir>/.store/<stage>-<fingerprint[:12]>/.
``runs`` lists them (what differs from the recipe, key metrics, date, size); ``gc`` removes the ones no recipe names.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..artifacts.artifact import Artifact
from ..artifacts.outputs import EvaluationOutput
from ..contract.context import BASES
from .plan import STORE, Plan, flatten_settings, why_changed

SHOWN_METRICS = (("gold_mean", "gold"), ("kl_mean", "KL"), ("repetition_share", "repeat"),
                 ("eval_accuracy", "held-out acc"), ("eval_rewards/accuracies", "held-out acc"),
                 ("eval_loss", "held-out loss"), ("score_last", "score"), ("kl_last", "KL"), ("pairs", "pairs"))
"""The metrics `runs` shows, where a stage has them, with their short names (the first of a name wins)."""


@dataclass
class Variant:
    stage: str
    folder: Path
    artifact: Artifact
    size: int
    current: bool
    """The stage link names it (the variant of the settings last run)."""

    @property
    def fingerprint(self) -> str:
        return self.artifact.fingerprint


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file() and not p.is_symlink())


def variants(out_dir: Path) -> list[Variant]:
    """Every complete stored variant, by stage then date."""
    out_dir = Path(out_dir)
    store = out_dir / STORE
    found = []
    for folder in sorted(store.iterdir()) if store.is_dir() else []:
        if folder.name.startswith("."):
            continue
        artifact = Artifact.read(folder)
        if artifact is None:
            continue
        stage = artifact.manifest.get("stage", folder.name.rsplit("-", 1)[0])
        link = out_dir / stage
        current = link.is_symlink() and link.resolve() == folder.resolve()
        found.append(Variant(stage, folder, artifact, folder_size(folder), current))
    return sorted(found, key=lambda v: (v.stage, str(v.artifact.manifest.get("finished_at", ""))))


def differences(variant: Variant, plan: Plan | None) -> str:
    """How a variant differs from what the recipe asks today ("same" when it is what the recipe would use)."""
    if plan is None or variant.stage not in plan.recipe.stages:
        return "-" if plan is None else "not in the recipe"
    wanted = plan[variant.stage]
    if wanted.fingerprint == variant.fingerprint:
        return "same"
    reason = why_changed(variant.stage, wanted.parts, variant.artifact.manifest.get("fingerprint_parts") or {})
    return reason.replace(f"stages.{variant.stage}.", "")


def metrics_text(metrics: dict) -> str:
    shown, names = [], set()
    for key, name in SHOWN_METRICS:
        value = metrics.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and name not in names:
            names.add(name)
            shown.append(f"{name} {value:.0%}" if key == "repetition_share" else
                         f"{name} {value:.3g}" if isinstance(value, float) else f"{name} {value}")
    return ", ".join(shown) or "-"


def differing_keys(flat_settings: list[dict]) -> list[str]:
    """The keys, sorted, whose values are not the same across these flattened settings (a key one lacks differs)."""
    return sorted({key for flat in flat_settings for key in flat
                   if len({repr(other.get(key)) for other in flat_settings}) > 1})


def distinguishing_settings(rows: list[Variant]) -> dict[Path, str]:
    """For each stage with several variants, the settings that tell them apart ("beta 0.3"); for a variant whose
    settings are its siblings' (an evaluation of another upstream variant), the upstream variants it was made from."""
    shown: dict[Path, str] = {}
    for stage in {v.stage for v in rows}:
        mine = [v for v in rows if v.stage == stage]
        if len(mine) < 2:
            continue
        flat = {v.folder: flatten_settings(v.artifact.manifest.get("config") or {}) for v in mine}
        keys = differing_keys(list(flat.values()))
        for v in mine:
            parts = [f"{key} {flat[v.folder].get(key, '(unset)')}" for key in keys[:3]]
            if not parts:
                upstream = (v.artifact.manifest.get("inputs") or {}).get("upstream") or {}
                parts = [f"of {name} {fp[:12]}" for name, fp in upstream.items()]
            shown[v.folder] = ", ".join(parts)
    return shown


SEED_FREE_PARTS = ("seed",)
"""Fingerprint parts that may differ inside a group of seeds: the recipe's seed (the stage's own is in its config)."""


def seed_free_parts(manifest: dict) -> dict:
    """What must be the same for two runs to differ in their seed alone: every fingerprint part (settings with data
    files by content, upstream, base model, code, libraries) but the seeds; the settings alone for a manifest
    written before fingerprint parts were kept."""
    parts = manifest.get("fingerprint_parts")
    if not isinstance(parts, dict):
        parts = {"config": manifest.get("config") or {}}
    parts = {name: value for name, value in parts.items() if name not in SEED_FREE_PARTS}
    if isinstance(parts.get("config"), dict):
        parts["config"] = {key: value for key, value in parts["config"].items() if key != "seed"}
    return parts


def seed_groups(rows: list[Variant]) -> list[dict]:
    """Evaluations of stage variants that differ in their seed alone (the same settings, upstream, code and libraries
    otherwise, and the same evaluation settings), with what each seed's evaluation measured: {evaluation, target,
    parts, commit, seeds, metrics: {name: [value per seed]}}, groups of two or more."""
    import json

    by_fingerprint = {v.fingerprint: v for v in rows}
    groups: dict[str, dict] = {}
    for evaluation in rows:
        if not isinstance(evaluation.artifact.output, EvaluationOutput):
            continue
        upstream = (evaluation.artifact.manifest.get("inputs") or {}).get("upstream") or {}
        if len(upstream) != 1:
            continue
        (target, fingerprint), = upstream.items()
        evaluated = by_fingerprint.get(fingerprint)
        if evaluated is None:
            continue
        parts = seed_free_parts(evaluated.artifact.manifest)
        key = json.dumps([evaluation.stage, target, parts, seed_free_parts(evaluation.artifact.manifest).get("config")],
                         sort_keys=True, default=str)
        group = groups.setdefault(key, {"evaluation": evaluation.stage, "target": target, "parts": parts,
                                        "commit": evaluated.artifact.manifest.get("git_commit"), "seeds": [],
                                        "metrics": {}})
        group["seeds"].append(evaluated.artifact.manifest.get("seed"))
        for name in ("gold_mean", "kl_mean", "repetition_share"):
            group["metrics"].setdefault(name, []).append(evaluation.artifact.metrics.get(name))
    return [g for g in groups.values() if len(g["seeds"]) >= 2 and len(set(map(str, g["seeds"]))) == len(g["seeds"])]


def group_labels(groups: list[dict]) -> list[str]:
    """For groups of seeds of the same evaluation and target, what tells them apart ("kl.target 6.0", "code at
    064532a", "upstream reward 5dde39073e8a"); empty for a group alone of its kind."""
    labels = [""] * len(groups)
    for i, group in enumerate(groups):
        siblings = [g for g in groups if (g["evaluation"], g["target"]) == (group["evaluation"], group["target"])]
        if len(siblings) < 2:
            continue
        differing = [name for name in group["parts"] if any(g["parts"].get(name) != group["parts"][name]
                                                             for g in siblings)]
        shown = []
        for name in differing:
            if name == "config":
                mine = flatten_settings(group["parts"]["config"])
                keys = differing_keys([flatten_settings(g["parts"]["config"]) for g in siblings])
                shown += [f"{key} {mine.get(key, '(unset)')}" for key in keys[:3]]
            elif name == "upstream" and isinstance(group["parts"][name], dict):
                shown += [f"upstream {stage} {fp[:12]}" for stage, fp in group["parts"][name].items()
                          if any((g["parts"].get(name) or {}).get(stage) != fp for g in siblings)]
            elif name == "code":
                shown.append(f"code at {group['commit'][:7]}" if group.get("commit") else "code")
            else:
                shown.append(f"{name} differs")
        labels[i] = ", ".join(shown)
    return labels


def seed_lines(rows: list[Variant]) -> list[str]:
    """One line per group of seeds (``seed_groups``): the mean of each metric and its 95% interval across seeds,
    with what tells the group from others of the same stage."""
    from ..evaluation.metrics import seed_interval

    lines = []
    groups = seed_groups(rows)
    for group, label in zip(groups, group_labels(groups)):
        shown = []
        for name, label_of_metric in (("gold_mean", "gold"), ("kl_mean", "KL"), ("repetition_share", "repeat")):
            values = [v for v in group["metrics"][name] if isinstance(v, (int, float))]
            if len(values) == len(group["seeds"]):
                mean, (lo, hi) = seed_interval(values)
                if name == "repetition_share":  # a share: the interval stops at 0 and 1
                    shown.append(f"{label_of_metric} {mean:.0%} [{max(lo, 0):.0%}, {min(hi, 1):.0%}]")
                else:
                    shown.append(f"{label_of_metric} {mean:.3f} [{lo:.3f}, {hi:.3f}] (from {min(values):.3f} to "
                                 f"{max(values):.3f})")
        seeds = ", ".join(str(s) for s in sorted(group["seeds"], key=str))
        which = f" ({label})" if label else ""
        lines.append(f"{group['evaluation']} of {group['target']}{which} at {len(group['seeds'])} seeds ({seeds}): "
                     + "; ".join(shown))
    return lines


def describe_variants(out_dir: Path, plan: Plan | None = None) -> str:
    rows = variants(out_dir)
    if not rows:
        return f"no stored variants in {out_dir}"
    settings = distinguishing_settings(rows)
    table = [(v.stage, v.fingerprint[:12], "*" if v.current else "",
              str(v.artifact.manifest.get("finished_at", "?"))[:16].replace("T", " "), size_text(v.size),
              metrics_text(v.artifact.metrics), settings.get(v.folder, ""), differences(v, plan)) for v in rows]
    header = ("stage", "variant", "", "finished", "size", "metrics", "settings", "vs the recipe")
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(len(header) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths)) + "  " + row[-1]
             for row in [header, *table]]
    lines.insert(1, "-" * min(160, max(len(line) for line in lines)))
    total = sum(v.size for v in rows)
    bases = folder_size(Path(out_dir) / BASES) if (Path(out_dir) / BASES).is_dir() else 0
    work = folder_size(Path(out_dir) / ".work") if (Path(out_dir) / ".work").is_dir() else 0
    seeds = seed_lines(rows)
    if seeds:
        lines += ["", "across seeds (mean and 95% t-interval over the seeds; the seeds' lowest and highest value in "
                      "parentheses):",
                  *(f"  {line}" for line in seeds)]
    lines += ["", f"* the variant {out_dir}/<stage> names; settings: what tells a stage's variants apart; "
                  "vs the recipe: same, or why the recipe as written would not use it.",
              f"{len(rows)} variants, {size_text(total)}; merged bases {size_text(bases)}; checkpoints "
              f"{size_text(work)}"]
    return "\n".join(lines)


def size_text(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def garbage(out_dir: Path, plans: list[Plan]) -> list[Path]:
    """Stored variants (and merged bases, checkpoints) that neither a link nor any of the plans uses, directly or as
    an ancestor."""
    out_dir = Path(out_dir)
    everything = variants(out_dir)
    keep: set[str] = {v.fingerprint for v in everything if v.current}
    for plan in plans:
        keep |= {s.fingerprint for s in plan.stages}
    by_fp = {v.fingerprint: v for v in everything}
    for fp in list(keep):  # a kept variant keeps its lineage
        if fp in by_fp:
            keep |= {a["fingerprint"] for a in by_fp[fp].artifact.manifest.get("lineage") or []}
    doomed = [v.folder for v in everything if v.fingerprint not in keep]
    kept_bases = set()
    for v in everything:
        if v.fingerprint in keep:
            for base in v.artifact.output.adapters().values():
                kept_bases.add(Path(base.resolve(v.folder)).resolve())
    bases = out_dir / BASES
    doomed += [b for b in (sorted(bases.iterdir()) if bases.is_dir() else []) if b.resolve() not in kept_bases
               and not b.name.startswith(".")]
    work = out_dir / ".work"
    doomed += [w for w in (sorted(work.iterdir()) if work.is_dir() else [])
               if not any(w.name.endswith(fp[:12]) for fp in keep)]
    return doomed


def collect(out_dir: Path, plans: list[Plan], dry_run: bool = False) -> tuple[list[Path], int]:
    """Remove (or with ``dry_run`` only list) the garbage; returns (paths, bytes)."""
    doomed = garbage(out_dir, plans)
    freed = sum(folder_size(p) for p in doomed)
    if not dry_run:
        for path in doomed:
            shutil.rmtree(path, ignore_errors=True)
        links = [Path(out_dir) / name for name in os.listdir(out_dir)] if Path(out_dir).is_dir() else []
        for link in links:  # a stage link whose variant is gone
            if link.is_symlink() and not link.exists():
                link.unlink()
    return doomed, freed

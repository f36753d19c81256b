"""The store of variants: every setting a stage ran with stays in <output_dir>/.store/<stage>-<fingerprint[:12]>/.
``runs`` lists them (what differs from the recipe, key metrics, date, size); ``gc`` removes the ones no recipe names.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..artifacts.artifact import Artifact
from ..contract.context import BASES
from .plan import STORE, Plan, why_changed

SHOWN_METRICS = ("gold_mean", "kl_mean", "eval_accuracy", "eval_loss", "train_loss", "score_last", "kl_last", "pairs")


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
    """How a variant differs from what the recipe asks today ("the recipe's settings" when it is that)."""
    if plan is None or variant.stage not in plan.recipe.stages:
        return "-" if plan is None else "not in the recipe"
    wanted = plan[variant.stage]
    if wanted.fingerprint == variant.fingerprint:
        return "the recipe's settings"
    reason = why_changed(variant.stage, wanted.parts, variant.artifact.manifest.get("fingerprint_parts") or {})
    return reason.replace(f"stages.{variant.stage}.", "")


def describe_variants(out_dir: Path, plan: Plan | None = None) -> str:
    rows = variants(out_dir)
    if not rows:
        return f"no stored variants in {out_dir}"
    lines = [f"{'stage':<14}{'variant':<14}{'':2}{'finished':<18}{'size':>10}  {'metrics':<40}  "
             "differs from the recipe",
             "-" * 120]
    total = 0
    for v in rows:
        total += v.size
        metrics = {**v.artifact.metrics}
        shown = ", ".join(f"{k} {metrics[k]:.3g}" if isinstance(metrics[k], float) else f"{k} {metrics[k]}"
                          for k in SHOWN_METRICS if k in metrics)[:40]
        when = str(v.artifact.manifest.get("finished_at", "?"))[:16].replace("T", " ")
        lines.append(f"{v.stage:<14}{v.fingerprint[:12]:<14}{'*' if v.current else ' ':2}{when:<18}"
                     f"{size_text(v.size):>10}  {shown:<40}  {differences(v, plan)}")
    bases = folder_size(Path(out_dir) / BASES) if (Path(out_dir) / BASES).is_dir() else 0
    work = folder_size(Path(out_dir) / ".work") if (Path(out_dir) / ".work").is_dir() else 0
    lines += ["", f"* the variant {out_dir}/<stage> names. {len(rows)} variants, {size_text(total)}; merged bases "
                  f"{size_text(bases)}; checkpoints {size_text(work)}"]
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

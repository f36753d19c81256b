"""A slice of a recipe (every stage for a few steps) run for several commits in one sitting: per-stage seconds, their
ratio to the first commit, and the full run each projects. This is how a speed change is shown within a session;
never a two-hour side-by-side.

    python bench/slice_bench.py                       # ac3b51e against the working tree, rlhf.yaml's default slice
    python bench/slice_bench.py --commits ac3b51e HEAD --set model.dtype=bfloat16 --label bf16

Each commit runs from its own checkout (``git worktree``; "." is the working tree as it is) into a fresh output
folder, with the same slice overrides and the same model cache. A projection scales each stage's work to the
recipe's full size: for trainers the training loop (metrics.json's train_runtime) by full steps / slice steps, plus
the rest of the stage (loading, the closing evaluation) as measured; for sampling stages (preferences, evaluations)
the whole stage by full prompts / slice prompts (their loading time is a few seconds, so this overstates them a
little, the same for every commit). Stages whose settings the recipe scales differently are named in the output.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from front_door import cpu_name  # bench/ is on the path when a bench script runs
from stage_matrix import matmul_flops, wait_quiet

from pipeline.models.loading import NATIVE_BF16_FLAGS, cpu_flags

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "ac3b51e"

SLICE = {
    "evaluate.n": 32,
    "stages.sft.train.max_steps": 5,
    "stages.preferences.n_prompts": 32,
    "stages.reward.train.max_steps": 5,
    "stages.dpo.train.max_steps": 5,
    "stages.ppo.train.max_steps": 2,
}
"""The slice of a recipe: what each key's full value is divided by is the projection's scale."""

SCALE_KEY = {"sft": "stages.sft.train.max_steps", "reward": "stages.reward.train.max_steps",
             "dpo": "stages.dpo.train.max_steps", "ppo": "stages.ppo.train.max_steps",
             "preferences": "stages.preferences.n_prompts"}
"""Which slice key scales each stage (evaluation nodes: evaluate.n)."""


def cpu_isa() -> str:
    """The CPU's vector ISA and whether it multiplies bf16 natively (what `dtype: auto` reads)."""
    flags = cpu_flags()
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    extra = [flag for flag in NATIVE_BF16_FLAGS if flag in flags]
    return isa + (" with " + "+".join(extra) if extra else "")


def full_values(recipe: Path) -> dict[str, float]:
    """The recipe's own value of each slice key."""
    import yaml

    raw = yaml.safe_load(recipe.read_text())
    values = {}
    for key in SLICE:
        node = raw
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, (int, float)):
            values[key] = node
    return values


def checkout(commit: str, under: Path) -> Path:
    if commit == ".":
        return ROOT
    folder = under / f"src-{commit}"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--force", str(folder), commit],
                   check=True, capture_output=True)
    return folder


def build_base_model(source: Path, recipe: str) -> None:
    """Build (or find) the recipe's base model before any timing: the first run would otherwise pay for it."""
    env = {**os.environ, "PYTHONPATH": str(source), "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "pipeline", "plan", recipe], cwd=source, env=env, capture_output=True)


def run_slice(source: Path, recipe: str, out: Path, overrides: list[str], log: Path) -> float:
    """Run the slice from ``source``'s code (its folder first on the path); returns the wall time."""
    env = {**os.environ, "PYTHONPATH": str(source), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "pipeline", "run", recipe, "--output-dir", str(out)]
    for override in overrides:
        command += ["--set", override]
    started = time.perf_counter()
    with log.open("w") as handle:
        done = subprocess.run(command, cwd=source, env=env, stdout=handle, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        sys.exit(f"slice_bench: the slice failed in {source} (exit {done.returncode}); see {log}")
    return time.perf_counter() - started


def stage_seconds(out: Path) -> dict[str, dict]:
    """Each stage's wall time (manifest) and training-loop time (metrics.json's train_runtime, where there is one)."""
    stages = {}
    manifests = [json.loads(path.read_text()) | {"_folder": path.parent} for path in out.glob(".store/*/manifest.json")]
    for data in sorted(manifests, key=lambda m: m["started_at"]):  # the order they ran in
        manifest = data["_folder"] / "manifest.json"
        metrics_file = manifest.parent / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
        stages[data["stage"]] = {"wall": data["wall_time_s"] + data.get("import_time_s", 0.0),
                                 "loop": metrics.get("train_runtime"), "dtype": data.get("dtype")}
    return stages


def projected(stage: str, seconds: dict, scales: dict[str, float]) -> float:
    key = "evaluate.n" if stage.startswith("eval-") else SCALE_KEY.get(stage)
    scale = scales.get(key, 1.0)
    if seconds["loop"] is None:
        return seconds["wall"] * scale
    return seconds["wall"] - seconds["loop"] + seconds["loop"] * scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commits", nargs="+", default=[BASELINE, "."],
                        help="commits to compare, the first is the baseline ('.' = the working tree as it is)")
    parser.add_argument("--recipe", default="recipes/rlhf.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="an extra override for every commit's slice (KEY=VALUE), e.g. model.dtype=bfloat16")
    parser.add_argument("--only-new", action="append", default=[],
                        help="an override for the commits after the first only (KEY=VALUE)")
    parser.add_argument("--keep", type=Path, help="keep the runs and logs in this folder (default: a temp folder)")
    args = parser.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="slice-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    scales = {key: full / SLICE[key] for key, full in full_values(ROOT / args.recipe).items()}
    build_base_model(ROOT, args.recipe)
    busy = wait_quiet(60)
    if busy > 0.3:
        print(f"warning: the machine was busy before the runs ({busy:.1f} cores in use): figures are slower")
    print(f"machine: {cpu_name()}, {cpu_isa()}, {os.cpu_count()} cores; fp32 matmul "
          f"{matmul_flops('float32', os.cpu_count(), 1) / 1e9:.0f} GFLOP/s, bf16 "
          f"{matmul_flops('bfloat16', os.cpu_count(), 1) / 1e9:.0f} GFLOP/s; {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"recipe: {args.recipe}; slice: " + ", ".join(f"{k}={v}" for k, v in SLICE.items())
          + (f"; also {' '.join(args.overrides)}" if args.overrides else ""))
    results = {}
    checkouts = []
    for position, commit in enumerate(args.commits):
        source = checkout(commit, work)
        checkouts += [source] if source != ROOT else []
        overrides = [f"{k}={v}" for k, v in SLICE.items()] + args.overrides
        if position > 0:
            overrides += args.only_new
        label = commit if commit != "." else "working tree"
        out = work / f"runs-{position}"
        wall = run_slice(source, args.recipe, out, overrides, work / f"log-{position}.txt")
        results[label] = stage_seconds(out)
        print(f"{label}: slice {wall:.0f} s")

    names = list(dict.fromkeys(stage for seconds in results.values() for stage in seconds))
    labels = list(results)
    base = results[labels[0]]
    header = f"{'stage':<12}" + "".join(f"{label[:14]:>16}" for label in labels) + "   ratio   (projected full run, s)"
    print(header)
    totals = {label: [0.0, 0.0] for label in labels}
    for stage in names:
        row = f"{stage:<12}"
        for label in labels:
            seconds = results[label].get(stage)
            row += f"{seconds['wall']:>15.1f}s" if seconds else f"{'-':>16}"
            if seconds:
                totals[label][0] += seconds["wall"]
                totals[label][1] += projected(stage, seconds, scales)
        new = results[labels[-1]].get(stage)
        ratio = new["wall"] / base[stage]["wall"] if new and stage in base else float("nan")
        projections = " / ".join(f"{projected(stage, results[label][stage], scales):.0f}" for label in labels
                                 if stage in results[label])
        print(row + f"   {ratio:5.2f}x   ({projections})")
    print(f"{'total':<12}" + "".join(f"{totals[label][0]:>15.1f}s" for label in labels)
          + f"   {totals[labels[-1]][0] / totals[labels[0]][0]:5.2f}x")
    print("projected full run: " + ", ".join(f"{label} {totals[label][1] / 60:.0f} min" for label in labels)
          + f"; ratio {totals[labels[-1]][1] / totals[labels[0]][1]:.2f}x")
    for folder in checkouts:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(folder)], capture_output=True)
    print(f"runs and logs in {work}")


if __name__ == "__main__":
    main()

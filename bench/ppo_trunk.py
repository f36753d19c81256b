"""PPO step time with and without trunk sharing (stages/ppo/trunk.py), on a recipe's own upstream artifacts.

    .venv/bin/python bench/ppo_trunk.py                       # recipes/rlhf.yaml, its runs/rlhf artifacts, 3 steps
    .venv/bin/python bench/ppo_trunk.py --recipe recipes/tiny.yaml --runs runs/tiny --steps 4

Each setting runs the recipe's PPO stage for --steps steps in a fresh process, in a scratch output folder whose
upstream variants are links to those of --runs (nothing is written there). It prints seconds per step (the mean of
the steps after the first, which also pays for loading), rollout generation time per step, and the speed-up; the
logged scores and KLs of the two runs are printed too: sharing is exact, so they agree to about 1e-5.

Run it on an otherwise idle machine and say which CPU it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from front_door import cpu_name  # bench/ is on the path when a bench script runs

ROOT = Path(__file__).resolve().parent.parent


def link_upstream(runs: Path, scratch: Path) -> None:
    """scratch/.store/* and scratch/.bases/* as links to runs' own (read-only use), and the stage links."""
    for folder in (".store", ".bases"):
        if (runs / folder).is_dir():
            (scratch / folder).mkdir(parents=True, exist_ok=True)
            for entry in (runs / folder).iterdir():
                if not entry.name.startswith(".") and not entry.name.endswith(".lock"):
                    (scratch / folder / entry.name).symlink_to(entry.resolve())
    for entry in runs.iterdir():
        if entry.is_symlink() and not entry.name.startswith("."):
            (scratch / entry.name).symlink_to(os.readlink(entry))


def run_ppo(recipe: Path, runs: Path, steps: int, share: bool, stage: str, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="ppo-trunk-") as scratch:
        out = Path(scratch)
        link_upstream(runs, out)
        sets = ["evaluate=null", f"stages.{stage}.train.max_steps={steps}", f"stages.{stage}.train.logging_steps=1",
                f"stages.{stage}.train.save_steps=100000", f"stages.{stage}.share_trunk={str(share).lower()}", *extra]
        command = [sys.executable, "-m", "pipeline", "run", str(recipe), "--only", stage, "--output-dir", str(out),
                   *[a for s in sets for a in ("--set", s)]]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if done.returncode != 0:
            raise SystemExit(f"ppo (share_trunk={share}) failed:\n{done.stderr[-3000:]}")
        history = json.loads((out / stage / "log_history.json").read_text())
        trunk = next((line.split("] ", 1)[1] for line in done.stderr.splitlines() if "trunk sharing" in line), "")
    later = history[1:] or history
    return {"share_trunk": share, "trunk": trunk, "steps": len(history),
            "s_per_step": sum(h["step_time_s"] for h in later) / len(later),
            "generate_s_per_step": sum(h["generate_time_s"] for h in later) / len(later),
            "score": [h["score"] for h in history], "kl": [h["kl"] for h in history]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "rlhf.yaml")
    parser.add_argument("--runs", type=Path, help="the recipe's output folder holding its upstream artifacts "
                                                   "(default: the recipe's output_dir)")
    parser.add_argument("--stage", default="ppo")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="more recipe settings for both runs (as `pipeline run --set`)")
    args = parser.parse_args()
    if args.runs is None:
        from pipeline.recipe import load_recipe

        args.runs = Path(load_recipe(args.recipe).out_dir)
    cpu = cpu_name()
    results = [run_ppo(args.recipe, args.runs.resolve(), args.steps, share, args.stage, args.set)
               for share in (False, True)]
    print(f"{args.recipe.name} {args.stage}, {args.steps} steps, on {cpu} ({os.cpu_count()} cores)")
    for r in results:
        print(f"  share_trunk={str(r['share_trunk']).lower():5}  {r['s_per_step']:7.1f} s/step (rollout generation "
              f"{r['generate_s_per_step']:.1f} s)  {r['trunk']}")
    print(f"  speed-up {results[0]['s_per_step'] / results[1]['s_per_step']:.2f}x")
    for key in ("score", "kl"):
        worst = max(abs(a - b) for a, b in zip(results[0][key], results[1][key]))
        print(f"  {key} per step: largest difference between the two runs {worst:.2e}")


if __name__ == "__main__":
    main()

"""Gold evaluation on one process against the same evaluation sharded over two (issue 17): wall time of the
evaluation stage of a recipe's base model, each process given the same number of threads, and whether the two
eval.json files agree.

    .venv/bin/python bench/sharded_eval.py                       # rlhf.yaml, 128 prompts, 1 thread a process
    .venv/bin/python bench/sharded_eval.py --n 256 --threads 1

On a machine with as many cores as processes x threads this shows the scaling of sharded sampling; on a GPU
machine the same holds per GPU. The first run of a recipe builds its model (a warm-up run does that, untimed).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from front_door import cpu_name  # noqa: E402

STAGE = "eval-base"


def evaluate(recipe: Path, n: int, threads: int, processes: int, out: Path) -> tuple[float, dict]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    run = [sys.executable, "-m", "pipeline"] if processes == 1 else \
        [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
         str(ROOT / "launch" / "cpu_2proc.yaml"), "--num_processes", str(processes), "-m", "pipeline"]
    command = [*run, "run", str(recipe), "--only", STAGE, "--output-dir", str(out), "--set", f"evaluate.n={n}"]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    stage = re.search(rf"\[{STAGE}\] done in ([0-9.]+) s", done.stderr)
    result = json.loads((out / STAGE / "eval.json").read_text())
    return (float(stage.group(1)) if stage else wall), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "rlhf.yaml")
    parser.add_argument("--n", type=int, default=128, help="prompts evaluated")
    parser.add_argument("--threads", type=int, default=1, help="OMP threads per process")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        evaluate(args.recipe, 8, args.threads, 1, Path(tmp) / "warm-up")
        one, single = evaluate(args.recipe, args.n, args.threads, 1, Path(tmp) / "one")
        two, sharded = evaluate(args.recipe, args.n, args.threads, 2, Path(tmp) / "two")
    same = {k: v for k, v in single.items() if k != "timing"} == {k: v for k, v in sharded.items() if k != "timing"}
    print(f"CPU: {cpu_name()}; {args.recipe.name} {STAGE}, {args.n} prompts, {args.threads} thread(s) a process")
    print(f"1 process : {one:7.1f} s   gold {single['gold_mean']:.4f}  KL {single['kl_mean']:.4f}")
    print(f"2 processes: {two:7.1f} s   gold {sharded['gold_mean']:.4f}  KL {sharded['kl_mean']:.4f}")
    print(f"time ratio 2/1: {two / one:.2f}; eval.json identical: {same}")


if __name__ == "__main__":
    main()

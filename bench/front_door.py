"""How long the front door takes: `validate` and `plan` on recipes/tiny.yaml and recipes/rlhf.yaml, each run as a
user runs it (a fresh `python -m pipeline` process), median of N runs, with the models already cached.

    .venv/bin/python bench/front_door.py            # 5 runs each
    .venv/bin/python bench/front_door.py --runs 9

Targets (issue 12): validate under 2 s; plan under 5 s on tiny and under 10 s on rlhf.yaml. The first `plan` of a
recipe builds or fetches its builtin model and hashes its weights once (not timed here: a warm-up run does it).
It also reports whether torch was imported (it should not be, for either command).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE = "import sys, runpy; sys.argv = ['pipeline', *sys.argv[1:]]; " \
        "exec(\"try:\\n runpy.run_module('pipeline', run_name='__main__')\\n" \
        "except SystemExit as e:\\n code = e.code\\n" \
        "print('TORCH_IMPORTED=' + str('torch' in sys.modules), file=sys.stderr)\\nsys.exit(code)\")"


def timed(args: list[str]) -> tuple[float, bool]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=ROOT, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{result.stderr[-2000:]}")
    return elapsed, "TORCH_IMPORTED=True" in result.stderr


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"{'command':<40}{'median s':>10}{'min s':>8}{'max s':>8}  torch imported")
    for recipe in ("recipes/tiny.yaml", "recipes/rlhf.yaml"):
        timed(["plan", recipe])  # warm-up: builds/fetches the model and hashes its files once
        for command in ("validate", "plan"):
            runs = [timed([command, recipe]) for _ in range(args.runs)]
            times = [t for t, _ in runs]
            print(f"{command + ' ' + recipe:<40}{statistics.median(times):>10.2f}{min(times):>8.2f}{max(times):>8.2f}"
                  f"  {'yes' if any(torch for _, torch in runs) else 'no'}")


if __name__ == "__main__":
    main()

"""bench/gpu_check.sh --dry-run: the GPU check's every step runs here on CPU (the gpu tests collected and skipped,
both launches validated and planned, the bench on the tiny model), and it writes its JSON and markdown summary."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from support import ROOT

pytestmark = pytest.mark.slow  # runs the tiny chain once for the bench (about a minute)


def run_check(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    return subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_the_dry_run_runs_every_step_and_summarises(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "trl-1.16.0-py3-none-any.whl").write_bytes(b"")  # listed, not installed, in a dry run
    done = run_check("--dry-run", "--wheels", str(wheels), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "trl-1.16.0-py3-none-any.whl" in done.stdout
    summary = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert summary["dry_run"] and summary["failed"] == []
    assert [s["step"] for s in summary["steps"]] == ["imports", "gpu-tests", "launch-gpu1", "launch-zero3",
                                                     "plan-zero3", "bench"]
    tests_log = (tmp_path / "out" / "gpu-tests.log").read_text()
    assert " passed" not in tests_log and "needs a CUDA GPU" in tests_log  # collected, every one skipped
    skipped = int(tests_log.strip().splitlines()[-1].split()[0])
    assert skipped >= 10, tests_log[-500:]
    stages = {row["stage"]: row for row in summary["bench"]["stages"]}
    assert set(stages) == {"sft", "reward", "dpo", "ppo"} and all(r["tokens_per_s"] > 0 for r in stages.values())
    assert all("train_runtime" in summary["bench"]["plain"][kind] for kind in ("sft", "dpo")), summary["bench"]["plain"]
    assert "| sft |" in (tmp_path / "out" / "gpu_check.md").read_text()


def test_bad_options_and_a_missing_wheel_folder_are_refused(tmp_path):
    unknown = run_check("--fast")
    assert unknown.returncode == 2 and "unknown option '--fast'" in unknown.stderr
    no_wheels = run_check("--wheels", str(tmp_path / "none"), "--out", str(tmp_path / "out"))
    assert no_wheels.returncode == 2 and "run bench/gpu_wheels.sh" in no_wheels.stderr
    syntax = subprocess.run(["bash", "-n", str(ROOT / "bench" / "gpu_wheels.sh")], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr

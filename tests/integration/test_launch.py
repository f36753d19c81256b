"""Every launch config in launch/ is one accelerate accepts, and the DeepSpeed files it names exist and agree."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from support import ROOT

CONFIGS = sorted((ROOT / "launch").glob("*.yaml"))


def test_the_readme_documents_every_launch_config_and_no_other():
    guide = (ROOT / "docs" / "guide" / "README.md").read_text()
    documented = set(re.findall(r"`(\w+\.yaml)`", guide.split("## Several processes")[1].split("\n## ")[0]))
    assert documented == {p.name for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_accelerate_reads_the_config(path: Path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    raw = yaml.safe_load(path.read_text())
    assert config.num_processes == raw["num_processes"] >= 1
    if raw["distributed_type"] == "DEEPSPEED":
        ds_file = ROOT / raw["deepspeed_config"]["deepspeed_config_file"]
        ds = json.loads(ds_file.read_text())
        stage = ds["zero_optimization"]["stage"]
        assert f"zero{stage}" in path.stem
        assert ("offload" in path.stem) == ("offload_optimizer" in ds["zero_optimization"])
        # accelerate refuses mixed_precision next to a DeepSpeed file; precision comes from the stage ("auto")
        assert "mixed_precision" not in raw and ds["bf16"]["enabled"] == "auto"
    if raw.get("num_machines", 1) > 1:
        assert raw.get("main_process_ip") and raw["num_processes"] % raw["num_machines"] == 0


def test_slurm_script_starts_one_accelerate_launch_per_node_joining_one_job(tmp_path):
    """slurm.sh under stand-ins for srun, scontrol and accelerate: the launch node 1 of 2 nodes x 8 GPUs runs."""
    bin_dir, work = tmp_path / "bin", tmp_path / "work"
    (work / ".venv" / "bin").mkdir(parents=True)
    bin_dir.mkdir()
    stub = lambda path, body: (path.write_text("#!/usr/bin/env bash\n" + body), path.chmod(0o755))  # noqa: E731
    stub(bin_dir / "scontrol", 'printf "node-a\\nnode-b\\n"\n')
    stub(bin_dir / "srun", 'SLURM_NODEID=1 "$@"\n')  # what node 1 of 2 runs
    stub(work / ".venv" / "bin" / "accelerate",
         'echo "$@" > launched.txt; echo "OMP=$OMP_NUM_THREADS" >> launched.txt\n')
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "node-[a-b]",
           "SLURM_NNODES": "2", "SLURM_GPUS_ON_NODE": "8", "SLURM_CPUS_PER_TASK": "32"}
    env.pop("OMP_NUM_THREADS", None)
    result = subprocess.run(["bash", str(ROOT / "launch" / "slurm.sh"), "recipes/rlhf.yaml"], cwd=work, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    args, omp = (work / "launched.txt").read_text().split("\n")[:2]
    assert args.split() == ["launch", "--config_file", "launch/multinode_zero2.yaml", "--num_machines", "2",
                            "--num_processes", "16", "--machine_rank", "1", "--main_process_ip", "node-a",
                            "--main_process_port", "29500", "-m", "pipeline", "run", "recipes/rlhf.yaml"]
    assert omp == "OMP=4", "the node's CPUs are shared out among its 8 processes"
    usage = subprocess.run(["bash", str(ROOT / "launch" / "slurm.sh")], cwd=work, env=env, capture_output=True,
                           text=True)
    assert usage.returncode != 0 and "usage: sbatch --nodes N launch/slurm.sh RECIPE" in usage.stderr


def test_plan_estimates_memory_per_process_for_each_launch_config():
    from pipeline.builtin.tiny_model import tiny_llama_path
    from pipeline.models.estimate import Layout, estimate
    from pipeline.recipe import load_recipe

    recipe = load_recipe(ROOT / "recipes" / "tiny.yaml")
    reward = recipe.stages["reward"]  # full fine-tuning: weights, gradients and Adam state all count
    model = str(tiny_llama_path())

    def memory(config: str | None) -> float:
        layout = Layout.from_launch_file(ROOT / "launch" / config) if config else Layout()
        return estimate(model, reward.memory_profile(), "float32", layout=layout).memory_gib

    assert Layout.from_launch_file(ROOT / "launch" / "gpu_zero3_offload.yaml") == Layout(8, 3, True, True)
    assert memory("cpu_2proc.yaml") == memory(None), "DDP replicates everything"
    assert memory(None) > memory("cpu_2proc_zero2.yaml") > memory("cpu_2proc_zero3.yaml")
    assert memory("gpu_zero3.yaml") > memory("gpu_zero3_offload.yaml")


def test_plan_command_takes_a_launch_config():
    from support import run_cli

    result = run_cli("plan", "recipes/tiny.yaml", "--launch", "launch/gpu_zero3.yaml")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "8 processes, DeepSpeed ZeRO-3" in result.stdout
    bad = run_cli("plan", "recipes/tiny.yaml", "--launch", "launch/missing.yaml")
    assert bad.returncode != 0 and "launch/missing.yaml" in bad.stderr and "Traceback" not in bad.stderr

"""Every launch config in launch/ is one accelerate accepts, and the DeepSpeed files it names exist and agree."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from support import ROOT

CONFIGS = sorted((ROOT / "launch").glob("*.yaml"))


def test_there_is_a_config_for_each_setup():
    names = {p.stem for p in CONFIGS}
    assert {"cpu_2proc", "cpu_2proc_zero2", "cpu_2proc_zero3", "gpu_1", "gpu_ddp", "gpu_zero2", "gpu_zero3",
            "gpu_zero3_offload", "multinode_zero2"} <= names


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


def test_slurm_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(ROOT / "launch" / "slurm.sh")]).returncode == 0


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

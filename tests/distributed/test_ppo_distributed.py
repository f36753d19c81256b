"""PPO on 2 CPU processes: data-parallel (replicas identical), DeepSpeed ZeRO-2 and ZeRO-3."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from support import copy_artifacts, launcher, run_cli
from support.upstream import TINY, UPSTREAM


@pytest.fixture
def out(tiny_upstream, tmp_path) -> Path:
    """A copy of the session's tiny upstream (tests/conftest.py), which the launched processes write into."""
    return copy_artifacts(tiny_upstream, tmp_path / "out", UPSTREAM)


@pytest.mark.slow
def test_two_cpu_processes_run_one_data_parallel_ppo(out, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    result = run_cli("run", str(TINY), "--only", "ppo", "--set", f"output_dir={out}", "--set", "evaluate=null",
                     "--set", "stages.ppo.train.max_steps=3", "--set", "stages.ppo.rollout_batch_size=16",
                     launcher=launcher())
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "ppo" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["rollout_prompts_per_step"] == 32
    assert metrics["replica_max_diff"] == 0.0, "gradients were averaged: both ranks hold the same weights"
    assert metrics["global_step"] == 3


@pytest.mark.slow
@pytest.mark.parametrize("config", ["cpu_2proc_zero2.yaml", "cpu_2proc_zero3.yaml"])
def test_ppo_under_deepspeed_zero_on_two_cpu_processes(out, monkeypatch, config):
    """ZeRO-2 shards optimizer state and gradients; ZeRO-3 also the weights (gathered for generation and saving)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    result = run_cli("run", str(TINY), "--only", "ppo", "--set", f"output_dir={out}", "--set", "evaluate=null",
                     "--set", "stages.ppo.train.max_steps=3", "--set", "stages.ppo.rollout_batch_size=16",
                     launcher=launcher(config), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "ppo" / "metrics.json").read_text())
    assert metrics["distributed_type"] == "DEEPSPEED" and metrics["world_size"] == 2
    assert metrics["global_step"] == 3 and metrics["reference_drift"] == 0.0

    from transformers import AutoModelForCausalLM

    from pipeline.artifacts.policy import load_policy

    ppo, sft = AutoModelForCausalLM.from_pretrained(out / "ppo"), load_policy(out / "sft")
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        assert not torch.allclose(ppo(input_ids=ids).logits, sft(input_ids=ids).logits, atol=1e-4)

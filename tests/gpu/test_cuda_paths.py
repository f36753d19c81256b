"""The CUDA paths, on one GPU (marked `gpu`; skipped where torch sees no CUDA device). bench/gpu_check.sh runs them
on a GPU machine with `pytest -m gpu tests/gpu`; here and in CI they are collected and skipped.

Each compares the GPU against what the CPU tests already establish: stages finish with finite losses in bf16, the
artifacts compute the same logits through plain transformers/peft as through the pipeline, adapters move when the
base is 4-bit or checkpointed, PPO's reference stays put, greedy generation on the GPU equals the CPU's, and
DeepSpeed ZeRO-2/3 run a chain with one process.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from support import RECIPES, run_cli

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu_check.sh)")]

TINY = RECIPES / "tiny.yaml"
SHORT = ["evaluate.n=16", "stages.sft.train.max_steps=6", "stages.reward.train.max_steps=6",
         "stages.dpo.train.max_steps=6", "stages.ppo.train.max_steps=3", "stages.ppo.rollout_batch_size=16",
         "stages.preferences.n_prompts=32"]


def sets(*settings: str) -> list[str]:
    return [a for s in settings for a in ("--set", s)]


def only(*stages: str) -> list[str]:
    return [a for s in stages for a in ("--only", s)]


def finite_history(folder: Path) -> list[dict]:
    history = json.loads((folder / "log_history.json").read_text())
    for row in history:
        for key, value in row.items():
            if isinstance(value, float):
                assert math.isfinite(value), (folder.name, row.get("step"), key, value)
    return history


@pytest.fixture(scope="module")
def bf16_chain(tmp_path_factory) -> Path:
    """tiny.yaml end to end on the GPU in bf16 (precision auto picks bf16 on a GPU that supports it)."""
    out = tmp_path_factory.mktemp("bf16") / "out"
    ran = run_cli("run", str(TINY), "--output-dir", str(out), *sets(*SHORT, "model.dtype=bfloat16"), timeout=900)
    assert ran.returncode == 0, ran.stderr[-4000:]
    return out


@pytest.mark.parametrize("stage", ["sft", "reward", "dpo", "ppo"])
def test_every_stage_kind_trains_in_bf16_on_the_gpu(bf16_chain, stage):
    manifest = json.loads((bf16_chain / stage / "manifest.json").read_text())
    assert manifest["device"].startswith("cuda"), manifest["device"]
    finite_history(bf16_chain / stage)
    for eval_node in ("eval-base", "eval-sft", "eval-dpo", "eval-ppo"):
        metrics = json.loads((bf16_chain / eval_node / "eval.json").read_text())
        assert math.isfinite(metrics["gold_mean"]) and math.isfinite(metrics["kl_mean"])


def test_bf16_policies_compute_the_same_logits_through_plain_transformers(bf16_chain):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    from pipeline.artifacts.policy import load_policy

    def plain_policy(folder: Path):  # as a user outside this project loads it
        if (folder / "adapter_config.json").exists():
            return AutoPeftModelForCausalLM.from_pretrained(folder)
        return AutoModelForCausalLM.from_pretrained(folder)

    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]], device="cuda")
    for stage in ("sft", "dpo", "ppo"):
        ours = load_policy(bf16_chain / stage).to("cuda").eval()
        theirs = plain_policy(bf16_chain / stage).to("cuda").eval()
        with torch.no_grad():
            difference = (ours(input_ids=ids).logits.float() - theirs(input_ids=ids).logits.float()).abs().max()
        assert difference.item() <= 1e-2, (stage, difference.item())  # bf16: same weights, same kernels


def test_ppo_reference_does_not_drift_on_the_gpu(bf16_chain):
    metrics = json.loads((bf16_chain / "ppo" / "metrics.json").read_text())
    assert metrics["reference_drift"] == 0.0
    assert metrics["world_size"] == 1


def test_gradient_checkpointing_with_lora_moves_the_adapter(tmp_path):
    out = tmp_path / "out"
    ran = run_cli("run", str(TINY), "--only", "sft", "--output-dir", str(out),
                  *sets("evaluate=null", "stages.sft.train.max_steps=4",
                        "stages.sft.train.gradient_checkpointing=true"))
    assert ran.returncode == 0, ran.stderr[-4000:]
    adapter = load_file(out / "sft" / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.abs().max().item() > 0 for v in lora_b), "every lora_B moved off its zero start"
    finite_history(out / "sft")


def test_qlora_on_cuda_reaches_the_adapters(tmp_path):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes travels in its own wheel set (bench/gpu_wheels.sh)")
    out = tmp_path / "out"
    ran = run_cli("run", str(TINY), *only("sft", "preferences", "reward", "dpo"), "--output-dir", str(out),
                  *sets("evaluate=null", "model.quantization=4bit", "stages.sft.train.max_steps=4",
                        "stages.reward.train.max_steps=4", "stages.dpo.train.max_steps=4",
                        "stages.reward.lora={r: 8, alpha: 16, dropout: 0.0}", "stages.preferences.n_prompts=32"),
                  timeout=900)
    assert ran.returncode == 0, ran.stderr[-4000:]
    for stage in ("sft", "reward", "dpo"):
        adapter = load_file(out / stage / "adapter_model.safetensors")
        lora_b = [v for k, v in adapter.items() if "lora_B" in k]
        assert lora_b and all(v.abs().max().item() > 0 for v in lora_b), stage


def test_greedy_generation_on_the_gpu_equals_the_cpu():
    from transformers import AutoTokenizer

    from pipeline.builtin.tiny_model import tiny_llama_path
    from pipeline.evaluation.generation import generate
    from pipeline.evaluation.settings import SamplingSettings
    from pipeline.models.loading import load_causal_lm

    torch.backends.cuda.matmul.allow_tf32 = False
    path = str(tiny_llama_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompts = ["the film was", "a story about", "I think that", "one more"]
    greedy = SamplingSettings(do_sample=False, max_new_tokens=12, batch_size=2)
    cpu = generate(load_causal_lm(path, "float32").eval(), tokenizer, prompts, greedy, seed=0)
    gpu = generate(load_causal_lm(path, "float32").to("cuda").eval(), tokenizer, prompts, greedy, seed=0)
    assert [c.completion_ids for c in gpu] == [c.completion_ids for c in cpu]


@pytest.mark.parametrize("config", ["gpu_zero2.yaml", "gpu_zero3.yaml"])
def test_deepspeed_with_one_process_runs_sft_dpo_ppo(tmp_path, config):
    pytest.importorskip("deepspeed")
    import subprocess
    import sys

    out = tmp_path / "out"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(RECIPES.parent / "launch" / config), "--num_processes", "1", "-m", "pipeline", "run", str(TINY),
               *only("sft", "preferences", "reward", "dpo", "ppo"), "--output-dir", str(out),
               *sets(*SHORT, "evaluate=null")]
    ran = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=RECIPES.parent,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(RECIPES.parent / "tests"),
                                                                                         os.environ.get("PYTHONPATH")]))})
    assert ran.returncode == 0, ran.stderr[-4000:]
    for stage in ("sft", "dpo", "ppo"):
        assert json.loads((out / stage / "manifest.json").read_text())["distributed_type"] == "DEEPSPEED", stage
        finite_history(out / stage)

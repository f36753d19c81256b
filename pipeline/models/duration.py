"""How long a stage will take here before it has ever run here: the matmul FLOPs its work asks for (flops.py, at
the recipe's settings) over this CPU's matmul rate in the run's dtype (a probe of a fraction of a second) and the share
of that rate each kind of stage reached in a measured run, plus a fixed cost for loading and saving.

A planning figure, not a promise: sequence lengths are taken at the recipe's limits (``max_length``,
``max_new_tokens``) and prompts at PROMPT_TOKENS, and the measured shares absorb how far real data falls short of
them on the recipe they were measured on. Once a stage has run here, the runner's ETA uses its measured time instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from . import flops

PROMPT_TOKENS = 32
"""Rendered prompt length assumed for sampling stages (rlhf.yaml's movie prompts are 20-30 tokens)."""

MATMUL_SIZE = 1024

# Share of the probed matmul rate each kind reached, and its fixed seconds (loading, saving, its own evaluation's
# set-up), fitted to rlhf.yaml's stages at these FLOP counts: run of 2026-12-06 at b6f93db on a 2-core AMD EPYC
# (AVX-512, AVX512-BF16; bf16; this module's probe 300 GFLOP/s bf16). The tiny recipe's stages are all fixed cost.
REFERENCE_RATE = 365e9
"""The probe's bf16 rate on the machine the shares below were fitted on."""

EFFICIENCY = {"sft": 0.38, "reward": 0.95, "dpo": 0.44, "ppo": 0.64, "grpo": 0.64, "rloo": 0.64,
              "preferences": 0.66, "evaluate": 0.55}
FIXED_SECONDS = {"sft": 8.0, "reward": 8.0, "dpo": 8.0, "ppo": 15.0, "grpo": 10.0, "rloo": 10.0,
                 "preferences": 5.0, "evaluate": 5.0}


@dataclass(frozen=True)
class Estimate:
    """A stage's expected seconds and the FLOPs they come from (None where the kind or its settings are not
    modelled: training for a number of epochs of data the plan does not read)."""

    seconds: float | None
    flop: float | None


def matmul_rate(dtype, size: int = MATMUL_SIZE, seconds: float = 0.25) -> float:
    """FLOP/s of a square matmul in ``dtype`` on this process's threads: the best of repeated timings over about
    ``seconds`` (the first, warming up, is dropped)."""
    import torch

    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    a @ b
    best, spent = float("inf"), 0.0
    while spent < seconds:
        start = time.perf_counter()
        a @ b
        took = time.perf_counter() - start
        best, spent = min(best, took), spent + took
    return 2 * size ** 3 / best


def stage_flops(config, shape: flops.Shape, upstream: dict | None = None) -> float | None:
    """The matmul FLOPs of one stage at its recipe settings; ``upstream`` maps the names in ``from`` to their
    configs (PPO's value model stands on the reward model's adapter). None where not modelled."""
    kind = config.kind
    if kind in ("evaluate", "preferences"):
        count = config.n if kind == "evaluate" else (config.n_prompts or 256) * config.k
        new = config.sampling.max_new_tokens
        cost = sum(flops.sampling(shape, count, PROMPT_TOKENS, new).values())
        if kind == "evaluate" and config.from_:  # the KL pass to the starting policy (none for the base model)
            cost += 2 * flops.lm_forward(shape, count * (PROMPT_TOKENS + new), PROMPT_TOKENS + new, count * new)
        return cost
    train = getattr(config, "train", None)
    if train is None or train.max_steps < 1:
        return None
    steps = train.max_steps
    rows = train.batch_size * train.gradient_accumulation_steps
    lora = flops.Lora.of(shape, config.lora)
    if kind == "sft":
        return steps * sum(flops.lm_training(shape, rows * config.max_length, config.max_length, lora).values())
    if kind == "reward":
        return steps * sum(flops.score_training(shape, 2 * rows * config.max_length, config.max_length,
                                                lora).values())
    if kind == "dpo":
        return steps * sum(flops.dpo_training(shape, 2 * rows * config.max_length, config.max_length, lora,
                                              config.precompute_ref_log_probs, config.share_trunk).values())
    if kind == "ppo":
        value = flops.Lora.of(shape, config.value_lora)
        reward_config = (upstream or {}).get(config.from_[1])
        reward = flops.Lora.of(shape, reward_config.lora) if reward_config is not None else None
        guard = train.batch_size if config.kl.guard is not None else 0
        args = (shape, config.rollout_batch_size, PROMPT_TOKENS, config.sampling.max_new_tokens, lora, value)
        step = flops.ppo_training_shared(*args, reward, config.ppo_epochs, guard) if config.share_trunk \
            else flops.ppo_training(*args, config.ppo_epochs, guard)
        return steps * sum(step.values())
    if kind in ("grpo", "rloo"):
        new = config.max_completion_length
        tokens, keys = rows * (PROMPT_TOKENS + new), PROMPT_TOKENS + new
        step = sum(flops.sampling(shape, rows, PROMPT_TOKENS, new, lora).values()) \
            + config.num_iterations * sum(flops.lm_training(shape, tokens, keys, lora, rows * new).values()) \
            + (flops.lm_forward(shape, tokens, keys, rows * new) if config.beta > 0 else 0.0)
        return steps * step
    return None


def estimate(config, shape: flops.Shape, rate: float, upstream: dict | None = None) -> Estimate:
    """Expected seconds of one stage on a machine whose matmul probe gives ``rate`` FLOP/s in the run's dtype."""
    cost = stage_flops(config, shape, upstream)
    if cost is None or config.kind not in EFFICIENCY:
        return Estimate(None, cost)
    return Estimate(FIXED_SECONDS[config.kind] + cost / (rate * EFFICIENCY[config.kind]), cost)

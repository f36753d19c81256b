"""How long a stage will take here before it has ever run here: the matmul FLOPs its work asks for (each kind's
``work_flops``, counted with flops.py at the recipe's settings) over this CPU's matmul rate in the run's dtype (a probe
of a quarter of a second) and the share of that rate the kind reached in a measured run, plus its fixed seconds for
loading and saving (each kind's ``time_fit``).

A planning figure, not a promise: sequence lengths are taken at the recipe's limits (``max_length``,
``max_new_tokens``) and prompts at PROMPT_TOKENS, and the fitted shares absorb how far real data falls short of them
on the recipe they were fitted on: rlhf.yaml, run of 2026-12-06 at b6f93db on a 2-core AMD EPYC (AVX-512,
AVX512-BF16), bf16, where this probe gave REFERENCE_RATE. Once a stage has run here, the runner's ETA uses its
measured time instead (pipeline/graph/eta.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from . import flops

PROMPT_TOKENS = 32
"""Rendered prompt length assumed for sampling stages (rlhf.yaml's movie prompts are 20-30 tokens)."""

REFERENCE_RATE = 387e9
"""This probe's bf16 rate on the machine the kinds' time_fit were fitted on: its 2048^3 probe gave 365 GFLOP/s, and
this 1024^3 one gives 1.06x that on a sibling machine (AMD EPYC family 25 model 17: 440 against 416, 2026-12-06)."""


@dataclass(frozen=True)
class Estimate:
    """A stage's expected seconds and the FLOPs they come from (None where the kind or its settings are not
    modelled: training for a number of epochs of data the plan does not read)."""

    seconds: float | None
    flop: float | None


def matmul_rate(dtype, size: int = 1024, seconds: float = 0.25) -> float:
    """FLOP/s of a square matmul in ``dtype`` on this process's threads: the best of repeated timings over about
    ``seconds`` (a first one warms up)."""
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


def sampled(shape: flops.Shape, count: int, new_tokens: int, lora: flops.Lora | None = None) -> float:
    """FLOPs of sampling ``new_tokens`` for each of ``count`` prompts of PROMPT_TOKENS."""
    return sum(flops.sampling(shape, count, PROMPT_TOKENS, new_tokens, lora).values())


def training_steps(train) -> tuple[int, int] | None:
    """(optimizer steps, sequences a step) of a stage's ``train`` settings; None when it runs for epochs."""
    if train.max_steps < 1:
        return None
    return train.max_steps, train.batch_size * train.gradient_accumulation_steps


def estimate(config, shape: flops.Shape, rate: float, upstream: dict | None = None) -> Estimate:
    """Expected seconds of one stage on a machine whose matmul probe gives ``rate`` FLOP/s in the run's dtype."""
    cost = config.work_flops(shape, upstream or {})
    if cost is None or config.time_fit is None:
        return Estimate(None, cost)
    share, fixed = config.time_fit
    return Estimate(fixed + cost / (rate * share), cost)

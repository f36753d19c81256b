"""Evaluating a policy: sample from it, score the samples with a gold judge, and report the judge's score next to the
KL from a reference and the diversity of the samples (a judge is easy to game; the other two show the price paid).

torch is imported inside the functions, so ``EvalSettings`` can be used in a recipe schema cheaply.
"""

from __future__ import annotations

import math

from pydantic import Field, field_validator

from .errors import PipelineError
from .generation import SamplingSettings, completion_logprobs, generate
from .judges import check_judge_spec, make_judge
from .schema import Strict


class EvalSettings(Strict):
    """Sampling from the policy on held-out prompts and scoring the samples with a gold judge."""

    prompts: str
    """Path of the data card of the evaluation prompts."""
    n: int = Field(256, ge=1)
    """Number of prompts used (the first n of the card's prompts)."""
    judge: str = "vader"
    """Gold judge: "vader" (sentiment compound of the completion, -1..1), or "module:function" (a Python function
    taking (prompts, completions) and returning one float per completion, imported, never evaluated)."""
    threshold: float = 0.5
    """gold_share_above reports the share of samples whose gold score is above this."""
    sampling: SamplingSettings = Field(default_factory=SamplingSettings)
    """How the policy's completions are sampled."""
    seed: int = 1234
    """Seed of the sampling (batch i is seeded with seed + i) and of the bootstrap resampling."""
    bootstrap: int = Field(1000, ge=1)
    """Bootstrap resamples for the 95% confidence intervals of the means."""

    @field_validator("judge")
    @classmethod
    def _usable_judge(cls, spec: str) -> str:
        problem = check_judge_spec(spec)
        if problem is not None:
            raise ValueError(problem)
        return spec.strip()


def bootstrap_ci(values: list[float], resamples: int, seed: int) -> list[float]:
    """95% percentile-bootstrap interval [lo, hi] of the mean of ``values``: ``resamples`` resamples with
    replacement from a numpy Generator seeded with ``seed``, then the 2.5th and 97.5th percentiles of their means."""
    import numpy as np

    data = np.asarray(values, dtype=np.float64)
    if data.ndim != 1 or data.size == 0:
        raise ValueError("bootstrap_ci needs a non-empty list of numbers")
    if resamples < 1:
        raise ValueError("bootstrap_ci needs at least one resample")
    rng = np.random.default_rng(seed)
    chunk = max(1, 2**22 // data.size)  # bound the index matrix to about 32 MB
    means = []
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        means.append(data[rng.integers(0, data.size, size=(rows, data.size))].mean(axis=1))
    lo, hi = np.percentile(np.concatenate(means), [2.5, 97.5])
    return [float(lo), float(hi)]


def distinct_n(texts: list[str], n: int) -> float:
    """Unique n-grams / total n-grams over all ``texts`` (whitespace tokens; n-grams never span two texts).
    0.0 when there are no n-grams at all."""
    if n < 1:
        raise ValueError("n must be at least 1")
    total = 0
    unique: set[tuple[str, ...]] = set()
    for text in texts:
        words = text.split()
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else 0.0


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values)


def evaluate(policy, reference, tokenizer, prompts: list[str], settings: EvalSettings) -> tuple[dict, list[dict]]:
    """Sample from ``policy`` on the first ``settings.n`` prompts, score with the gold judge, estimate the KL to
    ``reference``; returns (metrics, samples).

    The KL of a sample y is sum_t [log policy(y_t) - log reference(y_t)] (teacher forcing, temperature 1); its mean
    over samples estimates KL(policy || reference) when sampling uses the defaults (temperature 1, no top-p/top-k).
    When ``reference`` is None or is ``policy`` itself, every KL is exactly 0 and no reference pass is run.

    metrics: n, gold_mean, gold_ci95, gold_share_above, threshold, judge, kl_mean, kl_ci95, distinct_1, distinct_2,
    mean_length (completion tokens, EOS included), eos_rate. samples: [{prompt, completion, gold, kl, length}].
    """
    prompts = list(prompts)[: settings.n]
    if not prompts:
        raise PipelineError("evaluation needs at least one prompt; the prompt list is empty")
    judge = make_judge(settings.judge)  # before generating: a bad judge fails fast
    completions = generate(policy, tokenizer, prompts, settings.sampling, settings.seed, desc="eval: generating")
    if len(completions) != len(prompts):
        raise RuntimeError(f"generation returned {len(completions)} completions for {len(prompts)} prompts")
    texts = [c.completion for c in completions]
    gold = judge.score(prompts, texts)

    if reference is None or reference is policy:
        kl = [0.0] * len(completions)
    else:
        size = settings.sampling.batch_size
        policy_lp = completion_logprobs(policy, completions, size)
        reference_lp = completion_logprobs(reference, completions, size)
        kl = [float((p - r).sum()) for p, r in zip(policy_lp, reference_lp)]

    lengths = [len(c.completion_ids) for c in completions]
    metrics = {
        "n": len(completions),
        "gold_mean": _mean(gold),
        "gold_ci95": bootstrap_ci(gold, settings.bootstrap, settings.seed),
        "gold_share_above": sum(g > settings.threshold for g in gold) / len(gold),
        "threshold": settings.threshold,
        "judge": judge.name,
        "kl_mean": _mean(kl),
        "kl_ci95": bootstrap_ci(kl, settings.bootstrap, settings.seed),
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "mean_length": _mean(lengths),
        "eos_rate": sum(c.eos for c in completions) / len(completions),
    }
    samples = [
        {"prompt": c.prompt, "completion": c.completion, "gold": g, "kl": k, "length": length}
        for c, g, k, length in zip(completions, gold, kl, lengths)
    ]
    return metrics, samples

"""Settings of sampling and gold evaluation, as they appear in recipes (pydantic only: cheap to import)."""

from __future__ import annotations

from pydantic import Field, field_validator

from ..config.schema import Strict
from .judges import check_judge_spec


class SamplingSettings(Strict):
    """How completions are sampled. The defaults sample from the model's own distribution (temperature 1, no top-p or
    top-k truncation), which is what an unbiased KL estimate against a reference needs."""

    max_new_tokens: int = Field(32, ge=1)
    """Most tokens generated per completion (the end-of-sequence token included)."""
    temperature: float = Field(1.0, gt=0)
    """Softmax temperature when sampling; below 1 sharpens, above 1 flattens. Ignored when do_sample is false."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p (1 keeps all)."""
    top_k: int = Field(0, ge=0)
    """Keep only the k most likely tokens when sampling; 0 turns this off."""
    do_sample: bool = True
    """Sample (true) or decode greedily (false)."""
    batch_size: int = Field(16, ge=1)
    """Prompts per generation batch (also the batch size of the log-probability passes)."""


class EvalSettings(Strict):
    """Sampling from the policy on held-out prompts and scoring the samples with a gold judge."""

    prompts: str
    """Path of the data card of the evaluation prompts."""
    n: int = Field(256, ge=1)
    """Number of prompts used (the first n of the card's prompts)."""
    judge: str = "vader"
    """Gold judge: "vader" (sentiment compound of the completion, -1..1), or "module:function" (a Python function
    taking (prompts, completions) and returning one float per completion, imported, never evaluated)."""
    judges: list[str] = Field(default_factory=list)
    """More judges, each reported beside the gold judge with its mean and 95% CI (``judges`` in eval.json), so that
    a gain can be checked against a judge the policy was not optimised for. Same forms as ``judge``, plus
    "reward:STAGE" for a reward stage of this recipe."""
    threshold: float = 0.5
    """gold_share_above reports the share of samples whose gold score is above this."""
    sampling: SamplingSettings = Field(default_factory=SamplingSettings)
    """How the policy's completions are sampled."""
    seed: int = 1234
    """Seed of the sampling (prompt i draws from its own random stream, seeded from seed and i) and of the bootstrap
    resampling."""
    bootstrap: int = Field(1000, ge=1)
    """Bootstrap resamples for the 95% confidence intervals of the means."""

    @field_validator("judge")
    @classmethod
    def _usable_judge(cls, spec: str) -> str:
        problem = check_judge_spec(spec)
        if problem is not None:
            raise ValueError(problem)
        return spec.strip()

    @field_validator("judges")
    @classmethod
    def _usable_judges(cls, specs: list[str]) -> list[str]:
        for index, spec in enumerate(specs):
            if (problem := check_judge_spec(spec)) is not None:
                raise ValueError(f"judges[{index}]: {problem}")
        cleaned = [spec.strip() for spec in specs]
        if len(set(cleaned)) != len(cleaned):
            raise ValueError("judges: each judge once")
        return cleaned

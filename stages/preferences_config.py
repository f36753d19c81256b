"""Config of the `preferences` stage: sample k completions per prompt from a policy, judge them, keep clear pairs."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator

from pipeline.config.schema import ExistingPath, StageConfig
from pipeline.evaluation.judges import check_judge_spec
from pipeline.evaluation.settings import SamplingSettings


class PreferencesStageConfig(StageConfig):
    """Builds prompt/chosen/rejected pairs from the upstream policy's own samples, labelled by a judge."""

    kind: Literal["preferences"] = "preferences"
    prompts: ExistingPath
    """Data card of prompt-only rows (e.g. data_cards/movie_prompts.yaml); its train split is used."""
    n_prompts: int | None = Field(None, ge=1)
    """Use the first n_prompts prompts; default all."""
    k: int = Field(4, ge=2, le=64)
    """Completions sampled per prompt."""
    judge: str = "vader"
    """Who labels the samples: "vader", "module:function", or "reward" for the reward stage named in `from`."""
    pairs: Literal["best_worst", "all"] = "best_worst"
    """best_worst: one pair per prompt (highest vs lowest score); all: every pair of samples of a prompt."""
    min_margin: float = Field(0.1, ge=0)
    """A pair is kept only if the chosen score beats the rejected one by at least this; ties and near-ties are
    dropped and counted."""
    eval_fraction: float = Field(0.1, ge=0, lt=1)
    """Share of prompts whose pairs are held out (by prompt, so no prompt is on both sides)."""
    sampling: SamplingSettings = SamplingSettings()
    """How completions are sampled."""

    produces: ClassVar[str] = "preferences"
    accepts: ClassVar[dict[str, bool]] = {"policy": True, "reward_model": False}
    time_fit: ClassVar[tuple[float, float] | None] = (0.60, 0.5)

    def work_flops(self, shape, upstream: dict) -> float | None:
        from pipeline.models import duration

        return duration.sampled(shape, (self.n_prompts or 256) * self.k, self.sampling.max_new_tokens)

    @field_validator("judge")
    @classmethod
    def _judge(cls, spec: str) -> str:
        if spec != "reward" and (why := check_judge_spec(spec)) is not None:
            raise ValueError(why)
        return spec

    def input_problems(self, upstream: set[str]) -> list[str]:
        if self.judge == "reward" and "reward_model" not in upstream:
            return ["judge: reward needs a reward stage in `from`"]
        if self.judge != "reward" and "reward_model" in upstream:
            return ["a reward stage is named in `from` but judge is not 'reward'"]
        return []

    def data_inputs(self) -> list[tuple[str, object, str]]:
        return [("prompts", self.prompts, "prompt")]

    def judge_specs(self) -> list[tuple[str, str]]:
        return [] if self.judge == "reward" else [("judge", self.judge)]


CONFIG = PreferencesStageConfig

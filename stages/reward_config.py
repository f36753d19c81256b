"""Config of the `reward` stage: a pairwise (Bradley-Terry) reward model on TRL's RewardTrainer."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from pipeline.config.schema import LoraSettings, TrainSettings
from pipeline.training.pairwise_config import PairwiseStageConfig


class RewardStageConfig(PairwiseStageConfig):
    """A sequence-classification head on the upstream policy (or base model), trained on preference pairs."""

    kind: Literal["reward"] = "reward"
    lora: LoraSettings | None = LoraSettings()
    """LoRA adapter settings (the score head is always trained in full); null trains every weight."""
    train: TrainSettings = TrainSettings(learning_rate=1e-4)
    """Optimisation settings."""
    max_length: int = Field(256, ge=8)
    """Token length at which chosen/rejected conversations are truncated."""
    use_margin: bool = False
    """Subtract each pair's score margin inside the loss (-log sigmoid(r_c - r_r - margin)), as in Llama 2."""
    center_rewards_coefficient: float | None = Field(None, ge=0)
    """Weight of the penalty on the mean squared reward, which keeps rewards centred on zero (Eisenstein et al.)."""
    ensemble: int = Field(1, ge=1, le=64)
    """Score heads trained side by side on one trunk, each from its own random initialisation, each with the
    pairwise loss (an ensemble at the cost of one reward model; Coste et al. 2023 ensemble whole models, which
    disagree more). The artifact is a sequence classifier with this many outputs; its score is their mean, and ppo
    can penalise their disagreement (``ensemble_penalty``)."""

    produces: ClassVar[str] = "reward_model"
    time_fit: ClassVar[tuple[float, float] | None] = (0.89, 2.0)

    def work_flops(self, shape, upstream: dict) -> float | None:
        from pipeline.models import flops

        if (steps := self.pair_steps()) is None:
            return None
        lora = flops.Lora.of(shape, self.lora)
        return steps[0] * sum(flops.score_training(shape, steps[1], self.max_length, lora).values())


CONFIG = RewardStageConfig

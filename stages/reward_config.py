"""Config of the `reward` stage: a pairwise (Bradley-Terry) reward model on TRL's RewardTrainer."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from pipeline.config.schema import LoraSettings, MemoryProfile, StageConfig, TrainSettings, preference_data_problems
from pipeline.data.settings import DataSettings


class RewardStageConfig(StageConfig):
    """A sequence-classification head on the upstream policy (or base model), trained on preference pairs."""

    kind: Literal["reward"] = "reward"
    data: DataSettings | None = None
    """Preference data card; default: the pairs of the preferences stage named in `from`."""
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

    produces: ClassVar[str] = "reward_model"
    accepts: ClassVar[dict[str, bool]] = {"policy": True, "preferences": False}

    def input_problems(self, upstream: set[str]) -> list[str]:
        return preference_data_problems(self.data, upstream)

    def data_inputs(self) -> list[tuple[str, object, str]]:
        return [("data", self.data, "preference")] if self.data else []

    def input_files(self) -> list[Path]:
        return self.data.files() if self.data else []

    def trained_models(self) -> dict[str, LoraSettings | None]:
        return {"lora": self.lora}

    def memory_profile(self) -> MemoryProfile:
        return MemoryProfile(self.train.model_copy(update={"batch_size": 2 * self.train.batch_size}), self.lora,
                             self.max_length)


CONFIG = RewardStageConfig

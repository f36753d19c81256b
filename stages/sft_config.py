"""Config of the `sft` stage: supervised fine-tuning on chat or prompt/completion data, with LoRA or in full."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from pipeline.config.schema import LoraSettings, MemoryProfile, StageConfig, TrainSettings
from pipeline.data.settings import DataSettings


class SFTStageConfig(StageConfig):
    """Instruction tuning with TRL's SFTTrainer. Starts from the base model or an upstream policy."""

    kind: Literal["sft"] = "sft"
    data: DataSettings
    """Training data: rows of `messages` (chat) or `prompt` + `completion`."""
    lora: LoraSettings | None = LoraSettings()
    """LoRA adapter settings; null trains every weight (full fine-tuning)."""
    train: TrainSettings = TrainSettings()
    """Optimisation settings."""
    max_length: int = Field(512, ge=8)
    """Token length at which examples are truncated."""
    packing: bool = False
    """Pack several examples into each max_length sequence (faster on short data; loss stays per example)."""
    loss_on: Literal["completion", "all"] = "completion"
    """completion: loss on assistant turns / the completion only; all: on every token."""
    merge: bool = False
    """Also write merged full weights under merged/ (needed by tools that cannot apply an adapter)."""

    produces: ClassVar[str] = "policy"
    accepts: ClassVar[dict[str, bool]] = {"policy": True}

    def data_inputs(self) -> list[tuple[str, object, str]]:
        return [("data", self.data, "chat")]

    def trained_models(self) -> dict[str, LoraSettings | None]:
        return {"lora": self.lora}

    def writes_merged(self) -> bool:
        return self.merge

    time_fit: ClassVar[tuple[float, float] | None] = (0.34, 2.0)

    def work_flops(self, shape, upstream: dict) -> float | None:
        from pipeline.models import duration, flops

        steps = duration.training_steps(self.train)
        if steps is None:
            return None
        step = flops.lm_training(shape, steps[1] * self.max_length, self.max_length, flops.Lora.of(shape, self.lora))
        return steps[0] * sum(step.values())

    def memory_profile(self) -> MemoryProfile:
        return MemoryProfile(self.train, self.lora, self.max_length)


CONFIG = SFTStageConfig

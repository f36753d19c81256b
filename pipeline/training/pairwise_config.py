"""The config fields and answers the stages that train on preference pairs (`reward`, `dpo`, `kto`) share (pydantic
only: cheap to import)."""

from __future__ import annotations

from typing import ClassVar

from ..config.schema import LoraSettings, MemoryProfile, StageConfig, TrainSettings
from ..data.settings import DataSettings


class PairwiseStageConfig(StageConfig):
    """A stage that trains the upstream policy (or the base model) on prompt/chosen/rejected pairs, read from a card
    or from an upstream preferences stage."""

    data: DataSettings | None = None
    """Preference data card; default: the pairs of the preferences stage named in `from`."""
    # Each kind declares these itself: their defaults and documentation differ.
    lora: LoraSettings | None
    train: TrainSettings
    max_length: int

    accepts: ClassVar[dict[str, bool]] = {"policy": True, "preferences": False}

    def input_problems(self, upstream: set[str]) -> list[str]:
        """Exactly one of `data:` or an upstream preferences stage."""
        if self.data is None and "preferences" not in upstream:
            return ["needs preference data: name a preferences stage in `from`, or set `data:` to a card"]
        if self.data is not None and "preferences" in upstream:
            return ["preference data given twice: both `data:` and a preferences stage in `from`"]
        return []

    def data_inputs(self) -> list[tuple[str, object, str]]:
        return [("data", self.data, "preference")] if self.data else []

    def trained_models(self) -> dict[str, LoraSettings | None]:
        return {"lora": self.lora}

    def pair_steps(self) -> tuple[int, int] | None:
        """(optimizer steps, tokens a step: every pair's chosen and rejected at max_length) for ``work_flops``; None
        when the stage runs for epochs."""
        from ..models import duration

        steps = duration.training_steps(self.train)
        return None if steps is None else (steps[0], 2 * steps[1] * self.max_length)

    def memory_profile(self) -> MemoryProfile:
        # chosen and rejected of each pair go through the model together: twice the micro-batch
        return MemoryProfile(self.train.model_copy(update={"batch_size": 2 * self.train.batch_size}), self.lora,
                             self.max_length)


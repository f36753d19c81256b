"""Config of the `kto` stage: Kahneman-Tversky optimisation from unpaired desirable/undesirable labels against a
frozen reference (TRL's KTOTrainer)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from pipeline.config.schema import FrozenReferencePolicy, LoraSettings, TrainSettings
from pipeline.training.pairwise_config import PairwiseStageConfig


class KTOStageConfig(FrozenReferencePolicy, PairwiseStageConfig):
    """Reads the same preference pairs as `dpo` (a preferences stage in `from`, or `data:`) and unpairs them: every
    chosen completion is desirable, every rejected one undesirable, each completion once (a completion chosen in one
    pair and rejected in another has no label and is left out). The reference is the starting policy, frozen: with
    LoRA the weights with the adapter disabled."""

    kind: Literal["kto"] = "kto"
    lora: LoraSettings | None = LoraSettings()
    """LoRA adapter settings; null trains every weight (and keeps a frozen copy as reference)."""
    train: TrainSettings = TrainSettings(learning_rate=5e-5)
    """Optimisation settings (train.batch_size: KTO's KL estimate pairs each prompt with another row's completion,
    so it needs at least 2)."""
    max_length: int = Field(256, ge=8)
    """Token length at which prompt + completion is truncated."""
    beta: float = Field(0.1, gt=0)
    """Strength of the implicit KL constraint to the reference (higher stays closer)."""
    loss_type: Literal["kto", "apo_zero_unpaired"] = "kto"
    """kto: the KTO paper's loss; apo_zero_unpaired: the unpaired APO-zero loss."""
    desirable_weight: float = Field(1.0, gt=0)
    """Weight of the desirable examples' loss (KTO's paper keeps desirable x count within 1-4/3 of undesirable x
    count)."""
    undesirable_weight: float = Field(1.0, gt=0)
    """Weight of the undesirable examples' loss."""
    reference: Literal["auto", "copy"] = "auto"
    """auto: with LoRA the reference is the starting weights with the adapter disabled (no second copy); with full
    fine-tuning a frozen copy. copy: always keep an explicit frozen copy (twice the weight memory)."""
    merge: bool = False
    """Also write merged full weights under merged/."""

    produces: ClassVar[str] = "policy"
    time_fit: ClassVar[tuple[float, float] | None] = (0.41, 2.0)  # DPO's (the same passes a token), until measured

    def input_problems(self, upstream: set[str]) -> list[str]:
        problems = super().input_problems(upstream)
        if self.train.batch_size < 2:
            problems.append("train.batch_size must be at least 2: KTO's KL estimate pairs each prompt with another "
                            "row's completion")
        return problems

    def pair_steps(self) -> tuple[int, int] | None:
        """(optimizer steps, tokens a step: each row's completion and the mismatched one of its KL estimate)."""
        from pipeline.models import duration

        steps = duration.training_steps(self.train)
        return None if steps is None else (steps[0], 2 * steps[1] * self.max_length)

    def work_flops(self, shape, upstream: dict) -> float | None:
        from pipeline.models import flops

        if (steps := self.pair_steps()) is None:
            return None
        # the policy on the rows (trained) and on the mismatched rows (KL estimate, no gradient), the reference on
        # both: within a few per cent of a DPO step on as many tokens
        return steps[0] * sum(flops.dpo_training(shape, steps[1], self.max_length,
                                                 flops.Lora.of(shape, self.lora)).values())


CONFIG = KTOStageConfig

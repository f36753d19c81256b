"""Config of the `dpo` stage: direct preference optimisation against a frozen reference (TRL's DPOTrainer)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from pipeline.config.schema import FrozenReferencePolicy, LoraSettings, TrainSettings
from pipeline.training.pairwise_config import PairwiseStageConfig

LossType = Literal["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                   "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"]


class DPOStageConfig(FrozenReferencePolicy, PairwiseStageConfig):
    """The policy starts from the upstream policy; the frozen reference is that same policy: with LoRA, the
    weights with the new adapter disabled (one copy in memory); with full fine-tuning, an explicit frozen copy."""

    kind: Literal["dpo"] = "dpo"
    lora: LoraSettings | None = LoraSettings()
    """LoRA adapter settings; null trains every weight (and keeps a frozen copy as reference)."""
    train: TrainSettings = TrainSettings(learning_rate=5e-5)
    """Optimisation settings."""
    max_length: int = Field(256, ge=8)
    """Token length at which prompt + completion is truncated."""
    beta: float = Field(0.1, gt=0)
    """Strength of the implicit KL constraint to the reference (higher stays closer)."""
    loss_type: LossType | list[LossType] = "sigmoid"
    """DPO loss (sigmoid is the paper's), or several combined with loss_weights. All of TRL's are offered."""
    loss_weights: list[float] | None = None
    """Weights of the loss types when several are given."""
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    """Assumed label-noise rate (conservative DPO / robust loss)."""
    reference: Literal["auto", "copy"] = "auto"
    """auto: with LoRA the reference is the starting weights with the adapter disabled (no second copy); with full
    fine-tuning a frozen copy. copy: always keep an explicit frozen copy (twice the weight memory)."""
    precompute_ref_log_probs: bool = False
    """Compute the reference log-probs once before training (the reference then never runs during training)."""
    share_trunk: bool = True
    """With a layer-selective LoRA (lora.layers), the reference pass starts from the policy pass's hidden states below
    the lowest adapted layer instead of recomputing them (exact: those layers are the same weights, without dropout;
    off by itself, and logged, where it would not be: all-layer LoRA, a reference copy, dropout, quantised weights)."""
    merge: bool = False
    """Also write merged full weights under merged/."""

    produces: ClassVar[str] = "policy"
    time_fit: ClassVar[tuple[float, float] | None] = (0.41, 2.0)

    def work_flops(self, shape, upstream: dict) -> float | None:
        from pipeline.models import flops

        if (steps := self.pair_steps()) is None:
            return None
        step = flops.dpo_training(shape, steps[1], self.max_length, flops.Lora.of(shape, self.lora),
                                  self.precompute_ref_log_probs, self.share_trunk)
        return steps[0] * sum(step.values())


CONFIG = DPOStageConfig

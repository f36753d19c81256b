"""Config of the `grpo` stage: group relative policy optimisation against a learned reward model (TRL's
GRPOTrainer)."""

from __future__ import annotations

from typing import Literal

from pipeline.training.online_config import OnlineStageConfig

LossType = Literal["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo"]


class GRPOStageConfig(OnlineStageConfig):
    """GRPO (DeepSeekMath): the policy samples num_generations completions per prompt, the reward stage's model scores
    each, and a completion's advantage is its reward minus its group's mean (divided by the group's standard deviation
    with scale_rewards: group); a clipped policy-gradient loss, plus beta x a per-token KL estimate (k3) to the frozen
    starting policy, updates the policy. No value model."""

    kind: Literal["grpo"] = "grpo"
    loss_type: LossType = "dapo"
    """How token losses are averaged (TRL's names): grpo (per completion, then over completions: the paper's, with
    a length bias), dapo (over every token of the step's batch; TRL's default), dr_grpo (over a constant,
    max_completion_length), bnpo (over the tokens of each micro-batch), cispo and sapo (other clipping schemes)."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """Divide advantages by the standard deviation of the group's rewards (group, the paper's), of the whole batch
    (batch), or not at all (none, as Dr. GRPO recommends)."""


CONFIG = GRPOStageConfig

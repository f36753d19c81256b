"""The `grpo` stage: TRL's GRPOTrainer from the upstream policy, rewarded by the upstream reward stage's model."""

from __future__ import annotations

from trl import GRPOConfig, GRPOTrainer

from pipeline.contract import StageContext, StageResult
from pipeline.training.online import train_online

from .grpo_config import GRPOStageConfig


def run(ctx: StageContext) -> StageResult:
    config: GRPOStageConfig = ctx.config
    return train_online(ctx, config, GRPOConfig, GRPOTrainer, loss_type=config.loss_type,
                        scale_rewards=config.scale_rewards)

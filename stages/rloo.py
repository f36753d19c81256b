"""The `rloo` stage: TRL's RLOOTrainer from the upstream policy, rewarded by the upstream reward stage's model."""

from __future__ import annotations

from trl import RLOOConfig, RLOOTrainer

from pipeline.contract import StageContext, StageResult
from pipeline.training.online import train_online

from .rloo_config import RLOOStageConfig


def run(ctx: StageContext) -> StageResult:
    config: RLOOStageConfig = ctx.config
    return train_online(ctx, config, RLOOConfig, RLOOTrainer, normalize_advantages=config.normalize_advantages)

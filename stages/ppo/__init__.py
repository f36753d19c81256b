"""The `ppo` stage: RLHF with PPO on accelerate, written here because TRL 1.13+ ships no PPOTrainer.

``loop`` runs it (setup, rollout, scoring, updates); ``rollout`` holds the rollout tensors and the prompt schedule,
``models`` the policy+value module and optimizer, ``checkpoint`` the resumable checkpoints. The config is
``stages/ppo_config.py``.
"""

from __future__ import annotations

from pipeline.contract import StageContext, StageResult

from .loop import PPORun


def run(ctx: StageContext) -> StageResult:
    ppo = PPORun(ctx)
    metrics = ppo.train()
    return StageResult(ppo.save(), metrics)

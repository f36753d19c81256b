"""The `ppo` stage: RLHF with PPO on accelerate, written here because TRL 1.13+ ships no PPOTrainer.

``loop`` runs it as named steps (``make_experience``: sample, score, shape, advantages; ``update``; ``step_metrics``);
``setup`` loads the models and makes the accelerator and schedule; ``experience`` is the typed state of one step;
``kl_guard`` the guard that undoes updates leaving the KL band; ``rollout`` holds the rollout tensors and the prompt
schedule, ``models`` the policy+value module and optimizer, ``trunk`` the shared frozen layers, ``checkpoint`` the
resumable checkpoints. The config is ``stages/ppo_config.py``.
"""

from __future__ import annotations

from pipeline.contract import StageContext, StageResult

from .loop import PPORun


def run(ctx: StageContext) -> StageResult:
    ppo = PPORun(ctx)
    metrics = ppo.train()
    return StageResult(ppo.save(), metrics)

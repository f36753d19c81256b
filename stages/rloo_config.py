"""Config of the `rloo` stage: REINFORCE leave-one-out against a learned reward model (TRL's RLOOTrainer)."""

from __future__ import annotations

from typing import Literal

from pipeline.training.online_config import OnlineStageConfig


class RLOOStageConfig(OnlineStageConfig):
    """RLOO (Ahmadian et al.): the policy samples num_generations completions per prompt, the reward stage's model
    scores each, beta x the completion's KL to the frozen starting policy (the sum over its tokens of log p - log
    p_ref) is subtracted from its reward, and its
    advantage is that reward minus the mean reward of the other completions of its prompt (leave-one-out baseline);
    a clipped policy-gradient loss updates the policy. No value model."""

    kind: Literal["rloo"] = "rloo"
    normalize_advantages: bool = False
    """Scale the advantages of each batch of completions to mean 0 and standard deviation 1."""


CONFIG = RLOOStageConfig

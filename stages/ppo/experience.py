"""One PPO step's experience: the rollout as sampled and scored, its shaped rewards and advantages (the loop's
``make_experience`` builds it, ``update`` trains on it). B is this process's rollout rows, T the response columns
(``Rollout``: responses right-padded, so column t is every row's t-th response token)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.evaluation.generation import Completion
from pipeline.evaluation.metrics import repeats_itself

from ..ppo_config import PPOStageConfig
from .rollout import Rollout


@dataclass
class ScoredRollout:
    """A rollout as sampled and scored without gradients (the loop's ``score``)."""

    batch: Rollout
    """The prompt + response tokens, [B, prompt width + T]."""
    logprobs: torch.Tensor
    """[B, T] the sampling policy's log-probs of the response tokens (0 on padding)."""
    ref_logprobs: torch.Tensor
    """[B, T] the frozen reference's log-probs of the same tokens (0 on padding)."""
    values: torch.Tensor
    """[B, T] the value model's estimates (0 on padding)."""
    raw_scores: torch.Tensor
    """[B] the reward model's score of each whole response (an ensemble's: the mean of its heads)."""
    score_std: torch.Tensor
    """[B] the standard deviation of an ensemble reward model's heads for each response (0 with one head)."""
    trunk_cache: dict[str, torch.Tensor] | None
    """With trunk sharing: the frozen layers' output per model ("policy", "value"), [B, width, hidden], so updates
    recompute only the layers above (stages/ppo/trunk.py); None without."""


@dataclass
class Experience(ScoredRollout):
    """A scored rollout with what training on it needs: shaped scores, KL penalty, advantages, returns."""

    prompts: list[str]
    completions: list[Completion]
    scores: torch.Tensor
    """[B] the scores after shaping (penalties, normalisation, clipping)."""
    penalty: torch.Tensor
    """[B, T] the per-token KL estimate the reward is penalised by."""
    advantages: torch.Tensor
    """[B, T] whitened GAE advantages."""
    returns: torch.Tensor
    """[B, T] the value model's targets."""
    kl: float
    """The mean over all processes of each response's summed log-ratio to the reference."""
    kl_per_response: torch.Tensor
    """[B] each response's summed log-ratio to the reference."""
    generate_time_s: float

    @property
    def mask(self) -> torch.Tensor:
        """[B, T] 1.0 on real response tokens."""
        return self.batch.response_mask.float()

    @property
    def rows(self) -> int:
        return self.batch.input_ids.shape[0]


def penalised_scores(raw: torch.Tensor, completions: list[Completion], config: PPOStageConfig) -> torch.Tensor:
    """The reward model's scores less the configured penalties: missing_eos_penalty for a response that never
    ended, repetition_penalty for one that repeats a content word (documented reward shaping)."""
    scores = raw.clone()
    if config.missing_eos_penalty is not None:
        ended = torch.tensor([c.eos for c in completions], device=scores.device)
        scores = torch.where(ended, scores, scores - config.missing_eos_penalty)
    if config.repetition_penalty is not None:
        repeats = torch.tensor([repeats_itself(c.completion) for c in completions], device=scores.device)
        scores = torch.where(repeats, scores - config.repetition_penalty, scores)
    return scores

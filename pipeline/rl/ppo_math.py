"""The arithmetic of RLHF PPO, on plain tensors: KL estimators, per-token rewards, GAE, clipped losses, the KL
controllers. No models here, so every function is checked against hand-computed values in
tests/unit/rl/test_ppo_math.py.

Shapes: ``[batch, response_length]`` tensors with a 0/1 (or bool) ``mask`` marking real response tokens; padding
only ever follows a response's last token. Conventions follow Ziegler et al. (2019), InstructGPT and the
"N+ implementation details of RLHF with PPO" study of TRL's PPOv2 trainer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

KLEstimator = Literal["k1", "k2", "k3"]


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the masked-in entries (0 if there are none)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over the masked-in entries (Bessel-corrected when ``unbiased`` and there are at least two)."""
    mask = mask.to(values.dtype)
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    count = mask.sum()
    if unbiased and count > 1:
        var = var * count / (count - 1)
    return var


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Scale to unit variance over the masked-in entries, and centre on 0 when ``shift_mean``. Masked-out entries
    come back as 0."""
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(values.dtype)


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: KLEstimator = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from tokens sampled from the policy.

    k1 = log p - log q (unbiased, can be negative per token); k2 = (log p - log q)^2 / 2 (biased, low variance);
    k3 = (q/p - 1) - log(q/p) (unbiased and never negative; Schulman's "approximating KL divergence").
    All three are exactly 0 where the policy equals the reference.
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r} (k1, k2 or k3)")


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, kl_coef: float, mask: torch.Tensor) -> torch.Tensor:
    """Per-token rewards: -kl_coef * KL on every response token, plus the sequence's score on its last token."""
    # lengths are counted in integers: in bf16 a sum of 257 ones is 256, which would put the score a token early
    lengths = mask.long().sum(-1)
    mask = mask.to(kl.dtype)
    rewards = -kl_coef * kl * mask
    last = (lengths - 1).clamp(min=0)
    rows = torch.arange(len(scores), device=rewards.device)
    # an empty response (length 0) has no token to carry the score
    rewards[rows, last] += scores.to(rewards.dtype) * (lengths > 0).to(rewards.dtype)
    return rewards


def kl_drift(logprobs: torch.Tensor, old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor
             ) -> torch.Tensor:
    """Per response, how far its KL to the reference has moved since the rollout, estimated from the rollout's own
    tokens by importance weighting: sum_t [ratio_t x (log p_t - log q_t) - (log p_old_t - log q_t)], with
    ratio_t = p_t / p_old_t (the per-token weighting of PPO's surrogate, first-order in the change of the policy).
    Exactly 0 while the policy has not moved."""
    mask = mask.to(logprobs.dtype)
    ratio = torch.exp(logprobs - old_logprobs)
    now = ratio * (logprobs - ref_logprobs)
    return ((now - (old_logprobs - ref_logprobs)) * mask).sum(-1)


def leaves_band(predicted: float, rollout_kl: float, target: float, guard: float, reached: bool = True) -> bool:
    """Whether an update carried the KL out of the band [target / guard, guard x target]: above it, or further
    above than the step's rollout measured it; or, once the KL has first reached the band (``reached``: until then
    the policy warms up from the reference), from inside the band to below it. A KL already below the band may move
    either way: refusing "further below" there held rlhf.yaml's bf16 policy at KL 6-9 with no update kept for 12
    steps (the prediction's noise decides the sign of a small move), and the reward pulls the KL up by itself."""
    upper, lower = guard * target, target / guard
    return predicted > max(upper, rollout_kl) or (reached and rollout_kl >= lower and predicted < lower)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over each response; returns (advantages, returns).

    delta_t = r_t + gamma * V_{t+1} - V_t and A_t = delta_t + gamma * lambda * A_{t+1}, with V and A taken as 0 past
    the last response token (the episode ends there). returns = advantages + values is the value target.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    steps = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(steps)):
        next_value = values[:, t + 1] if t + 1 < steps else torch.zeros_like(values[:, t])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
    return advantages, advantages + values


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                cliprange: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate: mean over tokens of max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)).

    Also returns detached diagnostics: clipfrac (share of tokens where the clipped term won), approxkl
    (mean of (log ratio)^2 / 2) and the mean ratio.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).float(), mask),
            "approxkl": masked_mean(0.5 * log_ratio**2, mask),
            "ratio": masked_mean(ratio, mask),
        }
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               cliprange_value: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss: 0.5 * mean over tokens of max((V - R)^2, (clip(V, V_old +- eps) - R)^2)."""
    clipped_values = torch.clamp(values, old_values - cliprange_value, old_values + cliprange_value)
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped_loss, clipped_loss), mask)
    with torch.no_grad():
        stats = {"vf_clipfrac": masked_mean((clipped_loss > unclipped_loss).float(), mask)}
    return loss, stats


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the softmax distribution at every position (last dimension = vocabulary)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(returns - values) / Var(returns) over the masked-in tokens: 1 is a perfect critic, 0 or less is no
    better than predicting the mean."""
    var_returns = masked_var(returns, mask)
    if var_returns.item() == 0:
        return float("nan")
    return (1 - masked_var(returns - values, mask) / var_returns).item()


@dataclass
class FixedKLController:
    """A constant KL coefficient; the base of the controllers whose only state is the coefficient."""

    value: float

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


@dataclass
class AdaptiveKLController(FixedKLController):
    """Ziegler et al.'s proportional controller: moves the coefficient so the measured KL tracks ``target``.

    error = clip(KL / target - 1, -0.2, 0.2); coef *= 1 + error * min(n_steps / horizon, 1), where n_steps is the
    number of samples the KL was measured on and horizon sets how fast the coefficient may move. The step fraction is
    capped at 1, so one update moves the coefficient by at most 20% and it stays positive (uncapped, a batch larger
    than 5 horizons would drive it to zero or below, which rewards KL).
    """

    target: float
    horizon: int

    def update(self, current_kl: float, n_steps: int) -> None:
        if not math.isfinite(current_kl):
            return
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * min(n_steps / self.horizon, 1.0)


@dataclass
class PIKLController:
    """A proportional-integral controller on log coef that holds the measured KL at ``target``.

    Warm-up: coef stays at its initial value until the KL first comes within ``REACHED`` of the target (the policy
    starts at KL 0, and lowering coef on the way up would only make it overshoot). Not the target itself: where the
    starting coef holds the KL a little below the target the controller would never engage (rlhf.yaml's PPO sat at
    KL 6-9 for 25 steps against a target of 10, its coef never moved). Then, each step,
    error_t = clip(KL_t / target - 1, -1, 1); I_t = clip(I_{t-1} + error_t, -WINDUP, WINDUP);
    coef_t = initial x exp(kp x error_t + ki x I_t). The log keeps coef positive and makes the response to a
    relative error the same at any scale; the integral term removes the steady offset a proportional controller
    keeps under constant reward pressure (the policy keeps pushing away from the reference, so a coef that merely
    reacts to the current error settles above the target); the clip on the integral bounds coef to
    initial x e^(+-ki x WINDUP) so a long stretch far from the target cannot wind it up beyond recovery.
    """

    initial: float
    target: float
    kp: float
    ki: float
    integral: float = 0.0
    reached: bool = False
    value: float = field(init=False)

    WINDUP = 20.0
    REACHED = 0.8
    """The warm-up ends once the KL is at or above this fraction of the target (within the 20% of it that counts as
    held)."""

    def __post_init__(self):
        self.value = self.initial

    def update(self, current_kl: float, n_steps: int) -> None:
        if not math.isfinite(current_kl):
            return
        if not self.reached:  # warm-up: the policy starts at KL 0; lowering coef on the way up only overshoots
            self.reached = current_kl >= self.REACHED * self.target
            if not self.reached:
                return
        error = min(max(current_kl / self.target - 1, -1.0), 1.0)
        self.integral = min(max(self.integral + error, -self.WINDUP), self.WINDUP)
        self.value = self.initial * math.exp(self.kp * error + self.ki * self.integral)

    def state_dict(self) -> dict:
        return {"value": self.value, "integral": self.integral, "reached": self.reached}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])
        self.integral = float(state.get("integral", 0.0))
        self.reached = bool(state.get("reached", False))


def kl_controller(coef: float, target: float | None, controller: str = "proportional", horizon: int = 10000,
                  kp: float = 1.0, ki: float = 0.5):
    """The KL coefficient's controller for these settings (fixed when there is no target)."""
    if target is None:
        return FixedKLController(coef)
    if controller == "pi":
        return PIKLController(coef, target, kp, ki)
    return AdaptiveKLController(coef, target, horizon)


class RunningMoments:
    """Running mean and standard deviation of scores over all rollouts so far (Chan et al.'s parallel update), for
    normalising scores to a stable scale across training."""

    def __init__(self) -> None:
        self.mean, self.var, self.count = 0.0, 1.0, 0

    def update(self, values: torch.Tensor) -> None:
        values = values.double().flatten()
        n = values.numel()
        if n == 0:
            return
        batch_mean, batch_var = values.mean().item(), values.var(unbiased=False).item()
        total = self.count + n
        delta = batch_mean - self.mean
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.var = m2 / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(max(self.var, 0.0))

    @property
    def scale(self) -> float:
        """What to divide scores by: the running std, or 1 while it is 0 (every score so far equal) or unknown; a
        floor of 1e-8 would blow equal first scores up by 10^8."""
        std = self.std
        return std if self.count > 1 and std > 1e-6 else 1.0

    def state_dict(self) -> dict:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var, self.count = float(state["mean"]), float(state["var"]), int(state["count"])

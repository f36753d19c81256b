"""kl.guard: hold the policy's KL to the reference inside the band [target / guard, guard x target] by undoing the
updates that carry it out (``ppo_math.leaves_band`` is the rule).

A controller of the KL coefficient acts on the KL the next rollout measures, after the policy has moved; the policy's
sudden jumps toward what the reward model likes are faster than that, so the guard acts inside the step: the loop
snapshots before each optimizer update, predicts the KL once the update has run, and asks ``keeps``; a refused update
is undone (the policy's weights, their optimizer state, the learning-rate schedule) and the step ends there.

Only the policy's half of an update is undone: the value model's half does not move the KL, and a value model frozen
with the policy would keep the advantages that made the refused update, so every later update could be refused too.

The prediction is first order and drawn from one micro-batch, so a step's updates can together carry the KL over the
band unseen. Above the band the guard then refuses every update that would raise the predicted KL further, and an
update's own second-order drift (its KL from the policy it left) is positive: once far enough above, every update can
be refused while the controller's coefficient winds up unused, and the policy stays where the overshoot left it (an
fp32 run of rlhf.yaml sat at KL 12-18 against a band of 8.7-11.5 for 37 steps, 23% of its samples repetitive). So
the guard keeps the last policy whose rollout measured the KL at or below the band's top, and when ``rollback_after``
rollouts in a row measure it above, restores that policy (weights and optimizer state); the step's experience, sampled
from the policy given up, is not trained on.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from pipeline.rl import ppo_math

PolicyState = dict[torch.nn.Parameter, tuple[torch.Tensor, dict]]
"""Each trainable weight of the policy: (its values, its optimizer state)."""


@dataclass
class _Snapshot:
    weights: PolicyState
    learning_rates: list[float]
    scheduler: dict


class KLGuard:
    """The guard of one PPO run: its band, whether the KL has reached it yet, the snapshot of the last update and
    that of the last policy inside the band."""

    def __init__(self, target: float, guard: float, policy_parameters: list[torch.nn.Parameter], optimizer,
                 scheduler, rollback_after: int | None = None):
        self.target, self.guard, self.rollback_after = target, guard, rollback_after
        self.policy_parameters = policy_parameters
        self.optimizer, self.scheduler = optimizer, scheduler
        self.band_reached = False
        """Whether a rollout's KL has reached the band yet; until then (the warm-up from the reference) nothing
        below the band is refused."""
        self.accepted: float = 0.0
        """The KL predicted after the last update kept this step (the rollout's own KL before any)."""
        self._snapshot: _Snapshot | None = None
        self.above = 0
        """How many rollouts in a row have measured the KL above the band."""
        self.in_band: PolicyState | None = None
        """The last policy whose rollout measured the KL at or below the band's top."""
        self.in_band_kl = 0.0
        """The KL its rollout measured."""
        self.rollbacks = 0

    def start_step(self, rollout_kl: float) -> bool:
        """A new PPO step whose rollout measured ``rollout_kl`` (the same on every process). Returns whether the
        step may train on that rollout: False when the policy was just rolled back to the last one inside the band."""
        self.rollout_kl = self.accepted = rollout_kl
        self.band_reached = self.band_reached or rollout_kl >= self.target / self.guard
        self._snapshot = None
        if rollout_kl <= self.guard * self.target:
            self.above = 0
            if self.rollback_after is not None:
                self.in_band, self.in_band_kl = self._policy_state(), rollout_kl
            return True
        self.above += 1
        if self.rollback_after is None or self.above < self.rollback_after or self.in_band is None:
            return True
        self._restore(self.in_band)
        self.above, self.accepted = 0, self.in_band_kl
        self.rollbacks += 1
        return False

    @property
    def has_update_to_check(self) -> bool:
        return self._snapshot is not None

    def snapshot(self) -> None:
        """Remember the policy as it is before the next optimizer update."""
        self._snapshot = _Snapshot(self._policy_state(), [group["lr"] for group in self.optimizer.param_groups],
                                   copy.deepcopy(self.scheduler.state_dict()))

    def keeps(self, predicted: float) -> bool:
        """Whether the last update, predicted to have carried the KL to ``predicted``, stays; if not it is undone."""
        if not ppo_math.leaves_band(predicted, self.rollout_kl, self.target, self.guard, self.band_reached):
            self.accepted = predicted
            return True
        self._undo()
        return False

    def _policy_state(self) -> PolicyState:
        state = self.optimizer.state  # accelerate's wrapper passes the torch optimizer's through
        return {p: (p.detach().clone(), copy.deepcopy(state.get(p, {}))) for p in self.policy_parameters}

    def _restore(self, weights: PolicyState) -> None:
        state = self.optimizer.state
        with torch.no_grad():
            for parameter, (values, saved) in weights.items():
                parameter.copy_(values)
                state[parameter] = copy.deepcopy(saved)

    def _undo(self) -> None:
        snapshot = self._snapshot
        self._restore(snapshot.weights)
        # the scheduler's state_dict does not hold the rate it last wrote into the optimizer: restore both
        self.scheduler.load_state_dict(snapshot.scheduler)
        for group, rate in zip(self.optimizer.param_groups, snapshot.learning_rates):
            group["lr"] = rate
        self._snapshot = None

    def state_dict(self) -> dict:
        return {"band_reached": self.band_reached, "above": self.above, "in_band_kl": self.in_band_kl,
                "rollbacks": self.rollbacks}

    def load_state_dict(self, state: dict) -> None:
        self.band_reached = state["band_reached"]
        self.above, self.in_band_kl = state.get("above", 0), state.get("in_band_kl", 0.0)
        self.rollbacks = state.get("rollbacks", 0)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The last policy inside the band as flat tensors (for a checkpoint's safetensors file): ``w<i>`` the
        i-th trainable weight's values, ``s<i>.<key>`` its optimizer state."""
        if self.in_band is None:
            return {}
        flat = {}
        for i, parameter in enumerate(self.policy_parameters):
            values, saved = self.in_band[parameter]
            flat[f"w{i}"] = values.detach().cpu().contiguous()
            for key, value in saved.items():
                flat[f"s{i}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
        return flat

    def load_tensors(self, flat: dict[str, torch.Tensor]) -> None:
        if not flat:
            self.in_band = None
            return
        self.in_band = {}
        for i, parameter in enumerate(self.policy_parameters):
            prefix = f"s{i}."
            saved = {key[len(prefix):]: value if key == f"{prefix}step" else value.to(parameter.device)
                     for key, value in flat.items() if key.startswith(prefix)}  # Adam keeps its step count on CPU
            self.in_band[parameter] = (flat[f"w{i}"].to(parameter.device, parameter.dtype), saved)

"""kl.guard: hold the policy's KL to the reference inside the band [target / guard, guard x target] by undoing the
updates that carry it out (``ppo_math.leaves_band`` is the rule).

A controller of the KL coefficient acts on the KL the next rollout measures, after the policy has moved; the policy's
sudden jumps toward what the reward model likes are faster than that, so the guard acts inside the step: the loop
snapshots before each optimizer update, predicts the KL once the update has run, and asks ``keeps``; a refused update
is undone (the policy's weights, their optimizer state, the learning-rate schedule) and the step ends there.

Only the policy's half of an update is undone: the value model's half does not move the KL, and a value model frozen
with the policy would keep the advantages that made the refused update, so every later update could be refused too.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from pipeline.rl import ppo_math


@dataclass
class _Snapshot:
    weights: list[tuple[torch.nn.Parameter, torch.Tensor, dict]]
    """(parameter, its values, its optimizer state) for each trainable weight of the policy."""
    learning_rates: list[float]
    scheduler: dict


class KLGuard:
    """The guard of one PPO run: its band, whether the KL has reached it yet, and the snapshot of the last update."""

    def __init__(self, target: float, guard: float, policy_parameters: list[torch.nn.Parameter], optimizer,
                 scheduler):
        self.target, self.guard = target, guard
        self.policy_parameters = policy_parameters
        self.optimizer, self.scheduler = optimizer, scheduler
        self.band_reached = False
        """Whether a rollout's KL has reached the band yet; until then (the warm-up from the reference) nothing
        below the band is refused."""
        self.accepted: float = 0.0
        """The KL predicted after the last update kept this step (the rollout's own KL before any)."""
        self._snapshot: _Snapshot | None = None

    def start_step(self, rollout_kl: float) -> None:
        """A new PPO step whose rollout measured ``rollout_kl`` (the same on every process)."""
        self.rollout_kl = self.accepted = rollout_kl
        self.band_reached = self.band_reached or rollout_kl >= self.target / self.guard
        self._snapshot = None

    @property
    def has_update_to_check(self) -> bool:
        return self._snapshot is not None

    def snapshot(self) -> None:
        """Remember the policy as it is before the next optimizer update."""
        state = self.optimizer.state  # accelerate's wrapper passes the torch optimizer's through
        self._snapshot = _Snapshot(
            [(p, p.detach().clone(), copy.deepcopy(state.get(p, {}))) for p in self.policy_parameters],
            [group["lr"] for group in self.optimizer.param_groups], copy.deepcopy(self.scheduler.state_dict()))

    def keeps(self, predicted: float) -> bool:
        """Whether the last update, predicted to have carried the KL to ``predicted``, stays; if not it is undone."""
        if not ppo_math.leaves_band(predicted, self.rollout_kl, self.target, self.guard, self.band_reached):
            self.accepted = predicted
            return True
        self._undo()
        return False

    def _undo(self) -> None:
        snapshot, state = self._snapshot, self.optimizer.state
        with torch.no_grad():
            for parameter, weights, saved in snapshot.weights:
                parameter.copy_(weights)
                state[parameter] = saved
        # the scheduler's state_dict does not hold the rate it last wrote into the optimizer: restore both
        self.scheduler.load_state_dict(snapshot.scheduler)
        for group, rate in zip(self.optimizer.param_groups, snapshot.learning_rates):
            group["lr"] = rate
        self._snapshot = None

    def state_dict(self) -> dict:
        return {"band_reached": self.band_reached}

    def load_state_dict(self, state: dict) -> None:
        self.band_reached = state["band_reached"]

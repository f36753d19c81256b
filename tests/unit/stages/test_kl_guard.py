"""kl.guard's undo restores everything an update changed on the policy's side: weights, optimizer state, and the
learning-rate schedule (under a linear schedule a kept scheduler step would skip the rate ahead). Its rollback returns
the policy to the last one inside the band once rollouts keep measuring the KL above it, checkpoint included."""

from __future__ import annotations

import pytest
import torch
from transformers import get_scheduler

from stages.ppo.kl_guard import KLGuard


def one_update(parameter, optimizer, scheduler):
    parameter.grad = torch.ones_like(parameter)
    optimizer.step()
    optimizer.zero_grad()
    scheduler.step()


@pytest.fixture
def trained():
    torch.manual_seed(0)
    parameter = torch.nn.Parameter(torch.randn(4))
    optimizer = torch.optim.AdamW([parameter], lr=0.1)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=10)
    one_update(parameter, optimizer, scheduler)  # some optimizer state and a rate already below the start
    return parameter, optimizer, scheduler


def test_a_refused_update_is_undone_schedule_included(trained):
    parameter, optimizer, scheduler = trained
    guard = KLGuard(target=4.0, guard=1.2, policy_parameters=[parameter], optimizer=optimizer, scheduler=scheduler)
    guard.start_step(4.0)
    weights, moment = parameter.detach().clone(), optimizer.state[parameter]["exp_avg"].clone()
    rate, epoch = optimizer.param_groups[0]["lr"], scheduler.last_epoch
    guard.snapshot()
    one_update(parameter, optimizer, scheduler)
    assert optimizer.param_groups[0]["lr"] < rate

    assert not guard.keeps(4.0 * 1.2 + 0.5), "above the band"
    assert torch.equal(parameter.detach(), weights)
    assert torch.equal(optimizer.state[parameter]["exp_avg"], moment)
    assert scheduler.last_epoch == epoch and scheduler.get_last_lr()[0] == rate
    assert optimizer.param_groups[0]["lr"] == rate, "the next update must run at the rate the undone one had"
    assert not guard.has_update_to_check
    assert guard.accepted == 4.0


def test_a_kept_update_stands_and_is_the_accepted_kl(trained):
    parameter, optimizer, scheduler = trained
    guard = KLGuard(4.0, 1.2, [parameter], optimizer, scheduler)
    guard.start_step(3.0)
    guard.snapshot()
    one_update(parameter, optimizer, scheduler)
    moved = parameter.detach().clone()
    assert guard.keeps(4.1)
    assert torch.equal(parameter.detach(), moved) and guard.accepted == 4.1


def test_below_the_band_is_refused_only_once_reached(trained):
    parameter, optimizer, scheduler = trained
    guard = KLGuard(4.0, 1.2, [parameter], optimizer, scheduler)
    guard.start_step(1.0)  # the warm-up from the reference: not yet in the band
    guard.snapshot()
    assert guard.keeps(0.5)
    guard.start_step(3.5)  # inside [4 / 1.2, 4.8]: reached, and kept across steps (checkpointed)
    assert guard.state_dict()["band_reached"]
    restored = KLGuard(4.0, 1.2, [parameter], optimizer, scheduler)
    restored.load_state_dict(guard.state_dict())
    restored.start_step(3.5)
    restored.snapshot()
    assert not restored.keeps(2.0)


def test_rollouts_above_the_band_in_a_row_roll_the_policy_back(trained):
    """Band [4 / 1.2, 4.8], rollback_after 2: one rollout above the band is trained on (it may be noise); the second
    in a row restores the weights and optimizer state the last rollout inside the band was sampled from, and the
    step trains on nothing. A rollout inside the band resets the count."""
    parameter, optimizer, scheduler = trained
    guard = KLGuard(4.0, 1.2, [parameter], optimizer, scheduler, rollback_after=2)
    assert guard.start_step(4.5)
    in_band, moment = parameter.detach().clone(), optimizer.state[parameter]["exp_avg"].clone()
    one_update(parameter, optimizer, scheduler)
    assert guard.start_step(6.0), "one reading above the band"
    one_update(parameter, optimizer, scheduler)
    assert guard.start_step(4.0), "back inside: the count starts again"
    in_band, moment = parameter.detach().clone(), optimizer.state[parameter]["exp_avg"].clone()
    one_update(parameter, optimizer, scheduler)
    assert guard.start_step(6.0)
    one_update(parameter, optimizer, scheduler)
    assert not torch.equal(parameter.detach(), in_band)

    assert not guard.start_step(7.0), "the second reading above the band in a row"
    assert torch.equal(parameter.detach(), in_band)
    assert torch.equal(optimizer.state[parameter]["exp_avg"], moment)
    assert guard.accepted == 4.0, "the KL the restored policy's rollout measured"
    assert guard.rollbacks == 1
    one_update(parameter, optimizer, scheduler)  # the restored state is a copy: training on does not alter it
    assert guard.start_step(6.0)
    assert not guard.start_step(6.0)
    assert torch.equal(parameter.detach(), in_band) and guard.rollbacks == 2
    assert torch.equal(optimizer.state[parameter]["exp_avg"], moment)


def test_without_rollback_the_policy_stays_above_the_band(trained):
    parameter, optimizer, scheduler = trained
    guard = KLGuard(4.0, 1.2, [parameter], optimizer, scheduler)
    assert guard.start_step(4.0)
    one_update(parameter, optimizer, scheduler)
    moved = parameter.detach().clone()
    assert all(guard.start_step(9.0) for _ in range(5))
    assert torch.equal(parameter.detach(), moved) and guard.rollbacks == 0


def test_the_policy_inside_the_band_survives_a_checkpoint(trained, tmp_path):
    """What a resumed run rolls back to is the policy the uninterrupted run would have: the guard's tensors and
    state go through safetensors and JSON."""
    import json

    from safetensors.torch import load_file, save_file

    parameter, optimizer, scheduler = trained
    guard = KLGuard(4.0, 1.2, [parameter], optimizer, scheduler, rollback_after=2)
    guard.start_step(4.2)
    in_band, moment = parameter.detach().clone(), optimizer.state[parameter]["exp_avg"].clone()
    one_update(parameter, optimizer, scheduler)
    guard.start_step(5.5)
    save_file(guard.tensors(), str(tmp_path / "extra.safetensors"))
    state = json.loads(json.dumps(guard.state_dict()))
    one_update(parameter, optimizer, scheduler)

    resumed = KLGuard(4.0, 1.2, [parameter], optimizer, scheduler, rollback_after=2)
    resumed.load_state_dict(state)
    resumed.load_tensors(load_file(str(tmp_path / "extra.safetensors")))
    assert not resumed.start_step(5.5), "the reading above the band before the checkpoint counts"
    assert torch.equal(parameter.detach(), in_band)
    assert torch.equal(optimizer.state[parameter]["exp_avg"], moment)
    assert resumed.accepted == 4.2
    one_update(parameter, optimizer, scheduler)  # Adam still steps with the restored state (its step count on CPU)

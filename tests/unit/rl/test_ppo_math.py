"""PPO arithmetic against values computed by hand on small tensors."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.rl import ppo_math as pm

T = torch.tensor


def close(actual, expected, tol=1e-6):
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float32),
                               torch.as_tensor(expected, dtype=torch.float32), rtol=0, atol=tol)


def test_kl_estimators_by_hand_and_zero_when_policy_equals_reference():
    logp, logq = T([-1.0, -2.0]), T([-1.5, -1.0])
    # log ratios 0.5 and -1.0
    close(pm.kl_penalty(logp, logq, "k1"), [0.5, -1.0])
    close(pm.kl_penalty(logp, logq, "k2"), [0.125, 0.5])
    # k3 = (q/p - 1) - log(q/p) with log(q/p) = -0.5 and 1.0
    close(pm.kl_penalty(logp, logq, "k3"), [math.exp(-0.5) - 1 + 0.5, math.e - 1 - 1.0])
    for estimator in ("k1", "k2", "k3"):
        assert torch.equal(pm.kl_penalty(logp, logp.clone(), estimator), torch.zeros(2))
    with pytest.raises(ValueError):
        pm.kl_penalty(logp, logq, "k4")


def test_token_rewards_put_the_score_on_the_last_real_token():
    kl = T([[0.1, 0.2, 0.3], [0.4, 0.5, 9.0]])
    mask = T([[1, 1, 1], [1, 1, 0]])
    rewards = pm.token_rewards(T([2.0, -1.0]), kl, kl_coef=0.5, mask=mask)
    close(rewards, [[-0.05, -0.1, -0.15 + 2.0], [-0.2, -0.25 - 1.0, 0.0]])


def test_gae_by_hand():
    # gamma 1, lambda 0.5, one full-length response
    advantages, returns = pm.gae(T([[0.0, 0.0, 1.0]]), T([[0.5, 0.2, 0.1]]), T([[1, 1, 1]]), gamma=1.0, lam=0.5)
    # t=2: delta = 1 - 0.1 = 0.9; t=1: delta = 0.1 - 0.2 = -0.1, A = -0.1 + 0.5 * 0.9 = 0.35;
    # t=0: delta = 0.2 - 0.5 = -0.3, A = -0.3 + 0.5 * 0.35 = -0.125
    close(advantages, [[-0.125, 0.35, 0.9]])
    close(returns, [[0.375, 0.55, 1.0]])


def test_gae_ignores_padding_after_the_end():
    # the padded position holds garbage reward 5 and value 9: the episode ends at t=1
    advantages, returns = pm.gae(T([[0.0, 2.0, 5.0]]), T([[1.0, 1.0, 9.0]]), T([[1, 1, 0]]), gamma=0.9, lam=1.0)
    # t=1: delta = 2 + 0.9 * 0 - 1 = 1; t=0: delta = 0 + 0.9 * 1 - 1 = -0.1, A = -0.1 + 0.9 * 1 = 0.8
    close(advantages, [[0.8, 1.0, 0.0]])
    close(returns, [[1.8, 2.0, 0.0]])


def test_clipped_policy_loss_by_hand():
    old = T([[0.0, 0.0, 0.0]])
    new = T([[0.5, -0.5, 0.5]])  # ratios e^0.5 = 1.6487, e^-0.5 = 0.6065, 1.6487
    advantages = T([[1.0, 1.0, -1.0]])
    loss, stats = pm.policy_loss(new, old, advantages, T([[1, 1, 1]]), cliprange=0.2)
    # token 1: max(-1.6487, -1.2) = -1.2 (clipped); token 2: max(-0.6065, -0.8) = -0.6065;
    # token 3: max(1.6487, 1.2) = 1.6487 (a bad action is never clipped away)
    close(loss, (-1.2 - math.exp(-0.5) + math.exp(0.5)) / 3)
    close(stats["clipfrac"], 1 / 3)
    close(stats["approxkl"], 0.125)
    close(stats["ratio"], (2 * math.exp(0.5) + math.exp(-0.5)) / 3)


def test_policy_loss_gradient_is_minus_advantage_at_ratio_one():
    new = torch.zeros(1, 2, requires_grad=True)
    loss, _ = pm.policy_loss(new, torch.zeros(1, 2), T([[2.0, -4.0]]), T([[1, 1]]), cliprange=0.2)
    loss.backward()
    close(new.grad, [[-1.0, 2.0]])  # d/dlogp of mean(-A * ratio) = -A / 2


def test_clipped_value_loss_by_hand():
    values, old, returns = T([[1.5, 0.9]]), T([[1.0, 1.0]]), T([[2.0, 0.0]])
    loss, stats = pm.value_loss(values, old, returns, T([[1, 1]]), cliprange_value=0.2)
    # token 1: clipped prediction 1.2 -> max(0.25, 0.64) = 0.64; token 2: within the range -> 0.81
    close(loss, 0.5 * (0.64 + 0.81) / 2)
    close(stats["vf_clipfrac"], 0.5)


def test_masked_whiten_mean_var_and_explained_variance():
    values, mask = T([[1.0, 2.0, 3.0, 100.0]]), T([[1, 1, 1, 0]])
    close(pm.masked_mean(values, mask), 2.0)
    close(pm.masked_var(values, mask), 1.0)  # unbiased: (1 + 0 + 1) / 2
    close(pm.masked_whiten(values, mask), [[-1.0, 0.0, 1.0, 0.0]], tol=1e-4)
    close(pm.masked_whiten(values, mask, shift_mean=False), [[1.0, 2.0, 3.0, 0.0]], tol=1e-4)
    returns = T([[1.0, 2.0, 3.0, 0.0]])
    assert pm.explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert pm.explained_variance(torch.full_like(returns, 2.0), returns, mask) == pytest.approx(0.0)


def test_entropy_of_uniform_and_one_hot():
    logits = torch.stack([torch.zeros(4), T([0.0, -1e9, -1e9, -1e9])])
    close(pm.entropy_from_logits(logits), [math.log(4), 0.0], tol=1e-5)


def test_adaptive_kl_controller_by_hand_and_fixed_controller():
    controller = pm.AdaptiveKLController(0.1, target=6.0, horizon=10000)
    controller.update(current_kl=9.0, n_steps=256)  # error clipped to +0.2
    assert controller.value == pytest.approx(0.1 * (1 + 0.2 * 256 / 10000))
    controller.update(current_kl=5.4, n_steps=1000)  # error -0.1
    assert controller.value == pytest.approx(0.1 * (1 + 0.2 * 256 / 10000) * (1 - 0.1 * 1000 / 10000))
    restored = pm.AdaptiveKLController(1.0, 6.0, 10000)
    restored.load_state_dict(controller.state_dict())
    assert restored.value == controller.value
    fixed = pm.FixedKLController(0.05)
    fixed.update(100.0, 64)
    assert fixed.value == 0.05


def test_running_moments_match_the_whole_stream():
    torch.manual_seed(0)
    batches = [torch.randn(7) * 3 + 1, torch.randn(5), torch.randn(11) * 0.5 - 2]
    moments = pm.RunningMoments()
    for batch in batches:
        moments.update(batch)
    everything = torch.cat(batches).double()
    assert moments.count == 23
    assert moments.mean == pytest.approx(everything.mean().item())
    assert moments.std == pytest.approx(everything.std(unbiased=False).item())


def test_the_score_lands_on_the_last_token_of_long_bf16_responses():
    # in bf16, a sum of 257 ones is 256 (and 1199 is 1200): counted in floats the score would land a token early
    for length in (257, 1199):
        mask = torch.zeros(1, length + 3, dtype=torch.bfloat16)
        mask[0, :length] = 1
        kl = torch.zeros(1, length + 3, dtype=torch.bfloat16)
        rewards = pm.token_rewards(torch.tensor([2.0]), kl, 0.1, mask)
        assert rewards[0, length - 1].item() == 2.0 and rewards[0].sum().item() == 2.0


def test_the_adaptive_coefficient_stays_positive_when_batches_outgrow_the_horizon():
    controller = pm.AdaptiveKLController(0.2, target=6.0, horizon=10)
    controller.update(0.0, n_steps=100)  # KL far below target, 10 horizons of samples in one update
    assert controller.value == pytest.approx(0.2 * 0.8), "one update moves the coefficient by at most 20%"
    for _ in range(50):
        controller.update(0.0, n_steps=100)
    assert controller.value > 0
    up = pm.AdaptiveKLController(0.2, target=6.0, horizon=10)
    up.update(100.0, n_steps=1000)
    assert up.value == pytest.approx(0.24)


def test_running_normaliser_does_not_blow_up_equal_first_scores():
    moments = pm.RunningMoments()
    assert moments.scale == 1.0
    moments.update(torch.tensor([0.7, 0.7, 0.7, 0.7]))
    assert moments.std == 0.0 and moments.scale == 1.0, "no spread yet: scores are left as they are"
    moments.update(torch.tensor([1.7, -0.3]))
    assert moments.scale == pytest.approx(moments.std) and moments.scale > 0.5


def test_pi_kl_controller_by_hand():
    controller = pm.kl_controller(0.1, 4.0, "pi", kp=1.0, ki=0.5)
    assert isinstance(controller, pm.PIKLController)
    for kl in (0.0, 1.0, 3.1):  # warm-up: more than 20% below the target on the way up, coef stays where it started
        controller.update(kl, 64)
        assert controller.value == 0.1 and controller.integral == 0.0
    controller.update(6.0, 64)  # reached: error 0.5, integral 0.5
    assert controller.value == pytest.approx(0.1 * math.exp(1.0 * 0.5 + 0.5 * 0.5))
    controller.update(3.0, 64)  # below now counts: error -0.25, integral 0.25
    assert controller.value == pytest.approx(0.1 * math.exp(-0.25 + 0.5 * 0.25))
    controller.update(40.0, 64)  # error clipped to 1
    assert controller.integral == pytest.approx(1.25)
    controller.update(float("nan"), 64)  # a non-finite KL moves nothing
    assert controller.integral == pytest.approx(1.25)
    restored = pm.kl_controller(0.1, 4.0, "pi")
    restored.load_state_dict(controller.state_dict())  # resume: the integral and the warm-up state come back
    restored.update(4.0, 64)
    controller.update(4.0, 64)
    assert restored.value == controller.value and restored.reached


def test_pi_kl_controller_engages_within_20_percent_below_the_target():
    """A starting coef that holds the KL a little below the target must not leave the controller waiting for it:
    from 80% of the target on, coef falls while the KL stays below (measured on rlhf.yaml: KL 6-9 against 10)."""
    controller = pm.kl_controller(0.2, 10.0, "pi", kp=1.0, ki=0.3)
    controller.update(7.9, 32)
    assert controller.value == 0.2 and not controller.reached
    values = []
    for kl in (8.0, 7.5, 7.5, 7.0):
        controller.update(kl, 32)
        values.append(controller.value)
    assert controller.reached and values == sorted(values, reverse=True) and values[-1] < 0.2 * math.exp(-0.5)


def test_pi_kl_controller_cannot_wind_up_without_bound():
    controller = pm.kl_controller(0.1, 1.0, "pi", kp=1.0, ki=0.5)
    for _ in range(1000):
        controller.update(100.0, 64)
    assert controller.integral == pm.PIKLController.WINDUP
    assert controller.value == pytest.approx(0.1 * math.exp(1.0 + 0.5 * pm.PIKLController.WINDUP))
    assert isinstance(pm.kl_controller(0.1, None, "pi"), pm.FixedKLController)
    assert isinstance(pm.kl_controller(0.1, 2.0), pm.AdaptiveKLController)


def test_kl_drift_by_hand_and_zero_while_the_policy_has_not_moved():
    old, ref, mask = T([[-1.0, -2.0, -3.0]]), T([[-1.5, -1.0, -0.5]]), T([[1, 1, 0]])
    assert torch.equal(pm.kl_drift(old.clone(), old, ref, mask), torch.zeros(1))
    new = T([[-0.5, -2.5, 9.0]])  # the padded third token must not count
    # ratios e^0.5 and e^-0.5; now-terms e^0.5 x 1.0 and e^-0.5 x -1.5; rollout terms 0.5 and -1.0
    close(pm.kl_drift(new, old, ref, mask), [math.exp(0.5) * 1.0 + math.exp(-0.5) * -1.5 - (0.5 - 1.0)])


def test_kl_drift_is_the_exact_change_of_kl_for_one_token_responses():
    """Averaged over the old policy's distribution, the importance-weighted drift of a one-token response is exactly
    KL(new || ref) - KL(old || ref): what the guard predicts is the KL the next rollout will measure."""
    old = torch.log_softmax(T([0.3, -1.0, 2.0, 0.5]), -1)
    new = torch.log_softmax(T([1.3, -1.5, 2.2, 0.0]), -1)
    ref = torch.log_softmax(T([0.0, 0.0, 1.0, 1.0]), -1)
    drift = pm.kl_drift(new[:, None], old[:, None], ref[:, None], torch.ones(4, 1))
    expected = (new.exp() * (new - ref)).sum() - (old.exp() * (old - ref)).sum()
    close((old.exp() * drift).sum(), expected)


def test_leaves_band_refuses_only_moves_out_of_the_band():
    """Band [4 / 1.25, 1.25 x 4] = [3.2, 5.0]."""
    def leaves(predicted, rollout, reached=True):
        return pm.leaves_band(predicted, rollout, 4.0, 1.25, reached)

    assert not leaves(4.9, 4.0) and not leaves(3.3, 4.0), "inside the band anything goes"
    assert leaves(5.1, 4.0) and leaves(3.1, 4.0), "carried out of the band, above or below"
    assert leaves(6.1, 6.0) and not leaves(5.9, 6.0) and not leaves(4.0, 6.0), "above it: only further up is refused"
    assert leaves(3.1, 5.5), "from above to below the band"
    assert not leaves(1.9, 2.0) and not leaves(2.1, 2.0) and not leaves(4.5, 2.0), \
        "below it: any move (the reward pulls the KL up; refusing further down held a policy stuck below)"
    assert not leaves(-0.1, 0.0, reached=False) and not leaves(3.1, 4.0, reached=False) and leaves(5.1, 4.0, False), \
        "until the KL has first reached the band, nothing below it is refused"

"""Trunk sharing (stages/ppo/trunk.py) computes what separate full passes compute: the shared scoring pass and the
cached-hidden-state pass of the PPO epochs, for logits, values and gradients, whether or not the value model shares
layers with the policy."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from stages.ppo.models import PolicyAndValue
from stages.ppo.rollout import Rollout
from stages.ppo.trunk import plan_trunk

LAYERS = 3


def tiny_config(heads: int = 1) -> LlamaConfig:
    return LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS,
                       num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, num_labels=heads)


def models(value_differs_below: bool, heads: int = 1):
    torch.manual_seed(0)
    config = tiny_config()
    base, reward = LlamaForCausalLM(config), LlamaForSequenceClassification(tiny_config(heads))
    reward.model.load_state_dict(base.model.state_dict())
    if value_differs_below:  # as after a reward model trained on every layer: nothing in common with the policy
        with torch.no_grad():
            reward.model.embed_tokens.weight.add_(0.1)
            reward.model.layers[0].mlp.up_proj.weight.add_(0.01)
    lora = dict(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], layers_to_transform=[LAYERS - 1],
                init_lora_weights=False)  # non-zero B: the adapted layer really differs from the reference
    policy = get_peft_model(base, LoraConfig(**lora))
    value = get_peft_model(reward, LoraConfig(**lora, task_type="SEQ_CLS"))
    return policy, value


def left_padded_batch() -> Rollout:
    generator = torch.Generator().manual_seed(1)
    rows, prompt, response = 4, 6, 5
    ids = torch.randint(1, 64, (rows, prompt + response), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    mask[1, :1] = 0
    response_mask = torch.ones(rows, response, dtype=torch.long)
    response_mask[2, 3:] = 0
    response_mask[3, 4:] = 0
    mask[:, prompt:] = response_mask
    ids[mask == 0] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return Rollout(ids, mask, positions, ids[:, prompt:], response_mask)


@pytest.mark.parametrize("value_differs_below", [False, True], ids=["shared-trunk", "own-trunk"])
def test_shared_and_cached_passes_equal_separate_passes(value_differs_below):
    policy, value = models(value_differs_below)
    plan = plan_trunk(policy, value, None, enabled=True)
    assert (plan.common, plan.policy, plan.value) == ((0 if value_differs_below else LAYERS - 1), LAYERS - 1,
                                                      LAYERS - 1)
    model = PolicyAndValue(policy, value, plan).train()
    batch = left_padded_batch()
    width = batch.response_ids.shape[1]
    with torch.no_grad():
        logits, values = model(batch.input_ids, batch.attention_mask, batch.position_ids, width)
        with policy.disable_adapter():
            reference = policy(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                               position_ids=batch.position_ids, logits_to_keep=width + 1).logits[:, :-1]
        scored = model.score(batch.input_ids, batch.attention_mask, batch.position_ids, width)
    assert (scored["reference"] - logits).abs().max() > 1e-3, "the adapter is on in the policy, off in the reference"
    for key, separate in (("logits", logits), ("reference", reference), ("values", values)):
        assert (scored[key] - separate).abs().max().item() <= 1e-6, key

    index = torch.tensor([3, 2])  # a minibatch whose rows need fewer columns than the rollout
    part = batch.select(index)
    first, cut, _ = batch.columns(index)
    cached = {k: scored[k][index][:, first:cut] for k in ("policy", "value")}

    def step(use_cache: bool):
        model.zero_grad()
        out = model(part.input_ids, part.attention_mask, part.position_ids, part.response_ids.shape[1],
                    cached if use_cache else None)
        (out[0].float().pow(2).mean() + out[1].pow(2).mean()).backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    (plain_logits, plain_values), plain_grads = step(False)
    (cached_logits, cached_values), cached_grads = step(True)
    assert (plain_logits - cached_logits).abs().max().item() <= 1e-6
    assert (plain_values - cached_values).abs().max().item() <= 1e-6
    assert plain_grads.keys() == cached_grads.keys() and len(plain_grads) == 9  # 2x4 LoRA matrices + value head
    for name in plain_grads:
        assert (plain_grads[name] - cached_grads[name]).abs().max().item() <= 1e-6, name


def test_sharing_is_off_with_all_layer_adapters():
    torch.manual_seed(0)
    config = tiny_config()
    everywhere = dict(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    policy = get_peft_model(LlamaForCausalLM(config), LoraConfig(**everywhere))
    value = get_peft_model(LlamaForSequenceClassification(config), LoraConfig(**everywhere, task_type="SEQ_CLS"))
    plan = plan_trunk(policy, value, None, enabled=True)
    assert not plan.on and "every layer trains" in plan.reason
    assert "share_trunk: false" in plan_trunk(*models(False), None, enabled=False).reason


@pytest.mark.parametrize("heads", [1, 3], ids=["one-head", "ensemble"])
def test_the_shared_pass_scores_each_rollout_as_the_reward_model_scores_its_own_rendering(heads):
    """The tokens the reward model's rendering adds after a response (end of turn) go into the shared pass after
    each row; the policy's, reference's and value model's outputs stay those of the rollout alone, and "reward" is
    the value model with its adapter off (the reward model) on the row's unpadded tokens plus its suffix: each
    head's output for an ensemble reward model, whose value is the mean of its value head's outputs."""
    policy, value = models(False, heads)
    plan = plan_trunk(policy, value, None, enabled=True)
    model = PolicyAndValue(policy, value, plan).eval()
    batch = left_padded_batch()
    width = batch.response_ids.shape[1]
    # row 0 ends at the last column (the batch widens), row 2 has room in its padding, row 3 gets no suffix (scored
    # apart), row 1 an empty one (the score is read at its last sampled token)
    suffixes = [[7, 9], [], [5, 11, 13], None]
    wide = batch.with_suffixes(suffixes, pad_id=0)
    assert wide.input_ids.shape[1] == batch.input_ids.shape[1] + 2 and wide.width == batch.input_ids.shape[1]
    with torch.no_grad():
        alone = model.score(batch.input_ids, batch.attention_mask, batch.position_ids, width)
        scored = model.score(wide.input_ids, wide.attention_mask, wide.position_ids, width, wide.width, wide.last)
        # on the rollout's real tokens (a padding column of the rollout may now hold a suffix token)
        for key, real in (("logits", batch.response_mask), ("reference", batch.response_mask),
                          ("values", batch.response_mask), ("policy", batch.attention_mask),
                          ("value", batch.attention_mask)):
            assert scored[key].shape == alone[key].shape, key
            assert (scored[key] - alone[key])[real.bool()].abs().max().item() <= 1e-5, key
        expected = []
        for row, suffix in enumerate(suffixes[:3]):
            ids = batch.input_ids[row][batch.attention_mask[row].bool()].tolist() + suffix
            with value.disable_adapter():
                expected.append(value(input_ids=torch.tensor([ids])).logits[0])
            with_adapter = value(input_ids=torch.tensor([ids])).logits[0]
            assert (with_adapter - expected[-1]).abs().max() > 1e-3, "the value adapter changes the score: testable"
    assert scored["reward"].shape == (4, heads) and torch.isnan(scored["reward"][3]).all()
    assert torch.allclose(scored["reward"][:3], torch.stack(expected), atol=1e-5), (scored["reward"], expected)

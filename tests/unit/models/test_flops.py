"""The step-cost model counts what torch's FLOP counter counts, forward and backward, on a tiny Llama."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaConfig, LlamaForCausalLM

from pipeline.models.flops import (
    Lora,
    Shape,
    dpo_training,
    head,
    layer_forward,
    layers_backward,
    layers_forward,
    lm_training,
    ppo_training,
    ppo_training_shared,
    sampling,
)

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BATCH, SEQ = 2, 12


@pytest.fixture(scope="module")
def config():
    config = LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=128, max_position_embeddings=64, tie_word_embeddings=True)
    config._attn_implementation = "eager"  # attention as plain matmuls, the way the model counts it
    return config


def counted(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def test_forward_of_the_plain_model(config):
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, config.vocab_size, (BATCH, SEQ))
    shape = Shape.of(config)
    with torch.no_grad():
        got = counted(lambda: model(ids))
    assert got == layers_forward(shape, BATCH * SEQ, SEQ) + head(shape, BATCH * SEQ)


@pytest.mark.parametrize("layers,rank", [([3], 4), ([2, 3], 4), ([0, 1, 2, 3], 8)])
def test_forward_and_backward_with_lora_on_the_top_layers(config, layers, rank):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(LlamaForCausalLM(config),
                           LoraConfig(r=rank, target_modules=PROJECTIONS, layers_to_transform=layers))
    ids = torch.randint(0, config.vocab_size, (BATCH, SEQ))
    shape = Shape.of(config)
    out = {}
    forward = counted(lambda: out.setdefault("loss", model(ids).logits.sum()))
    backward = counted(lambda: out["loss"].backward())
    lora = Lora.top(shape, len(layers), rank)
    assert lora.layers == tuple(layers)
    step = lm_training(shape, BATCH * SEQ, SEQ, lora)
    assert forward == step["forward: layers"] + step["forward: LM head"]
    assert backward == step["backward: layers"] + step["backward: LM head"]
    assert layers_backward(shape, BATCH * SEQ, SEQ, Lora.top(shape, 0, rank)) == 0


def forward_and_backward(model, ids) -> tuple[int, int]:
    """The FLOPs of a forward pass of ``model`` on ``ids`` (summing the logits as the loss) and of its backward."""
    out = {}
    forward = counted(lambda: out.setdefault("loss", model(ids).logits.sum()))
    backward = counted(lambda: out["loss"].backward())
    return forward, backward


def test_full_fine_tuning(config):
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)  # every weight trained, the embedding (tied to the LM head) too
    ids = torch.randint(0, config.vocab_size, (BATCH, SEQ))
    forward, backward = forward_and_backward(model, ids)
    step = lm_training(Shape.of(config), BATCH * SEQ, SEQ, None)
    assert forward == step["forward: layers"] + step["forward: LM head"]
    assert backward == step["backward: layers"] + step["backward: LM head"]
    # every linear layer's dX and dW, the LM head's too: twice the forward, attention included
    assert backward == 2 * forward


@pytest.mark.parametrize("targets,layers", [
    (["q_proj", "v_proj"], None),               # the peft default: attention's q and v in every layer
    (["q_proj", "v_proj"], [1, 2]),             # not the top layers: layer 3 needs every activation's gradient
    (PROJECTIONS, [1, 2]),
    (["v_proj", "down_proj"], [0, 2]),          # lowest layer: dV but no dQ, dK or probabilities' gradient
    (["k_proj"], [1]),                          # dK and the probabilities' gradient, no dQ
    (["o_proj"], [1, 3]),                       # no attention gradient in the lowest layer, the MLP's input needs one
    (["up_proj"], [2]),                         # only the MLP: no dX through gate_proj in the lowest layer
])
def test_forward_and_backward_with_lora_on_some_projections_of_some_layers(config, targets, layers):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(LlamaForCausalLM(config),
                           LoraConfig(r=4, target_modules=targets, layers_to_transform=layers))
    ids = torch.randint(0, config.vocab_size, (BATCH, SEQ))
    shape = Shape.of(config)
    forward, backward = forward_and_backward(model, ids)
    lora = Lora.of(shape, {"r": 4, "target_modules": targets, "layers": layers})
    step = lm_training(shape, BATCH * SEQ, SEQ, lora)
    assert forward == step["forward: layers"] + step["forward: LM head"]
    assert backward == step["backward: layers"] + step["backward: LM head"]


def test_lora_settings_and_the_top_layers_agree():
    shape = Shape(layers=30, hidden=576, intermediate=1536, heads=9, kv_heads=3, head_dim=64, vocab=49152)
    assert Lora.of(shape, {"r": 16, "layers": list(range(-8, 0))}) == Lora.top(shape, 8, 16)
    assert Lora.of(shape, None) is None
    assert Lora.of(shape, {"target_modules": ["v_proj", "q_proj"]}).layers == tuple(range(30))
    assert lm_training(shape, 1000, 60, Lora.of(shape, {"r": 16, "layers": [22, 23, 24, 25, 26, 27, 28, 29]})) \
        == lm_training(shape, 1000, 60, Lora.top(shape, 8, 16))
    with pytest.raises(ValueError, match="lm_head"):
        Lora.of(shape, {"target_modules": ["q_proj", "lm_head"]})
    with pytest.raises(ValueError, match="30 layers"):
        Lora.of(shape, {"layers": [29, 30]})


def test_dpo_reference_and_ppo_trunk_sharing_change_the_counts_as_they_should():
    shape = Shape(layers=30, hidden=576, intermediate=1536, heads=9, kv_heads=3, head_dim=64, vocab=49152)
    with_reference = dpo_training(shape, 1000, 60, Lora.top(shape, 8, 16))
    precomputed = dpo_training(shape, 1000, 60, Lora.top(shape, 8, 16), reference_precomputed=True)
    assert with_reference["reference forward"] == layers_forward(shape, 1000, 60) + head(shape, 1000)
    assert "reference forward" not in precomputed
    reused = dpo_training(shape, 1000, 60, Lora.top(shape, 8, 16), reference_reuse=True)
    assert reused["reference forward"] == layers_forward(shape, 1000, 60, layers=range(22, 30)) + head(shape, 1000)
    assert dpo_training(shape, 1000, 60, None, reference_reuse=True) == dpo_training(shape, 1000, 60, None)
    policy, value, reward = Lora.top(shape, 8, 16), Lora.top(shape, 8, 16), Lora.top(shape, 16, 16)
    models = (shape, 32, 44, 32, policy, value)
    shared, unshared = ppo_training_shared(*models, reward, epochs=2), ppo_training(*models, epochs=2)
    layer = layer_forward(shape, 32 * 76, 76)
    # scoring: 62 layer passes instead of 120 (plus the LoRA of the two adapted models, the same in both): layers
    # 0-13 once, 14-21 for the policy and for the value model, 22-29 for policy, reference, value model and reward
    # model (the value model with its adapter off)
    assert unshared["scoring: layers"] - shared["scoring: layers"] == pytest.approx(58 * layer)
    # a value model that trains every weight scores with a frozen copy of the reward model: a full pass of its own
    whole_value = ppo_training_shared(shape, 32, 44, 32, policy, None, reward, epochs=2)
    whole_unshared = ppo_training(shape, 32, 44, 32, policy, None, epochs=2)
    # (only the reference's 22 frozen layers are saved: they are the policy's)
    assert whole_unshared["scoring: layers"] - whole_value["scoring: layers"] == pytest.approx(22 * layer)
    assert unshared["epochs: forward"] - shared["epochs: forward"] == pytest.approx(2 * 2 * 22 * layer)
    assert shared["sampling: decode"] == unshared["sampling: decode"]
    assert shared["epochs: backward"] == unshared["epochs: backward"]
    # kl.guard's extra forward: one minibatch of 16 through the trained layers (all of them without sharing)
    guarded = ppo_training_shared(*models, reward, epochs=2, guard_rows=16)
    assert guarded["kl guard: forward"] == pytest.approx(shared["epochs: forward"] / 2 * 16 / 32)
    assert ppo_training(*models, epochs=2, guard_rows=16)["kl guard: forward"] == \
        pytest.approx(unshared["epochs: forward"] / 2 * 16 / 32)
    # a full-fine-tuning policy: its LM head's weight gradient is counted too, the sampling and scoring are the same
    full = ppo_training(shape, 32, 44, 32, None, Lora.top(shape, 8, 16), epochs=2)
    assert full["scoring: heads"] == unshared["scoring: heads"]
    assert full["epochs: backward"] > unshared["epochs: backward"] + 2 * head(shape, 32 * 33)
    # ... and its reference is a separate copy: trunk sharing is off
    assert ppo_training_shared(shape, 32, 44, 32, None, value, reward, epochs=2) == full


def test_sampling_a_mean_response_length_counts_its_fraction_of_a_step():
    shape = Shape(layers=30, hidden=576, intermediate=1536, heads=9, kv_heads=3, head_dim=64, vocab=49152)
    decode = {n: sampling(shape, 32, 44, n)["sampling: decode"] for n in (12, 12.25, 13)}
    assert decode[12.25] == pytest.approx(0.75 * decode[12] + 0.25 * decode[13])

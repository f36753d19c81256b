"""The step-cost model counts what torch's FLOP counter counts, forward and backward, on a tiny Llama."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaConfig, LlamaForCausalLM

from pipeline.models.flops import Shape, dpo_step, head, ppo_step, sft_step, stack_backward, stack_forward

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
    assert got == stack_forward(shape, 4, BATCH * SEQ, SEQ) + head(shape, BATCH * SEQ)


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
    step = sft_step(shape, BATCH * SEQ, SEQ, rank, len(layers))
    assert forward == step["forward: layers"] + step["forward: LM head"]
    assert backward == step["backward: layers"] + step["backward: LM head"]
    assert stack_backward(shape, 0, BATCH * SEQ, SEQ, rank) == 0


def test_dpo_reference_and_ppo_trunk_sharing_change_the_counts_as_they_should():
    shape = Shape(layers=30, hidden=576, intermediate=1536, heads=9, kv_heads=3, head_dim=64, vocab=49152)
    with_reference = dpo_step(shape, 1000, 60, 16, 8)
    precomputed = dpo_step(shape, 1000, 60, 16, 8, reference_precomputed=True)
    assert with_reference["reference forward"] == stack_forward(shape, 30, 1000, 60) + head(shape, 1000)
    assert "reference forward" not in precomputed
    kwargs = {"batch": 32, "prompt": 44, "response": 32, "lora_rank": 16, "policy_layers": 8, "value_layers": 8,
              "reward_layers": 16, "epochs": 2}
    shared, unshared = ppo_step(shape, share_trunk=True, **kwargs), ppo_step(shape, share_trunk=False, **kwargs)
    layer = stack_forward(shape, 1, 32 * 76, 76)
    # scoring: 62 layer passes instead of 120 (plus the LoRA of the two adapted models, the same in both)
    assert unshared["scoring: layers"] - shared["scoring: layers"] == pytest.approx(58 * layer)
    assert unshared["epochs: forward"] - shared["epochs: forward"] == pytest.approx(2 * 2 * 22 * layer)
    assert shared["sampling: decode"] == unshared["sampling: decode"]
    assert shared["epochs: backward"] == unshared["epochs: backward"]

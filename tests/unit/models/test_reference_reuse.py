"""The DPO reference pass that starts from the policy pass's unadapted lower layers (pipeline/models/trunk.py)
computes what a separate reference pass computes, skips those layers, and is off wherever it would not be exact."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from pipeline.models.trunk import plan_reference_reuse

LAYERS = 3


def policy(layers_to_transform=(LAYERS - 1,), dropout: float = 0.0):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, attention_dropout=dropout)
    lora = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                      layers_to_transform=list(layers_to_transform) if layers_to_transform else None,
                      init_lora_weights=False)  # non-zero B: the adapter really changes the policy
    return get_peft_model(LlamaForCausalLM(config), lora).train()


def batch():
    ids = torch.randint(1, 64, (4, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[2, 6:] = 0  # right padding, as TRL's DPO collator pads
    return {"input_ids": ids, "attention_mask": mask}


def test_reference_pass_reuses_the_lower_layers_and_equals_a_separate_pass():
    model = policy()
    reuse, why = plan_reference_reuse(model, has_reference_copy=False)
    assert reuse is not None and reuse.depth == LAYERS - 1, why
    calls = []
    model.get_base_model().model.layers[0].self_attn.register_forward_pre_hook(lambda *_: calls.append(1))
    inputs = batch()
    with torch.no_grad():
        with model.disable_adapter():
            separate = model(**inputs).logits
    calls.clear()
    with reuse.pair():
        policy_logits = model(**inputs).logits
        with torch.no_grad(), model.disable_adapter():
            reference = model(**inputs).logits
    assert len(calls) == 1, "the reference pass must not run the layers below the adapter again"
    assert reuse.reused == 1
    assert (policy_logits - reference).abs().max() > 1e-3, "the adapter is on in the policy pass, off in the other"
    assert (reference - separate).abs().max().item() <= 1e-6
    policy_logits.sum().backward()  # the policy's graph is intact
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)

    calls.clear()  # outside pair() nothing is skipped
    with torch.no_grad(), model.disable_adapter():
        again = model(**inputs).logits
    assert len(calls) == 1 and (again - separate).abs().max().item() <= 1e-6


def test_a_second_pass_on_other_inputs_is_computed():
    model = policy()
    reuse, _ = plan_reference_reuse(model, has_reference_copy=False)
    inputs, other = batch(), {k: v[:2] for k, v in batch().items()}
    with torch.no_grad():
        with model.disable_adapter():
            separate = model(**other).logits
        with reuse.pair():
            model(**inputs)
            with model.disable_adapter():
                reference = model(**other).logits
    assert reuse.reused == 0 and (reference - separate).abs().max().item() <= 1e-6


def test_off_where_it_would_not_be_exact():
    assert plan_reference_reuse(policy(), has_reference_copy=True)[0] is None
    reuse, why = plan_reference_reuse(policy(layers_to_transform=None), has_reference_copy=False)
    assert reuse is None and "every layer" in why
    reuse, why = plan_reference_reuse(policy(dropout=0.1), has_reference_copy=False)
    assert reuse is None and "dropout" in why
    assert plan_reference_reuse(policy().get_base_model(), has_reference_copy=False)[0] is None  # no adapter

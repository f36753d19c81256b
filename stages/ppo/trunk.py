"""Exact trunk sharing: run the decoder layers that several models of a PPO step have in common once, and branch.

With a layer-selective LoRA (``lora.layers``), the policy and its reference (the same weights with the adapter off)
compute identical hidden states below the lowest adapted layer; the value model (the reward model plus its own
top-layer LoRA) and the policy agree as far as their weights are equal (the reward model adapted only its top layers
of the same starting weights). So a rollout is scored by running the common layers once, then each model's own
layers; and since nothing below the lowest trainable layer changes during a PPO step (no dropout), the hidden
states there are kept for every PPO epoch and minibatch, which then run only the trainable top layers.

The depths are measured, not assumed: two models share a layer only if its weights are bitwise equal
(``torch.equal``), so the result is what separate full forward passes give. Where nothing is shared (all-layer
LoRA, full fine-tuning, quantised weights, an architecture without the usual layer stack) it is off, and the log
says why.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipeline.models.trunk import decoder_stack
from pipeline.models.trunk import inner as _inner


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Whether two modules compute the same function with their adapters off: every parameter but the LoRA ones
    bitwise equal, of the same shape and dtype."""
    def plain(module):
        return {k: v for k, v in module.named_parameters() if "lora_" not in k}

    pa, pb = plain(a), plain(b)
    return pa.keys() == pb.keys() and all(
        pa[k].shape == pb[k].shape and pa[k].dtype == pb[k].dtype and torch.equal(pa[k], pb[k]) for k in pa)


def _lowest_trainable_layer(stack: nn.Module) -> int:
    """The index of the lowest decoder layer of ``stack`` with a trainable parameter (the layer count if none)."""
    for index, layer in enumerate(stack.layers):
        if any(p.requires_grad for p in layer.parameters()):
            return index
    return len(stack.layers)


@dataclass(frozen=True)
class TrunkPlan:
    """How deep the models of a PPO step share their computation (layer indices; 0 = nothing shared)."""

    common: int
    """Layers below this are identical in the policy, its reference and the value model: run once."""
    policy: int
    """The policy's lowest trainable layer: below it the policy equals its reference, and stays frozen."""
    value: int
    """The value model's lowest trainable layer: below it, it stays frozen during the step."""
    reason: str = ""
    """Why sharing is off (empty when on)."""
    layers: int = 0
    """Decoder layers of the policy (0 where its stack was not found)."""

    @property
    def on(self) -> bool:
        return self.policy > 0 or self.value > 0


def plan_trunk(policy: nn.Module, value: nn.Module, reference: nn.Module | None, enabled: bool) -> TrunkPlan:
    """Measure what can be shared (see the module docstring)."""
    if not enabled:
        return TrunkPlan(0, 0, 0, "turned off (share_trunk: false)")
    if reference is not None:
        return TrunkPlan(0, 0, 0, "off: the reference is a separate copy (full fine-tuning or reference: copy)")
    p_stack, v_stack = decoder_stack(policy), decoder_stack(value)
    if p_stack is None or v_stack is None:
        return TrunkPlan(0, 0, 0, "off: the models have no embed/layers/norm stack to run piecewise")
    if any(type(m).__name__.endswith(("4bit", "8bitLt")) for m in _inner(policy).modules()):
        return TrunkPlan(0, 0, 0, "off: quantised weights (sharing is only claimed where it is exact)")
    count = len(p_stack.layers)
    policy_depth, value_depth = _lowest_trainable_layer(p_stack), _lowest_trainable_layer(v_stack)
    common = 0
    if len(v_stack.layers) == count and _same_weights(p_stack.embed_tokens, v_stack.embed_tokens) and \
            _same_weights(p_stack.rotary_emb, v_stack.rotary_emb):
        limit = min(policy_depth, value_depth)
        while common < limit and _same_weights(p_stack.layers[common], v_stack.layers[common]):
            common += 1
    if policy_depth == 0 and value_depth == 0:
        return TrunkPlan(0, 0, 0, "off: every layer trains (all-layer LoRA or full fine-tuning)", count)
    return TrunkPlan(common, policy_depth, value_depth, layers=count)


def describe(plan: TrunkPlan) -> str:
    if not plan.on:
        return f"trunk sharing {plan.reason}"
    return (f"trunk sharing on: policy, reference and value model run layers 0-{plan.common - 1} once"
            if plan.common else "trunk sharing on: the value model shares no layer with the policy") + \
        (f"; the reference shares the policy's layers up to {plan.policy - 1}" if plan.policy else "") + \
        f"; PPO epochs rerun only layers {min(plan.policy, plan.value)}-{plan.layers - 1} " \
        f"(policy from {plan.policy}, value from {plan.value})"


class Stack:
    """A decoder stack run piecewise: embeddings, layers [a, b), final norm."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.backbone = decoder_stack(model)

    def start(self, input_ids, attention_mask, position_ids):
        """(hidden states at layer 0, the causal mask, the rotary embeddings) as the model's forward makes them."""
        from transformers.masking_utils import create_causal_mask

        backbone = self.backbone
        embeds = backbone.embed_tokens(input_ids)
        mask = create_causal_mask(config=backbone.config, inputs_embeds=embeds, attention_mask=attention_mask,
                                  cache=None, position_ids=position_ids)
        rotary = backbone.rotary_emb(embeds, position_ids=position_ids)
        return embeds, mask, rotary

    def context(self, hidden, attention_mask, position_ids):
        """The mask and rotary embeddings for hidden states that start part-way up the stack."""
        from transformers.masking_utils import create_causal_mask

        backbone = self.backbone
        mask = create_causal_mask(config=backbone.config, inputs_embeds=hidden, attention_mask=attention_mask,
                                  cache=None, position_ids=position_ids)
        return mask, backbone.rotary_emb(hidden, position_ids=position_ids)

    def layers(self, hidden, start: int, stop: int, mask, rotary, position_ids):
        for layer in self.backbone.layers[start:stop]:
            hidden = layer(hidden, attention_mask=mask, position_embeddings=rotary, position_ids=position_ids,
                           cache=None, use_cache=False)
        return hidden

    def finish(self, hidden):
        return self.backbone.norm(hidden)


def lm_logits(model: nn.Module, normed: torch.Tensor, keep: int) -> torch.Tensor:
    """The LM head on the last ``keep`` positions (as ``logits_to_keep`` does), minus the last: the positions that
    predict the response tokens."""
    head = _inner(model).get_output_embeddings()
    return head(normed[:, -keep:, :])[:, :-1]

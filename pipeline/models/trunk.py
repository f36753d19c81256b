"""The decoder stack of a transformers model, and a reference pass that reuses the policy pass's frozen lower layers.

A policy trained with a layer-selective LoRA (``lora.layers``) and its reference (the same weights with the adapter
disabled) compute identical hidden states below the lowest adapted layer. DPO runs both on every batch, the policy
first: ``ReferenceReuse`` keeps the policy's hidden states leaving the last unadapted layer, and the reference pass
starts from them instead of recomputing the layers below. Only claimed where it is exact (see ``plan_reference_reuse``).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


def inner(model: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper (the model itself otherwise)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_stack(model: nn.Module):
    """The backbone (embed_tokens, rotary_emb, layers, norm) of a causal LM or sequence classifier, or None."""
    model = inner(model)
    backbone = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    if backbone is None or not all(hasattr(backbone, name) for name in ("embed_tokens", "rotary_emb", "layers",
                                                                         "norm")):
        return None
    return backbone


def lowest_adapted_layer(stack: nn.Module) -> int:
    """The index of the lowest decoder layer holding a LoRA weight (the layer count if none does)."""
    for index, layer in enumerate(stack.layers):
        if any("lora_" in name for name, _ in layer.named_parameters()):
            return index
    return len(stack.layers)


def _dropout_in(layers) -> bool:
    for layer in layers:
        for module in layer.modules():
            if isinstance(module, nn.Dropout) and module.p > 0:
                return True
            if float(getattr(module, "attention_dropout", 0.0) or 0.0) > 0:
                return True
    return False


def _adapters_on(layers) -> bool:
    """Whether the LoRA modules of ``layers`` are active (peft's disable_adapter turns them off)."""
    flags = [not module.disable_adapters for layer in layers for module in layer.modules()
             if hasattr(module, "disable_adapters") and hasattr(module, "lora_A")]
    return bool(flags) and all(flags)


def _same(a: list, b: list) -> bool:
    """Whether two passes got the same inputs (every one given, each equal)."""
    return a[0] is not None and all((x is None and y is None) or (x is not None and y is not None and
                                                                    x.shape == y.shape and torch.equal(x, y))
                                    for x, y in zip(a, b))


class ReferenceReuse:
    """Inside ``pair()``: the first forward (the policy's, adapters on) keeps the hidden states leaving layer
    ``depth - 1``; the second (the reference's, adapters off, on the same inputs) skips layers 0 to ``depth - 1`` and
    starts from them, provided it got the same input ids, attention mask and positions. Any other forward runs as
    usual."""

    def __init__(self, stack: nn.Module, depth: int):
        self.stack, self.depth = stack, depth
        self.layers = list(stack.layers)
        self._state: dict | None = None
        self.reused = 0
        """Reference passes that started from the policy's hidden states."""
        stack.register_forward_pre_hook(self._before, with_kwargs=True)
        stack.register_forward_hook(self._after)
        self.layers[depth - 1].register_forward_hook(self._record)

    @contextmanager
    def pair(self):
        self._state = {"passes": 0, "hidden": None}
        try:
            yield
        finally:
            self._state = None
            self._restore()

    def _before(self, module, args, kwargs):
        state = self._state
        if state is None:
            return
        state["passes"] += 1
        inputs = [kwargs.get(name) for name in ("input_ids", "attention_mask", "position_ids")]
        if state["passes"] == 1:
            state["inputs"] = inputs
        elif state["passes"] == 2 and state["hidden"] is not None and _same(inputs, state["inputs"]) \
                and not _adapters_on(self.layers[self.depth:]):
            cached = state["hidden"]

            def skip(hidden_states, *args, **kwargs):
                return hidden_states

            def resume(hidden_states, *args, **kwargs):
                self.reused += 1
                return cached

            for layer in self.layers[: self.depth - 1]:
                layer.forward = skip
            self.layers[self.depth - 1].forward = resume

    def _record(self, module, args, output):
        state = self._state
        if state is not None and state["passes"] == 1 and _adapters_on(self.layers[self.depth:]):
            hidden = output[0] if isinstance(output, tuple) else output
            state["hidden"] = hidden.detach()

    def _after(self, module, args, output):
        self._restore()

    def _restore(self):
        for layer in self.layers[: self.depth]:
            layer.__dict__.pop("forward", None)


def plan_reference_reuse(model: nn.Module, has_reference_copy: bool) -> tuple[ReferenceReuse | None, str]:
    """(the reuse hooked onto ``model``, or None; a line for the log saying which layers, or why it is off)."""
    if has_reference_copy:
        return None, "off: the reference is a separate copy"
    stack = decoder_stack(model)
    if stack is None or not hasattr(model, "disable_adapter"):
        return None, "off: the policy is not a LoRA model with an embed/layers/norm stack"
    if getattr(model, "peft_config", {}).keys() - {"default"}:
        return None, "off: the policy holds more than one adapter"
    if any(type(m).__name__.endswith(("4bit", "8bitLt")) for m in stack.modules()):
        return None, "off: quantised weights (reuse is only claimed where it is exact)"
    depth = lowest_adapted_layer(stack)
    if depth == 0 or depth == len(stack.layers):
        return None, "off: the adapter is on every layer" if depth == 0 else "off: no layer holds the adapter"
    if _dropout_in(stack.layers[:depth]):
        return None, "off: dropout is active below the adapted layers, so the two passes differ there"
    return ReferenceReuse(stack, depth), f"on: the reference pass reuses the policy pass's layers 0-{depth - 1}"

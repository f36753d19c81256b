"""The step-cost model: the matmul FLOPs each model pass of a stage's step asks for, by part, from the model's shape.

Counted the way ``torch.utils.flop_counter.FlopCounterMode`` counts them (tests/unit/test_flops.py checks it on a
tiny Llama, forward and backward, with and without layer-selective LoRA): 2 FLOPs per multiply-add of every matmul;
attention scores and values over the full key length (a causal mask saves nothing in a plain matmul); norms,
activations, rotary embeddings and softmax left out (a few per cent on these shapes). The backward pass is what
autograd runs for LoRA on every linear layer ("all-linear") of some layers: nothing below the lowest trained layer;
in that layer no gradient to its input through q, k and v; above it the gradient
of every activation (as many FLOPs as the forward matmuls) and the LoRA weight gradients, never a gradient of a
frozen weight.

bench/step_cost.py puts these beside measured step times; bench/gpu_bench.py uses them for MFU.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

INPUT_SIDE = ("q_proj", "k_proj", "v_proj")
"""Projections that read the layer's input: in the lowest trained layer nothing needs their dX (the MLP's input
does need one: it holds the attention output, which has a LoRA)."""


@dataclass(frozen=True)
class Shape:
    """What the FLOPs of a Llama-shaped decoder depend on."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def of(cls, config) -> Shape:
        """From a transformers config (Llama, Mistral, Qwen2, SmolLM2...)."""
        heads = config.num_attention_heads
        return cls(layers=config.num_hidden_layers, hidden=config.hidden_size, intermediate=config.intermediate_size,
                   heads=heads, kv_heads=getattr(config, "num_key_value_heads", None) or heads,
                   head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
                   vocab=config.vocab_size)

    def projections(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of one decoder layer."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {"q_proj": (self.hidden, q), "k_proj": (self.hidden, kv), "v_proj": (self.hidden, kv),
                "o_proj": (q, self.hidden), "gate_proj": (self.hidden, self.intermediate),
                "up_proj": (self.hidden, self.intermediate), "down_proj": (self.intermediate, self.hidden)}

    @property
    def layer_weights(self) -> int:
        """Weights of the linear layers of one decoder layer."""
        return sum(i * o for i, o in self.projections().values())


def layer_forward(shape: Shape, tokens: float, keys: float, lora_rank: int = 0) -> float:
    """One decoder layer on ``tokens`` tokens, each attending over ``keys`` keys, with a LoRA of ``lora_rank`` on
    every linear layer (0: none)."""
    lora = 2 * lora_rank * sum(i + o for i, o in shape.projections().values())
    return tokens * (2 * shape.layer_weights + 4 * shape.heads * shape.head_dim * keys + lora)


def layer_backward(shape: Shape, tokens: float, keys: float, lora_rank: int, lowest: bool) -> float:
    """Backward of one layer with a LoRA of ``lora_rank`` on every linear layer; ``lowest``: the lowest layer with
    gradients (its input needs none)."""
    total = 8 * shape.heads * shape.head_dim * keys  # dQ, dK from the scores; dV and the scores' gradient
    for name, (i, o) in shape.projections().items():
        to_input = not (lowest and name in INPUT_SIDE)
        total += 2 * i * o * to_input  # the frozen weight: dX only
        if lora_rank:  # dB, the gradient at the rank-r activations, dA, and dX through A
            total += 2 * lora_rank * (o + o + i + i * to_input)
    return tokens * total


def head(shape: Shape, positions: float) -> float:
    """The LM head (hidden -> vocab) on ``positions`` positions; its backward (dX) costs the same."""
    return 2 * shape.hidden * shape.vocab * positions


def score_head(shape: Shape, positions: float) -> float:
    """A scalar head (reward or value) on ``positions`` positions."""
    return 2 * shape.hidden * positions


def stack_forward(shape: Shape, layers: int, tokens: float, keys: float, lora_layers: int = 0,
                  lora_rank: int = 0) -> float:
    """``layers`` decoder layers, the top ``lora_layers`` of them with a LoRA."""
    plain = layer_forward(shape, tokens, keys) * (layers - lora_layers)
    return plain + layer_forward(shape, tokens, keys, lora_rank) * lora_layers


def stack_backward(shape: Shape, trained_layers: int, tokens: float, keys: float, lora_rank: int) -> float:
    """Backward through the top ``trained_layers`` layers, each with a LoRA."""
    if not trained_layers:
        return 0.0
    return layer_backward(shape, tokens, keys, lora_rank, lowest=True) + \
        layer_backward(shape, tokens, keys, lora_rank, lowest=False) * (trained_layers - 1)


def sft_step(shape: Shape, tokens: float, keys: float, lora_rank: int, trained_layers: int) -> Counter:
    """One optimizer step of causal-LM training on ``tokens`` tokens."""
    return Counter({
        "forward: layers": stack_forward(shape, shape.layers, tokens, keys, trained_layers, lora_rank),
        "forward: LM head": head(shape, tokens),
        "backward: LM head": head(shape, tokens),
        "backward: layers": stack_backward(shape, trained_layers, tokens, keys, lora_rank)})


def reward_step(shape: Shape, tokens: float, keys: float, lora_rank: int, trained_layers: int) -> Counter:
    """One step of pairwise reward training on ``tokens`` tokens (chosen and rejected together)."""
    return Counter({
        "forward: layers": stack_forward(shape, shape.layers, tokens, keys, trained_layers, lora_rank),
        "forward: score head": score_head(shape, tokens),
        "backward: layers": stack_backward(shape, trained_layers, tokens, keys, lora_rank)})


def dpo_step(shape: Shape, tokens: float, keys: float, lora_rank: int, trained_layers: int,
             reference_precomputed: bool = False) -> Counter:
    """One DPO step on ``tokens`` tokens (chosen and rejected): the policy forward and backward, the reference
    forward unless its log-probabilities were computed before training."""
    cost = sft_step(shape, tokens, keys, lora_rank, trained_layers)
    if not reference_precomputed:
        cost["reference forward"] = stack_forward(shape, shape.layers, tokens, keys) + head(shape, tokens)
    return cost


def ppo_step(shape: Shape, batch: int, prompt: float, response: float, lora_rank: int, policy_layers: int,
             value_layers: int, reward_layers: int, epochs: int, share_trunk: bool) -> Counter:
    """One PPO step: sample ``batch`` responses of ``response`` tokens to prompts of ``prompt`` tokens, score them
    with policy, reference, value and reward model, and run ``epochs`` passes of policy and value training.

    The policy has LoRA on its top ``policy_layers`` layers (the reference is it with the adapter off), the value model
    on the top ``value_layers`` of a reward model that was itself trained on its top ``reward_layers``. With
    ``share_trunk`` the layers the models have in common run once and the frozen layers' output is kept for the
    epochs (stages/ppo/trunk.py); without it every model runs every layer, in scoring and in every epoch."""
    n = shape.layers
    tokens, keys = batch * (prompt + response), prompt + response
    positions = batch * (response + 1)  # the LM head runs on the response positions only (logits_to_keep)
    cost = Counter({
        "sampling: prefill": stack_forward(shape, n, batch * prompt, prompt, policy_layers, lora_rank)
        + head(shape, batch),
        "sampling: decode": sum(stack_forward(shape, n, batch, prompt + t, policy_layers, lora_rank)
                                for t in range(1, int(response))) + head(shape, batch * (response - 1))})
    if share_trunk:
        common = n - max(policy_layers, value_layers, reward_layers)
        own = (n - policy_layers - common) + (n - value_layers - common)  # shared by policy/reference, value/reward
        scoring = stack_forward(shape, common + own, tokens, keys) \
            + stack_forward(shape, policy_layers, tokens, keys, policy_layers, lora_rank) \
            + stack_forward(shape, policy_layers, tokens, keys) \
            + stack_forward(shape, value_layers, tokens, keys, value_layers, lora_rank) \
            + stack_forward(shape, value_layers, tokens, keys)
        epoch_forward = stack_forward(shape, policy_layers, tokens, keys, policy_layers, lora_rank) + \
            stack_forward(shape, value_layers, tokens, keys, value_layers, lora_rank)
    else:  # policy, reference, value and reward model each through every layer
        scoring = 2 * stack_forward(shape, n, tokens, keys) \
            + stack_forward(shape, n, tokens, keys, policy_layers, lora_rank) \
            + stack_forward(shape, n, tokens, keys, value_layers, lora_rank)
        epoch_forward = stack_forward(shape, n, tokens, keys, policy_layers, lora_rank) + \
            stack_forward(shape, n, tokens, keys, value_layers, lora_rank)
    cost["scoring: layers"] = scoring
    cost["scoring: heads"] = 2 * head(shape, positions) + 2 * score_head(shape, tokens)
    cost["epochs: forward"] = epochs * (epoch_forward + head(shape, positions) + score_head(shape, tokens))
    cost["epochs: backward"] = epochs * (stack_backward(shape, policy_layers, tokens, keys, lora_rank)
                                         + stack_backward(shape, value_layers, tokens, keys, lora_rank)
                                         + head(shape, positions))
    return cost

"""The step-cost model: the matmul FLOPs each model pass of a stage's step asks for, by part, from the model's shape.

Counted the way ``torch.utils.flop_counter.FlopCounterMode`` counts them (tests/unit/models/test_flops.py checks it
exactly on a tiny Llama, forward and backward: full fine-tuning, LoRA on every linear layer of the top layers, LoRA on
some projections only, LoRA on layers that are not the top ones): 2 FLOPs per multiply-add of every matmul;
attention scores and values over the full key length (a causal mask saves nothing in a plain matmul); norms,
activations, rotary embeddings and softmax left out (a few per cent on these shapes).

The backward pass is what autograd runs, and autograd computes a gradient only where something trained lies behind
it:
- full fine-tuning (every weight trained): each linear layer's dX and dW (4 x in x out a token), attention's four
  products, the LM head's dX and dW; the lowest layer too needs dX through q, k and v, because the embeddings are
  trained;
- LoRA (peft's ``r``, ``target_modules``, ``layers_to_transform``): nothing below the lowest adapted layer. In that
  layer the input needs no gradient, so no dX through q, k and v (they read it), and only what lies behind an
  adapter gets one: with q and v adapted, attention computes dQ, dV and the probabilities' gradient but no dK; with
  only MLP projections adapted, no attention gradient at all. Above it the gradient of every activation, adapted
  layer or not (as many FLOPs as the forward matmuls), and the LoRA weight gradients, never a gradient of a frozen
  weight.
The score head's backward (one output: 2 x hidden FLOPs a position for dX, as many for dW) is left out everywhere.

bench/step_cost.py puts these beside measured step times; bench/stage_matrix.py and bench/gpu_bench.py use them for
MFU.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""The linear layers of one decoder layer, by peft's module names ("all-linear" adapts all of them)."""

INPUT_SIDE = ("q_proj", "k_proj", "v_proj")
"""Projections that read the layer's input: in the lowest trained layer nothing needs their dX (the MLP's input
needs one as soon as anything in attention is trained: it holds the attention output)."""


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


@dataclass(frozen=True)
class Lora:
    """A LoRA adapter of rank ``rank`` on the projections ``targets`` of the decoder layers ``layers`` (0-based):
    what peft's ``r``, ``target_modules`` and ``layers_to_transform`` say. Where a stage has none (``None``), it
    trains every weight."""

    rank: int
    layers: tuple[int, ...]
    targets: tuple[str, ...] = PROJECTIONS

    @classmethod
    def top(cls, shape: Shape, layers: int, rank: int, targets: Iterable[str] = PROJECTIONS) -> Lora:
        """On the top ``layers`` layers: the usual layer-selective LoRA, since backpropagation stops at the lowest."""
        return cls(rank, tuple(range(shape.layers - layers, shape.layers)), tuple(targets))

    @classmethod
    def of(cls, shape: Shape, settings) -> Lora | None:
        """From a recipe's ``lora`` settings (a LoraSettings or its dict: r, target_modules, layers, with its defaults;
        negative layers count from the end); None (full fine-tuning) stays None. Targets outside the decoder layers'
        projections, and layers the model does not have, are refused: the count would leave them out without a
        word."""
        if settings is None:
            return None
        from pipeline.config.schema import LoraSettings

        if isinstance(settings, Mapping):
            settings = LoraSettings.model_validate(dict(settings))
        targets = PROJECTIONS if settings.target_modules == "all-linear" else tuple(settings.target_modules)
        unknown = sorted(set(targets) - set(PROJECTIONS))
        if unknown:
            raise ValueError(f"LoRA targets {unknown}: the FLOP model knows the projections {', '.join(PROJECTIONS)}")
        if settings.layers is None:
            return cls(settings.r, tuple(range(shape.layers)), targets)
        if not all(-shape.layers <= i < shape.layers for i in settings.layers):
            raise ValueError(f"LoRA layers {settings.layers}: the model has {shape.layers} layers")
        return cls(settings.r, tuple(sorted({i % shape.layers for i in settings.layers})), targets)

    @property
    def lowest(self) -> int:
        """The lowest adapted layer, where backpropagation stops."""
        return min(self.layers)

    def at(self, index: int) -> tuple[int, tuple[str, ...]]:
        """(rank, targets) of layer ``index``: (0, ()) where it has no adapter."""
        return (self.rank, self.targets) if index in self.layers else (0, ())


def layer_forward(shape: Shape, tokens: float, keys: float, lora_rank: int = 0,
                  targets: Iterable[str] = PROJECTIONS) -> float:
    """One decoder layer on ``tokens`` tokens, each attending over ``keys`` keys, with a LoRA of ``lora_rank`` on its
    ``targets`` projections (0: none)."""
    targets = set(targets)
    lora = 2 * lora_rank * sum(i + o for name, (i, o) in shape.projections().items() if name in targets)
    return tokens * (2 * shape.layer_weights + 4 * shape.heads * shape.head_dim * keys + lora)


def gradients(input_grad: bool, trained: Collection[str]) -> dict[str, bool]:
    """Which tensors of one decoder layer autograd computes a gradient for: the input of each projection (by its
    name), the queries, keys and values ("q", "k", "v") and the attention probabilities ("probs"). A tensor gets one
    when something trained lies behind it: the layer's input (``input_grad``) or a ``trained`` projection."""
    q, k, v = (input_grad or name in trained for name in INPUT_SIDE)
    probs = q or k
    attention = probs or v  # the attention output, o_proj's input
    mlp = input_grad or attention or "o_proj" in trained  # the residual stream after attention: gate's and up's input
    return {"q": q, "k": k, "v": v, "probs": probs, **dict.fromkeys(INPUT_SIDE, input_grad), "o_proj": attention,
            "gate_proj": mlp, "up_proj": mlp, "down_proj": mlp or "gate_proj" in trained or "up_proj" in trained}


def layer_backward(shape: Shape, tokens: float, keys: float, lora_rank: int, lowest: bool,
                   targets: Iterable[str] = PROJECTIONS, full: bool = False) -> float:
    """Backward of one decoder layer with a LoRA of ``lora_rank`` on its ``targets`` projections or, with ``full``,
    every weight trained; ``lowest``: the lowest layer with gradients (its input needs none). ``targets`` say what the
    layer trains, so a layer without an adapter has none; the rank only prices the adapter itself (a rank of 0 on
    targets still counts their outputs' gradients)."""
    targets = set(targets)
    needs = gradients(not lowest, set(PROJECTIONS) if full else targets)
    # dQ and dK from the scores' gradient; the probabilities' gradient and dV from the product with the values
    total = 2 * shape.heads * shape.head_dim * keys * (needs["q"] + needs["k"] + needs["probs"] + needs["v"])
    for name, (i, o) in shape.projections().items():
        total += 2 * i * o * (needs[name] + full)  # dX through the weight where its input needs one; dW if trained
        if lora_rank and name in targets:  # dB, the gradient at the rank-r activations, dA, and dX through A
            total += 2 * lora_rank * (o + o + i + i * needs[name])
    return tokens * total


def head(shape: Shape, positions: float) -> float:
    """The LM head (hidden -> vocab) on ``positions`` positions; its backward (dX) costs the same."""
    return 2 * shape.hidden * shape.vocab * positions


def head_backward(shape: Shape, positions: float, trained: bool = False) -> float:
    """The LM head's backward: dX, and with ``trained`` (full fine-tuning: the head, or the embedding tied to it, is
    trained) dW as well."""
    return head(shape, positions) * (1 + trained)


def score_head(shape: Shape, positions: float) -> float:
    """A scalar head (reward or value) on ``positions`` positions."""
    return 2 * shape.hidden * positions


def layers_forward(shape: Shape, tokens: float, keys: float, lora: Lora | None = None,
                   layers: Iterable[int] | None = None) -> float:
    """The decoder layers ``layers`` (0-based; default: every one; a layer counts as often as it is listed), with
    ``lora``'s adapter where it has one (None: no adapter, as in full fine-tuning). Fewer than every layer: the part
    of the stack a PPO model runs on its own when the layers below are shared (ppo_training_shared)."""
    indices = range(shape.layers) if layers is None else layers
    kinds = Counter(lora.at(index) if lora else (0, ()) for index in indices)
    return sum(layer_forward(shape, tokens, keys, rank, targets) * count for (rank, targets), count in kinds.items())


def layers_backward(shape: Shape, tokens: float, keys: float, lora: Lora | None) -> float:
    """Backward through the decoder layers. With ``lora``: from its lowest layer up (nothing below it needs a
    gradient), adapted or not above it. None: full fine-tuning, every layer's every weight, and the lowest layer's
    input too (the embeddings are trained)."""
    if lora is None:
        return layer_backward(shape, tokens, keys, 0, lowest=False, full=True) * shape.layers
    if not lora.layers:
        return 0.0
    kinds = Counter((*lora.at(index), index == lora.lowest) for index in range(lora.lowest, shape.layers))
    return sum(layer_backward(shape, tokens, keys, rank, lowest, targets) * count
               for (rank, targets, lowest), count in kinds.items())


def lm_forward(shape: Shape, tokens: float, keys: float, positions: float | None = None,
               lora: Lora | None = None) -> float:
    """A causal LM's forward on ``tokens`` tokens, its LM head on ``positions`` of them (default: every one)."""
    return layers_forward(shape, tokens, keys, lora) + head(shape, tokens if positions is None else positions)


def score_forward(shape: Shape, tokens: float, keys: float, lora: Lora | None = None) -> float:
    """A reward or value model's forward on ``tokens`` tokens (its scalar head on every position)."""
    return layers_forward(shape, tokens, keys, lora) + score_head(shape, tokens)


def lm_training(shape: Shape, tokens: float, keys: float, lora: Lora | None, positions: float | None = None) -> Counter:
    """Forward and backward of a causal LM trained on ``tokens`` tokens with ``lora`` (None: every weight), its LM
    head on ``positions`` of them (default: every one; GRPO, RLOO and PPO keep only the completions' logits)."""
    positions = tokens if positions is None else positions
    return Counter({
        "forward: layers": layers_forward(shape, tokens, keys, lora),
        "forward: LM head": head(shape, positions),
        "backward: LM head": head_backward(shape, positions, trained=lora is None),
        "backward: layers": layers_backward(shape, tokens, keys, lora)})


def score_training(shape: Shape, tokens: float, keys: float, lora: Lora | None) -> Counter:
    """Forward and backward of a reward model (a scalar head on every position) trained on ``tokens`` tokens."""
    return Counter({
        "forward: layers": layers_forward(shape, tokens, keys, lora),
        "forward: score head": score_head(shape, tokens),
        "backward: layers": layers_backward(shape, tokens, keys, lora)})


def dpo_training(shape: Shape, tokens: float, keys: float, lora: Lora | None,
                 reference_precomputed: bool = False, reference_reuse: bool = False) -> Counter:
    """One DPO step on ``tokens`` tokens (chosen and rejected): the policy forward and backward, the reference
    forward (the adapter off, or a frozen copy) unless its log-probabilities were computed before training. With
    ``reference_reuse`` (the dpo stage's share_trunk, pipeline/models/trunk.py) the reference forward starts from the
    policy forward's hidden states at the lowest adapted layer."""
    cost = lm_training(shape, tokens, keys, lora)
    if not reference_precomputed:
        reused = reference_reuse and lora is not None and 0 < lora.lowest
        cost["reference forward"] = layers_forward(shape, tokens, keys, layers=range(lora.lowest if reused else 0,
                                                                                   shape.layers)) \
            + head(shape, tokens)
    return cost


def sampling(shape: Shape, batch: int, prompt: float, response: float, lora: Lora | None = None) -> Counter:
    """Sampling ``response`` tokens for each of ``batch`` prompts of ``prompt`` tokens with a KV cache: the prefill
    (its last logits give the first token), then one token a step over the growing keys. A mean ``response`` length
    that is not whole counts its fraction of a last step."""
    whole = int(response)
    decode = sum(layers_forward(shape, batch, prompt + t, lora) for t in range(1, whole))
    decode += (response - whole) * layers_forward(shape, batch, prompt + whole, lora)  # 0 for a whole length
    return Counter({
        "sampling: prefill": layers_forward(shape, batch * prompt, prompt, lora) + head(shape, batch),
        "sampling: decode": decode + head(shape, batch * (response - 1))})


def ppo_training(shape: Shape, batch: int, prompt: float, response: float, policy: Lora | None, value: Lora | None,
                 epochs: int, guard_rows: int = 0) -> Counter:
    """One PPO step without trunk sharing (ppo_training_shared counts it with), for any policy and value training
    (None: every weight): sample ``batch`` responses of ``response`` tokens to prompts of ``prompt`` tokens, score
    them with policy, reference (the adapter off, or a frozen copy), value and reward model, each through every layer
    (the reward model reads the text as its own chat rendering: about the same tokens), and run ``epochs`` passes of
    policy and value training. ``guard_rows``: kl.guard's extra forward of one minibatch after the last update."""
    tokens, keys = batch * (prompt + response), prompt + response
    positions = batch * (response + 1)  # the LM head runs on the response positions only (logits_to_keep)
    cost = sampling(shape, batch, prompt, response, policy)
    cost["scoring: layers"] = 2 * layers_forward(shape, tokens, keys) + layers_forward(shape, tokens, keys, policy) \
        + layers_forward(shape, tokens, keys, value)
    cost["scoring: heads"] = 2 * head(shape, positions) + 2 * score_head(shape, tokens)
    cost["epochs: forward"] = epochs * _training_forward(shape, tokens, keys, positions, policy, value)
    cost["epochs: backward"] = epochs * (layers_backward(shape, tokens, keys, policy)
                                         + layers_backward(shape, tokens, keys, value)
                                         + head_backward(shape, positions, trained=policy is None))
    if guard_rows:
        own = _training_forward(shape, tokens, keys, positions, policy, value)
        cost["kl guard: forward"] = own * guard_rows / batch
    return cost


def _training_forward(shape: Shape, tokens: float, keys: float, positions: float, policy: Lora | None,
                      value: Lora | None, policy_layers=None, value_layers=None) -> float:
    """The policy's and value model's forward of a PPO epoch (their layers ``*_layers``, default every one)."""
    return layers_forward(shape, tokens, keys, policy, policy_layers) \
        + layers_forward(shape, tokens, keys, value, value_layers) + head(shape, positions) \
        + score_head(shape, tokens)


def trained_from(shape: Shape, lora: Lora | None) -> int:
    """The lowest layer a model trained with ``lora`` trains (None: every weight, 0; an adapter on no layer: the layer
    count): below it nothing changes during a PPO step."""
    if lora is None:
        return 0
    return lora.lowest if lora.layers else shape.layers


def ppo_training_shared(shape: Shape, batch: int, prompt: float, response: float, policy: Lora | None,
                        value: Lora | None, reward: Lora | None, epochs: int, guard_rows: int = 0) -> Counter:
    """One PPO step with trunk sharing (stages/ppo/trunk.py), otherwise what ppo_training counts. The value model is
    the reward model, trained with ``reward``, plus ``value``'s adapter. Below each model's lowest trained layer
    (trained_from) nothing changes during the step, so in scoring the layers the policy, its reference and the value
    model have in common (below all three models' lowest trained layers) run once, the policy's other frozen layers
    once for it and its reference, the value model's once; each model then runs its own layers from its lowest
    trained one up, and the PPO epochs (and kl.guard's extra forward) run only those of the policy and the value
    model, on the hidden states kept there. The reward model is the value model with its adapter off: its score runs
    only the layers from the value model's lowest trained one, again with the adapter off, on the hidden states the
    value model has there (the rollout extended by the end-of-turn tokens of the reward model's rendering: a token
    or two, left out here). With a value model that trains every weight the reward model is a frozen copy: a
    separate full pass. Sampling, the heads and
    the backward (which stops at the lowest trained layer anyway) are what they are without sharing. A policy that
    trains every weight has a separate reference copy, and sharing is off: ppo_training's count."""
    cost = ppo_training(shape, batch, prompt, response, policy, value, epochs, guard_rows)
    if policy is None:
        return cost
    n = shape.layers
    tokens, keys = batch * (prompt + response), prompt + response
    positions = batch * (response + 1)  # the LM head runs on the response positions only (logits_to_keep)
    policy_from, value_from = trained_from(shape, policy), trained_from(shape, value)
    common = min(policy_from, value_from, trained_from(shape, reward))
    frozen = [*range(common), *range(common, policy_from), *range(common, value_from)]  # each run once
    policy_own, value_own = range(policy_from, n), range(value_from, n)
    cost["scoring: layers"] = layers_forward(shape, tokens, keys, layers=frozen) \
        + layers_forward(shape, tokens, keys, policy, policy_own) \
        + layers_forward(shape, tokens, keys, layers=policy_own) \
        + layers_forward(shape, tokens, keys, value, value_own) \
        + layers_forward(shape, tokens, keys, layers=value_own if value is not None else None)  # the reward model
    own = _training_forward(shape, tokens, keys, positions, policy, value, policy_own, value_own)
    cost["epochs: forward"] = epochs * own
    if guard_rows:
        cost["kl guard: forward"] = own * guard_rows / batch
    return cost

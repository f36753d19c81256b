"""Parameter counts and a rough memory estimate per stage, from the model config alone (nothing is loaded)."""

from __future__ import annotations

import re
from dataclasses import dataclass

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class Estimate:
    parameters: int
    trainable: int
    memory_gib: float
    """Weights + gradients + AdamW state of trainable weights + activations for one micro-batch. A planning
    figure, good to a factor of about 1.5; measure with bench/ before relying on it."""


def count_parameters(model_path: str, lora=None, trust_remote_code: bool = False) -> tuple[int, int, object]:
    """(total, trainable, config) for the model in ``model_path``, built on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    total = sum(p.numel() for p in model.parameters())
    if lora is None:
        return total, total, config
    trainable = 0
    targets = lora.target_modules
    output_head = model.get_output_embeddings()
    layers = None
    if lora.layers is not None:
        count = config.num_hidden_layers
        layers = {i % count if i < 0 else i for i in lora.layers}
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or module is output_head:
            continue
        found = re.search(r"\.layers\.(\d+)\.", f".{name}.")
        if layers is not None and (found is None or int(found.group(1)) not in layers):
            continue
        if targets == "all-linear" or name.split(".")[-1] in targets:
            trainable += lora.r * (module.in_features + module.out_features)
    return total + trainable, trainable, config


def estimate(model_path: str, stage_config, dtype: str, trust_remote_code: bool = False) -> Estimate | None:
    """An estimate for a training stage (one with `train` settings), else None."""
    train = getattr(stage_config, "train", None)
    if train is None:
        return None
    lora = getattr(stage_config, "lora", None)
    total, trainable, config = count_parameters(model_path, lora, trust_remote_code)
    weight_bytes = BYTES.get(dtype, 4)
    precision_bytes = 2 if train.precision in ("bf16", "fp16") else 4
    hidden = getattr(config, "hidden_size", 0)
    layers = getattr(config, "num_hidden_layers", 0)
    tokens = train.batch_size * getattr(stage_config, "max_length", 512)
    # About 17 stored values per token, hidden unit and layer (Korthikanti et al. 2022, without recomputation),
    # plus the logits; recomputation keeps one per layer instead.
    per_layer = 17 * tokens * hidden * precision_bytes
    if train.gradient_checkpointing:
        per_layer = tokens * hidden * precision_bytes
    logits = tokens * getattr(config, "vocab_size", 0) * 4 * 2
    optimizer = trainable * (4 + 8)  # fp32 gradient + two AdamW moments
    total_bytes = total * weight_bytes + optimizer + layers * per_layer + logits
    return Estimate(total, trainable, total_bytes / 2**30)

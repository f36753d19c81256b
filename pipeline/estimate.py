"""Parameter counts and a rough memory estimate per stage, from the model config alone (nothing is loaded)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class Estimate:
    parameters: int
    trainable: int
    memory_gib: float
    """Weights + gradients + AdamW state of trainable weights + activations for one micro-batch. A planning
    figure, good to a factor of about 1.5; measure with bench/ before relying on it."""


@dataclass(frozen=True)
class Layout:
    """How a job is spread over processes, as far as memory per process is concerned."""

    processes: int = 1
    zero_stage: int = 0
    """DeepSpeed ZeRO stage (0: plain DDP or one process). 1 shards optimizer state, 2 also gradients, 3 also weights."""
    offload_optimizer: bool = False
    offload_params: bool = False

    def describe(self) -> str:
        text = f"{self.processes} process{'es' if self.processes > 1 else ''}"
        if self.zero_stage:
            text += f", DeepSpeed ZeRO-{self.zero_stage}"
            offloaded = [what for what, on in (("optimizer", self.offload_optimizer), ("weights", self.offload_params))
                         if on]
            if offloaded:
                text += f" ({' and '.join(offloaded)} offloaded to CPU memory)"
        return text

    @classmethod
    def from_launch_file(cls, path: str | Path) -> "Layout":
        """The layout an accelerate config file (and the DeepSpeed JSON it names) sets up."""
        import yaml

        from .errors import PipelineError

        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise PipelineError(f"--launch {path}: cannot read the accelerate config: {exc}") from None
        processes = int(raw.get("num_processes", 1))
        if raw.get("distributed_type") != "DEEPSPEED":
            return cls(processes)
        deepspeed = raw.get("deepspeed_config") or {}
        if "deepspeed_config_file" in deepspeed:
            ds_path = Path(deepspeed["deepspeed_config_file"])
            try:
                zero = json.loads(ds_path.read_text()).get("zero_optimization", {})
            except (OSError, json.JSONDecodeError) as exc:
                raise PipelineError(f"{path}: deepspeed_config_file {ds_path}: {exc}") from None
            return cls(processes, int(zero.get("stage", 0)),
                       zero.get("offload_optimizer", {}).get("device", "none") == "cpu",
                       zero.get("offload_param", {}).get("device", "none") == "cpu")
        return cls(processes, int(deepspeed.get("zero_stage", 0)),
                   deepspeed.get("offload_optimizer_device", "none") == "cpu",
                   deepspeed.get("offload_param_device", "none") == "cpu")


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


def estimate(model_path: str, stage_config, dtype: str, trust_remote_code: bool = False,
             layout: Layout = Layout(), quantization: str | None = None) -> Estimate | None:
    """An estimate per process for a training stage (one with `train` settings), else None."""
    train = getattr(stage_config, "train", None)
    if train is None:
        return None
    lora = getattr(stage_config, "lora", None)
    total, trainable, config = count_parameters(model_path, lora, trust_remote_code)
    weight_bytes = BYTES.get(dtype, 4)
    if quantization == "4bit" and lora is not None:
        weight_bytes = 0.55  # nf4 with double quantisation, plus the layers left in full precision
    elif quantization == "8bit" and lora is not None:
        weight_bytes = 1.05
    precision_bytes = 2 if train.precision in ("bf16", "fp16") else 4
    hidden = getattr(config, "hidden_size", 0)
    layers = getattr(config, "num_hidden_layers", 0)
    sampling = getattr(stage_config, "sampling", None)
    length = getattr(stage_config, "max_length", None) or ((sampling.max_new_tokens + 128) if sampling else 512)
    tokens = train.batch_size * length
    # About 17 stored values per token, hidden unit and layer (Korthikanti et al. 2022, without recomputation),
    # plus the logits; recomputation keeps one per layer instead.
    per_layer = 17 * tokens * hidden * precision_bytes
    if train.gradient_checkpointing:
        per_layer = tokens * hidden * precision_bytes
    logits = tokens * getattr(config, "vocab_size", 0) * 4 * 2
    gradients = trainable * 4
    optimizer = trainable * 8  # two fp32 AdamW moments
    weights = total * weight_bytes
    if getattr(stage_config, "kind", None) == "ppo":
        # the reward model's backbone doubles as the value model: a second copy of the weights; full fine-tuning
        # keeps a frozen reference copy as well
        weights *= 2 if lora is not None else 3
    world = max(layout.processes, 1)
    if layout.zero_stage >= 1:
        optimizer = 0 if layout.offload_optimizer else optimizer / world
    if layout.zero_stage >= 2:
        gradients /= world
    if layout.zero_stage >= 3:
        weights = 0 if layout.offload_params else weights / world
    total_bytes = weights + gradients + optimizer + layers * per_layer + logits
    return Estimate(total, trainable, total_bytes / 2**30)

"""Parameter counts and a rough memory estimate per stage, read from the model folder alone: ``config.json`` and the
JSON headers of its safetensors files (tensor names and shapes). Nothing is loaded and torch is not imported, so
``plan`` stays fast."""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from ..config.schema import LoraSettings, MemoryProfile
from ..errors import PipelineError

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


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
    """DeepSpeed ZeRO stage (0: plain DDP or one process). 1 shards optimizer state, 2 also gradients, 3 also
    weights."""
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
        """The layout an accelerate config file (and the DeepSpeed JSON it names) sets up. A relative
        ``deepspeed_config_file`` is taken from the current directory, as accelerate does."""
        import yaml

        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise PipelineError(f"--launch {path}: cannot read the accelerate config: {exc}") from None
        if not isinstance(raw, dict):
            raise PipelineError(f"--launch {path}: an accelerate config is a YAML mapping")
        try:
            processes = int(raw.get("num_processes", 1))
        except (TypeError, ValueError):
            raise PipelineError(f"--launch {path}: num_processes is not a number") from None
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


def local_weights(source: str | Path, revision: str | None = None) -> Path:
    """The folder whose weight headers size a model: ``source`` itself when it is a folder, else (a hub id) its
    snapshot in the local hub cache at ``revision`` (any cached one when None), else ``source`` unchanged (the
    estimate is then unknown). Never downloads."""
    folder = Path(source)
    if folder.is_dir():
        return folder
    from huggingface_hub import try_to_load_from_cache

    try:
        config = try_to_load_from_cache(str(source), "config.json", revision=revision)
    except ValueError:  # not a valid repo id
        return folder
    return Path(config).parent if isinstance(config, str) else folder


def weight_shapes(folder: str | Path) -> dict[str, list[int]] | None:
    """Tensor name -> shape of every weight in a model folder's safetensors files (from their headers only), or
    None when the folder has none (a hub id, or weights in another format)."""
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return None
    shapes: dict[str, list[int]] = {}
    for file in files:
        try:
            with file.open("rb") as handle:
                (length,) = struct.unpack("<Q", handle.read(8))
                if length > 100_000_000:
                    return None
                header = json.loads(handle.read(length))
        except (OSError, struct.error, ValueError):
            return None
        shapes.update({name: info["shape"] for name, info in header.items() if name != "__metadata__"})
    return shapes


def count_parameters(folder: str | Path, lora: LoraSettings | None = None) -> tuple[int, int, dict] | None:
    """(total, trainable, config.json) for the model in ``folder``; None when its weights cannot be read.

    With ``lora``: every 2-D weight inside a transformer layer whose module name matches ``target_modules`` (all of
    them for "all-linear", which in these models are exactly the linear layers) gets r x (in + out) adapter weights;
    ``layers`` restricts the layers."""
    shapes = weight_shapes(folder)
    if shapes is None:
        return None
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    config = config.get("text_config", config)
    total = sum(_numel(shape) for shape in shapes.values())
    if lora is None:
        return total, total, config
    count = int(config.get("num_hidden_layers") or 0)
    layers = {i % count if i < 0 else i for i in lora.layers} if lora.layers is not None and count else None
    trainable = 0
    for name, shape in shapes.items():
        found = LAYER.search(name)
        if len(shape) != 2 or not name.endswith(".weight") or found is None:
            continue
        if layers is not None and int(found.group(1)) not in layers:
            continue
        module = name.removesuffix(".weight").rsplit(".", 1)[-1]
        if lora.target_modules == "all-linear" or module in lora.target_modules:
            trainable += lora.r * (shape[0] + shape[1])
    return total + trainable, trainable, config


def _numel(shape: list[int]) -> int:
    n = 1
    for dim in shape:
        n *= dim
    return n


def estimate(folder: str | Path, profile: MemoryProfile | None, dtype: str, layout: Layout = Layout(),
             quantization: str | None = None) -> Estimate | None:
    """An estimate per process for a training stage, else None (no profile, or weights that cannot be read)."""
    if profile is None:
        return None
    counted = count_parameters(folder, profile.lora)
    if counted is None:
        return None
    total, trainable, config = counted
    lora, train = profile.lora, profile.train
    weight_bytes = BYTES.get(dtype, 4)
    if quantization == "4bit" and lora is not None:
        weight_bytes = 0.55  # nf4 with double quantisation, plus the layers left in full precision
    elif quantization == "8bit" and lora is not None:
        weight_bytes = 1.05
    precision_bytes = 2 if train.precision in ("bf16", "fp16") else 4
    hidden = int(config.get("hidden_size") or 0)
    layers = int(config.get("num_hidden_layers") or 0)
    tokens = train.batch_size * profile.sequence_length
    # About 17 stored values per token, hidden unit and layer (Korthikanti et al. 2022, without recomputation),
    # plus the logits; recomputation keeps one per layer instead.
    per_layer = 17 * tokens * hidden * precision_bytes
    if train.gradient_checkpointing:
        per_layer = tokens * hidden * precision_bytes
    logits = tokens * int(config.get("vocab_size") or 0) * 4 * 2
    gradients = trainable * 4
    optimizer = trainable * 8  # two fp32 AdamW moments
    weights = total * weight_bytes * profile.weight_copies
    world = max(layout.processes, 1)
    if layout.zero_stage >= 1:
        optimizer = 0 if layout.offload_optimizer else optimizer / world
    if layout.zero_stage >= 2:
        gradients /= world
    if layout.zero_stage >= 3:
        weights = 0 if layout.offload_params else weights / world
    total_bytes = weights + gradients + optimizer + layers * per_layer + logits
    return Estimate(total, trainable, total_bytes / 2**30)

"""Model sources: resolving a recipe's ``model`` to a folder, fingerprinting it, and loading it with plain transformers."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

from .errors import ModelError

BUILTINS: dict[str, Callable[[], Path]] = {}
"""builtin:NAME -> a function that builds or fetches the model once and returns its cached folder."""


def builtin(name: str):
    def register(fn: Callable[[], Path]) -> Callable[[], Path]:
        BUILTINS[name] = fn
        return fn

    return register


@builtin("tiny-llama")
def _tiny_llama() -> Path:
    from .tiny_model import tiny_llama_path

    return tiny_llama_path()


def check_source(source: str) -> str | None:
    """Why ``source`` cannot be used, or None. Cheap: nothing is built or loaded."""
    if source.startswith("builtin:"):
        name = source.removeprefix("builtin:")
        if name not in BUILTINS:
            return f"unknown builtin model '{name}'; known: {', '.join(sorted(BUILTINS))}"
        return None
    path = Path(source).expanduser()
    if source.endswith(".gguf"):
        return None if path.is_file() else f"GGUF file not found: {path}"
    if path.exists() or source.startswith((".", "/", "~")):
        if not (path / "config.json").is_file():
            return f"{path} is not a model folder (no config.json)"
        return None
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(source, "config.json"), str):
            return f"'{source}' is neither a local folder nor in the hub cache, and HF_HUB_OFFLINE=1"
    return None


def resolve(source: str, revision: str | None = None) -> str:
    """A folder (or hub id) that ``from_pretrained`` can read; builds builtin models on first use."""
    if source.startswith("builtin:"):
        return str(BUILTINS[source.removeprefix("builtin:")]())
    if source.endswith(".gguf"):
        from .gguf import gguf_folder

        return str(gguf_folder(Path(source)))
    return str(Path(source).expanduser()) if Path(source).expanduser().exists() else source


def fingerprint_folder(folder: str | Path) -> str:
    """A cheap content fingerprint of a model folder: config and tokenizer files in full, weight files by name and size.

    Hashing gigabytes of weights on every run would cost more than the check is worth; a re-saved model of the same
    size with the same config is the one case this misses.
    """
    folder = Path(folder)
    digest = hashlib.sha256()
    if not folder.is_dir():  # a hub id: its revision is its identity
        digest.update(str(folder).encode())
        return digest.hexdigest()
    for file in sorted(folder.rglob("*")):
        if not file.is_file() or file.name.startswith("."):
            continue
        digest.update(str(file.relative_to(folder)).encode())
        if file.suffix in (".json", ".jinja", ".txt", ".model", ".yaml"):
            digest.update(file.read_bytes())
        else:
            digest.update(str(file.stat().st_size).encode())
    return digest.hexdigest()


def torch_dtype(name: str):
    """The torch dtype for a recipe dtype name; auto is bf16 on GPUs that support it, fp32 elsewhere."""
    import torch

    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_tokenizer(path: str, trust_remote_code: bool = False, revision: str | None = None):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, revision=revision)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the tokenizer from {path}: {exc}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def quantization_config(quantization: str | None, dtype: str = "auto"):
    """bitsandbytes settings for "4bit" (nf4, double quantisation) or "8bit"; None loads dense weights."""
    if quantization is None:
        return None
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch_dtype(dtype),
    )


def _quantized_loading(quantization: str | None, dtype: str = "auto") -> dict:
    """``from_pretrained`` keyword arguments that load a model quantised by bitsandbytes (none for dense)."""
    if quantization is None:
        return {}
    import torch

    return {"quantization_config": quantization_config(quantization, dtype),
            "device_map": None if torch.cuda.is_available() else "cpu"}


def _load_pretrained(auto_class, what: str, path: str, dtype: str, quantization: str | None, **kwargs):
    """``auto_class.from_pretrained`` with the recipe's dtype and quantisation; 4-bit layers kept trainable on CPU."""
    try:
        model = auto_class.from_pretrained(path, dtype=torch_dtype(dtype), **_quantized_loading(quantization, dtype),
                                           **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load {what} from {path}: {exc}") from None
    if quantization == "4bit":
        keep_4bit_trainable_on_cpu(model)
    return model


def load_causal_lm(
    path: str,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    revision: str | None = None,
    quantization: str | None = None,
):
    from transformers import AutoModelForCausalLM

    return _load_pretrained(AutoModelForCausalLM, "a causal LM", path, dtype, quantization,
                            trust_remote_code=trust_remote_code, revision=revision)


def load_sequence_classifier(path: str, dtype: str = "auto", quantization: str | None = None):
    """A one-label sequence classifier (a reward model, or a causal LM's weights with a new score head)."""
    from transformers import AutoModelForSequenceClassification

    return _load_pretrained(AutoModelForSequenceClassification, "a sequence classifier", path, dtype, quantization,
                            num_labels=1)


def keep_4bit_trainable_on_cpu(model) -> int:
    """Work around a bitsandbytes bug on CPUs with AVX512-BF16: the first eval-mode no-grad forward through a
    ``Linear4bit`` repacks its weight for CPU inference for good, after which backward runs through a kernel without
    autograd and LoRA gradients silently become None. Turning the repacking off keeps QLoRA training correct (at some
    cost to CPU inference speed). Returns how many layers were changed."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    changed = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


@builtin("smollm2-135m-instruct")
def _smollm2_135m_instruct() -> Path:
    from .smollm2 import smollm2_path

    return smollm2_path()

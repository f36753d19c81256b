"""GGUF files as model sources: dequantised once into a plain safetensors folder, cached by the file's sha256."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ..store.atomic import built_once
from ..store.hashing import sha256_file
from ..store.paths import cache_dir

log = logging.getLogger("pipeline")

VERSION = 1  # bump when convert() changes, so cached conversions are rebuilt


def convert(gguf: Path, out: Path, dtype: str = "bfloat16") -> None:
    """Dequantise ``gguf`` and save model and tokenizer in ``out`` as a plain transformers folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(gguf.parent), gguf.name
    # dequantize=True: always unpack to dense weights. Left to itself, transformers keeps the weights packed when
    # the `kernels` package is installed, and a packed model cannot be saved as safetensors.
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=getattr(torch, dtype), quantization_config=GgufConfig(dequantize=True)
    )
    if getattr(model, "hf_quantizer", None) is not None:  # older releases keep it; save_pretrained refuses then
        model.hf_quantizer.remove_quantization_config(model)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # A GGUF carries no length limit, so the tokenizer would say 1e30 and truncation would never happen.
    tokenizer.model_max_length = model.config.max_position_embeddings
    # Generation must stop at the chat end token: write it into the configs rather than trust the GGUF metadata.
    for config in (model.generation_config, model.config):
        config.eos_token_id = tokenizer.eos_token_id
        config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def gguf_folder(gguf: Path) -> Path:
    """The cached converted folder for a local .gguf file, converted on first use."""
    gguf = Path(gguf).expanduser().resolve()
    final = cache_dir("models") / f"gguf-{sha256_file(gguf)[:16]}-v{VERSION}"
    with built_once(final) as tmp:
        if tmp is not None:
            start = time.perf_counter()
            convert(gguf, tmp)
            log.info("converted %s in %.1f s -> %s", gguf.name, time.perf_counter() - start, final)
    return final

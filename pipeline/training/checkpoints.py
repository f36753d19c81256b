"""Trainer checkpoints that count only once complete.

transformers writes ``checkpoint-N`` in place, file after file; a run killed in the middle leaves a folder that looks
like a checkpoint and cannot be resumed from. ``mark_complete`` writes a marker (the files and their sizes) after
the trainer has written everything (its ``on_save`` event); ``last_complete_checkpoint`` resumes from the newest
checkpoint whose marker matches its files, and removes the others with a warning, so a half-written checkpoint never
blocks a stage.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

log = logging.getLogger("pipeline")

MARKER = ".complete.json"
PATTERN = re.compile(r"^checkpoint-(\d+)$")


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MARKER and not p.name.startswith(".tmp")}


def mark_complete(folder: Path) -> None:
    """Record that ``folder`` holds a whole checkpoint (written atomically: temp name, then rename)."""
    folder = Path(folder)
    tmp = folder / f".tmp{MARKER}"
    tmp.write_text(json.dumps({"files": _files(folder)}))
    os.replace(tmp, folder / MARKER)


def is_complete(folder: Path) -> bool:
    try:
        recorded = json.loads((folder / MARKER).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return recorded == _files(folder) and bool(recorded)


def last_complete_checkpoint(work_dir: Path, stage: str = "") -> str | None:
    """The newest complete checkpoint-N in ``work_dir``; incomplete ones are deleted with a warning."""
    work_dir = Path(work_dir)
    if not work_dir.is_dir():
        return None
    found = sorted((int(m.group(1)), p) for p in work_dir.iterdir() if p.is_dir() and (m := PATTERN.match(p.name)))
    best = None
    for step, folder in reversed(found):
        if best is None and is_complete(folder):
            best = folder
        elif best is None:
            log.warning("[%s] %s is incomplete (a run was killed while writing it): removed, resuming from an "
                        "earlier checkpoint if there is one", stage, folder)
            shutil.rmtree(folder, ignore_errors=True)
    return str(best) if best is not None else None

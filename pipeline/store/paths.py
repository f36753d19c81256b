"""Where the project keeps things that outlive a run: built models, fetched wheels, extracted data."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """``$PIPELINE_CACHE`` (default ``~/.cache/alignment-pipeline``) joined with ``parts``; created on demand."""
    root = Path(os.environ.get("PIPELINE_CACHE", Path.home() / ".cache" / "alignment-pipeline")).expanduser()
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path

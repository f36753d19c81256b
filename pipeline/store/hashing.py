"""File digests, read in chunks so a large wheel or data file never sits in memory whole."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_file_cached(path: Path) -> str:
    """``sha256_file``, remembered under the cache folder by the file's absolute path, size and modification time,
    so a large unchanged file (a model's weights) is read once, while any rewrite of it is noticed."""
    import json
    import os

    from .paths import cache_dir

    path = Path(path).absolute()
    stat = path.stat()
    key = hashlib.sha256(str(path).encode()).hexdigest()
    record = cache_dir("digests") / f"{key}.json"
    stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    try:
        saved = json.loads(record.read_text())
        if {k: saved.get(k) for k in stamp} == stamp and isinstance(saved.get("sha256"), str):
            return saved["sha256"]
    except (OSError, ValueError):
        pass
    digest = sha256_file(path)
    tmp = record.with_name(f".{record.name}.{os.getpid()}")
    try:
        tmp.write_text(json.dumps({**stamp, "sha256": digest, "path": str(path)}))
        os.replace(tmp, record)
    except OSError:  # a read-only cache only costs a re-hash next time
        pass
    return digest

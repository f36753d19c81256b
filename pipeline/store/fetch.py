"""Fetch one pinned file from PyPI with pip, checked against a hard-coded sha256 and cached for good.

Why pip and not HTTP: pip already knows this machine's indexes, proxy and certificates (its config), so the
pipeline needs no URLs of its own. Why a checksum: a file on an index can be replaced or a mirror can be stale, and
a model or data set that silently changes would make runs incomparable. The cache is content-addressed (a folder
named by the digest), so a second call costs no network, only a re-hash of the file.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..errors import PipelineError
from .atomic import built_once
from .hashing import sha256_file
from .paths import cache_dir

log = logging.getLogger("pipeline")

_SHA256 = re.compile(r"[0-9a-f]{64}")


def _verify(path: Path, expected: str) -> None:
    """Raise (and delete ``path``) if its digest is not ``expected``, so a bad file never stays in the cache."""
    actual = sha256_file(path)
    if actual != expected:
        path.unlink(missing_ok=True)
        raise PipelineError(
            f"{path.name}: sha256 mismatch, expected {expected}, got {actual}; the file was deleted"
        )


def _only_file(folder: Path) -> Path:
    """The single file pip left in ``folder``; anything else means the requirement was not pinned to one file."""
    files = [p for p in folder.iterdir() if p.is_file()]
    if len(files) != 1:
        names = ", ".join(sorted(p.name for p in files)) or "nothing"
        raise PipelineError(f"{folder}: expected exactly one downloaded file, found {names}")
    return files[0]


def _pip_download(requirement: str, sha256: str, dest: Path, source: bool) -> Path:
    """Run ``pip download --no-deps`` into ``dest`` and return the one file it saved.

    The digest goes to pip too (``--require-hashes``), so pip refuses a wrong file before it runs any of a source
    archive's setup code. Without ``source`` it asks for a wheel only (``--only-binary :all:``): otherwise pip would
    fall back to building the sdist just to produce a file whose checksum cannot match.
    """
    pinned = dest / ".requirement.txt"
    pinned.write_text(f"{requirement} --hash=sha256:{sha256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet"]
    cmd += ["--no-binary", ":all:"] if source else ["--only-binary", ":all:"]
    cmd += ["--require-hashes", "-r", str(pinned), "-d", str(dest)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout or "").strip().splitlines()[-15:])
        raise PipelineError(f"pip download {requirement} failed (exit {result.returncode}):\n{tail}")
    pinned.unlink()
    return _only_file(dest)


def fetch_from_pypi(requirement: str, sha256: str, *, source: bool = False) -> Path:
    """The cached path of the file that ``pip download --no-deps REQUIREMENT`` gives, whose sha256 must match.

    ``source=True`` fetches the source archive (``--no-binary :all:``), which can hold files the wheel leaves out.
    Concurrent callers are serialised by ``built_once``'s file lock, so only one process downloads. A cached file is
    re-hashed on every call; a mismatch deletes it (so the next call downloads afresh) and raises PipelineError.
    """
    sha256 = sha256.lower()
    if not _SHA256.fullmatch(sha256):
        raise PipelineError(f"fetch {requirement}: '{sha256}' is not a hex sha256 digest")
    final = cache_dir("downloads") / sha256
    with built_once(final) as tmp:
        if tmp is not None:
            kind = "source archive" if source else "wheel"
            log.info("fetching %s (%s, no deps) from PyPI", requirement, kind)
            start = time.perf_counter()
            path = _pip_download(requirement, sha256, tmp, source)
            size_mb = path.stat().st_size / 1e6
            log.info("fetched %s: %.1f MB in %.1f s", path.name, size_mb, time.perf_counter() - start)
            _verify(path, sha256)  # raising here makes built_once discard the temporary folder
        else:
            try:
                path = _only_file(final)
                _verify(path, sha256)
            except PipelineError:
                shutil.rmtree(final, ignore_errors=True)  # a damaged cache entry: download again next time
                raise
            log.debug("using cached %s (%.1f MB)", path.name, path.stat().st_size / 1e6)
    return final / path.name

"""Offline tests of the PyPI fetcher and the movie-review extraction: pip is replaced by a fake that writes bytes."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.errors import PipelineError
from pipeline.store import fetch

WHEEL = "pkg-1.0-py3-none-any.whl"
GOOD = b"the real wheel"
GOOD_SHA = hashlib.sha256(GOOD).hexdigest()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("PIPELINE_CACHE", str(root))
    return root


class FakePip:
    """Stands in for subprocess.run: records each command and saves ``content`` where pip would (``-d DIR``)."""

    def __init__(self, content: bytes = GOOD, name: str = WHEEL, returncode: int = 0, delay: float = 0.0):
        self.content, self.name, self.returncode, self.delay = content, name, returncode, delay
        self.calls: list[list[str]] = []
        self.requirements: list[str] = []

    def __call__(self, cmd, **kwargs):
        self.calls.append(list(cmd))
        self.requirements.append(Path(cmd[cmd.index("-r") + 1]).read_text().strip())
        time.sleep(self.delay)
        if self.returncode == 0:
            (Path(cmd[cmd.index("-d") + 1]) / self.name).write_bytes(self.content)
        return subprocess.CompletedProcess(cmd, self.returncode, "", "ERROR: No matching distribution found")


def no_pip(*args, **kwargs):
    raise AssertionError("pip must not run on a cache hit")


def test_download_is_verified_cached_and_not_repeated(monkeypatch):
    pip = FakePip()
    monkeypatch.setattr(fetch.subprocess, "run", pip)
    path = fetch.fetch_from_pypi("pkg==1.0", GOOD_SHA)
    assert path.read_bytes() == GOOD and path.name == WHEEL
    cmd = pip.calls[0]
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"] and "--no-deps" in cmd and "--require-hashes" in cmd
    assert pip.requirements[0] == f"pkg==1.0 --hash=sha256:{GOOD_SHA}", "pip checks the digest before any setup code"
    assert "--only-binary" in cmd and "--no-binary" not in cmd

    monkeypatch.setattr(fetch.subprocess, "run", no_pip)
    assert fetch.fetch_from_pypi("pkg==1.0", GOOD_SHA.upper()) == path


def test_source_asks_pip_for_the_source_archive(monkeypatch):
    pip = FakePip(name="pkg-1.0.tar.gz")
    monkeypatch.setattr(fetch.subprocess, "run", pip)
    assert fetch.fetch_from_pypi("pkg==1.0", GOOD_SHA, source=True).name == "pkg-1.0.tar.gz"
    cmd = pip.calls[0]
    assert cmd[cmd.index("--no-binary") + 1] == ":all:" and "--only-binary" not in cmd


def test_checksum_mismatch_on_download_is_refused_and_nothing_cached(monkeypatch, cache):
    monkeypatch.setattr(fetch.subprocess, "run", FakePip(content=b"a tampered wheel"))
    with pytest.raises(PipelineError) as err:
        fetch.fetch_from_pypi("pkg==1.0", GOOD_SHA)
    message = str(err.value)
    assert WHEEL in message and GOOD_SHA in message and hashlib.sha256(b"a tampered wheel").hexdigest() in message
    assert [p.name for p in (cache / "downloads").iterdir()] == [f"{GOOD_SHA}.lock"]  # no folder, no temp left


def test_damaged_cached_file_is_refused_deleted_and_fetched_again(monkeypatch):
    monkeypatch.setattr(fetch.subprocess, "run", FakePip())
    path = fetch.fetch_from_pypi("pkg==1.0", GOOD_SHA)
    path.write_bytes(b"bit rot")

    monkeypatch.setattr(fetch.subprocess, "run", no_pip)
    with pytest.raises(PipelineError, match=f"expected {GOOD_SHA}, got {hashlib.sha256(b'bit rot').hexdigest()}"):
        fetch.fetch_from_pypi("pkg==1.0", GOOD_SHA)
    assert not path.exists()

    pip = FakePip()
    monkeypatch.setattr(fetch.subprocess, "run", pip)
    assert fetch.fetch_from_pypi("pkg==1.0", GOOD_SHA).read_bytes() == GOOD and len(pip.calls) == 1


def test_pip_failure_and_bad_digest_are_reported(monkeypatch):
    monkeypatch.setattr(fetch.subprocess, "run", FakePip(returncode=1))
    with pytest.raises(PipelineError, match="No matching distribution"):
        fetch.fetch_from_pypi("pkg==9.9", GOOD_SHA)
    monkeypatch.setattr(fetch.subprocess, "run", no_pip)
    with pytest.raises(PipelineError, match="not a hex sha256"):
        fetch.fetch_from_pypi("pkg==1.0", "abc123")


def test_concurrent_callers_download_once(monkeypatch):
    pip = FakePip(delay=0.3)
    monkeypatch.setattr(fetch.subprocess, "run", pip)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(fetch.fetch_from_pypi("pkg==1.0", GOOD_SHA)))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(pip.calls) == 1 and len(set(results)) == 1 and len(results) == 3



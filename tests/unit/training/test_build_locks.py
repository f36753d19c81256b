"""A DeepSpeed op build killed midway leaves torch's build lock behind, and every later DeepSpeed run then waits on
it forever without a word (seen: a two-process ZeRO-2 test idle for 11 minutes). A run refuses such a lock at once,
naming it; a fresh lock (a build under way in another run) and runs without DeepSpeed are left alone."""

from __future__ import annotations

import os
import time

import pytest

from pipeline.errors import MachineError
from pipeline.training.distributed import STALE_BUILD_LOCK_S, refuse_stale_build_locks


@pytest.fixture
def lock(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    path = tmp_path / "py311_cpu" / "deepspeed_shm_comm" / "lock"
    path.parent.mkdir(parents=True)
    path.touch()
    return path


def age(path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_a_dead_builds_lock_is_refused_by_name(lock):
    age(lock, STALE_BUILD_LOCK_S + 120)
    with pytest.raises(MachineError, match="deepspeed_shm_comm/lock: .* 12 min ago") as refused:
        refuse_stale_build_locks()
    assert refused.value.exit_code == 2


def test_a_build_under_way_is_waited_for(lock):
    age(lock, 30)
    refuse_stale_build_locks()


def test_without_deepspeed_the_cache_is_not_its_business(lock, monkeypatch):
    age(lock, STALE_BUILD_LOCK_S * 10)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    refuse_stale_build_locks()

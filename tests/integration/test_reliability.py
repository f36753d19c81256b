"""Nothing lost, nothing wrong kept: damaged artifacts are noticed, diverged training is never committed, one run per
output folder, --force starts over, leftovers of dead runs are cleared, a half-written checkpoint never blocks."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from pipeline.artifacts.artifact import Artifact
from pipeline.errors import PipelineError, StorageError, TrainingDiverged
from pipeline.graph import runner
from pipeline.graph.plan import DamagedArtifact, make_plan
from pipeline.recipe import load_recipe
from support import ROOT, TESTS, make_card, run_cli, run_recipe, sft_stage, write_jsonl


@pytest.fixture
def chain(make_recipe, chat_data, tmp_path):
    """sft -> next (an sft stage on top), built once per test."""
    path = make_recipe({"sft": sft_stage(chat_data), "next": {**sft_stage(chat_data, steps=2), "from": "sft"}})
    run_recipe(path)
    return path, tmp_path / "out"


def test_upstream_weights_overwritten_in_place_are_refused(chain):
    path, out = chain
    weights = out / "sft" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100:] = bytes(100)  # same size, other bytes
    weights.write_bytes(bytes(data))
    with pytest.raises(DamagedArtifact) as info:
        make_plan(load_recipe(path), only=["next"], force=["next"])
    message = str(info.value)
    assert "adapter_model.safetensors changed since the stage wrote it" in message and "--force sft" in message
    result = run_cli("run", str(path), "--only", "next", "--force", "next")
    assert result.returncode == 2 and "--force sft" in result.stderr and "Traceback" not in result.stderr
    make_plan(load_recipe(path), force=["sft"])  # rebuilding the damaged stage is allowed


def test_a_same_time_overwrite_is_found_by_verify(chain):
    path, out = chain
    weights = out / "sft" / "adapter_model.safetensors"
    stat = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-100:] = bytes(100)
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # a tamperer that restores the time
    assert make_plan(load_recipe(path))["sft"].action == "cached", "the fast check trusts size and time"
    with pytest.raises(DamagedArtifact, match="changed since the stage wrote it"):
        make_plan(load_recipe(path), verify=True)


def test_deleted_weights_are_refused(chain):
    path, out = chain
    (out / "sft" / "adapter_model.safetensors").unlink()
    with pytest.raises(DamagedArtifact, match=r"out/sft \(variant \w+\): adapter_model.safetensors is missing"):
        make_plan(load_recipe(path))


def test_base_model_weights_replaced_with_a_same_size_file_rerun_everything(make_recipe, chat_data, tmp_path,
                                                                            tiny_path):
    base = tmp_path / "base"
    shutil.copytree(tiny_path, base)
    path = make_recipe({"sft": sft_stage(chat_data)}, model=str(base))
    run_recipe(path)
    weights = base / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-64:] = bytes(64)
    weights.write_bytes(bytes(data))
    plan = make_plan(load_recipe(path))
    assert plan["sft"].action == "run" and plan["sft"].reason == "base model files changed"


def test_a_card_without_a_checksum_notices_its_source_shrinking(make_recipe, tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
            for i in range(20)]
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    card = make_card(tmp_path, source={"path": str(data)})  # no sha256, no row count
    stage = sft_stage(data)
    stage["data"] = str(card)
    path = make_recipe({"sft": stage})
    run_recipe(path)
    assert make_plan(load_recipe(path))["sft"].action == "cached"
    write_jsonl(data, rows[:10])
    plan = make_plan(load_recipe(path))
    assert plan["sft"].action == "run" and plan["sft"].reason == "input data changed"


@pytest.mark.slow  # runs in fresh processes
def test_diverged_training_is_never_committed(make_recipe, chat_data, tmp_path):
    path = make_recipe({"sft": sft_stage(chat_data, steps=6, train={"learning_rate": 1e30, "save_steps": 100})})
    with pytest.raises(TrainingDiverged) as info:
        run_recipe(path)
    assert "training diverged at step" in str(info.value) and "Nothing was saved" in str(info.value)
    out = tmp_path / "out"
    assert Artifact.read(out / "sft") is None and not list(out.glob(".tmp-*"))
    result = run_cli("run", str(path))
    assert result.returncode == 1 and "training diverged at step" in result.stderr
    assert "Traceback" not in result.stderr


def test_non_finite_settings_are_refused_at_validation(make_recipe, chat_data):
    from pipeline.errors import RecipeError

    with pytest.raises(RecipeError, match="stages.sft.lora.alpha: Input should be a finite number"):
        load_recipe(make_recipe({"sft": sft_stage(chat_data, lora={"alpha": float("inf")})}))


@pytest.mark.slow  # runs in fresh processes
def test_a_model_whose_weights_hold_nan_is_refused_on_load(make_recipe, chat_data, tmp_path, tiny_path):
    import torch
    from safetensors.torch import load_file, save_file

    base = tmp_path / "base"
    shutil.copytree(tiny_path, base)
    tensors = load_file(base / "model.safetensors")
    name = sorted(tensors)[3]
    tensors[name][0] = float("nan")
    save_file(tensors, str(base / "model.safetensors"), metadata={"format": "pt"})
    result = run_cli("run", str(make_recipe({"sft": sft_stage(chat_data)}, model=str(base))))
    assert result.returncode == 2 and f"weight {name} holds NaN or inf" in result.stderr
    assert torch.isnan(load_file(base / "model.safetensors")[name]).any()


def test_manifest_that_is_not_an_object_counts_as_no_artifact(chain):
    path, out = chain
    (out / "next" / "manifest.json").write_text("[1, 2]")
    plan = make_plan(load_recipe(path))
    assert plan["next"].action == "run" and plan["next"].reason == "new"


# --- one run per output folder ------------------------------------------------------------------------------------


@pytest.mark.slow  # runs in fresh processes
def test_a_second_run_into_the_same_folder_is_refused(make_recipe, chat_data, tmp_path):
    path = make_recipe({"sft": sft_stage(chat_data, steps=400, train={"save_steps": 1000})})
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{TESTS}"}
    first = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(path)], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock = tmp_path / "out" / ".lock"
        deadline = time.time() + 60
        while not lock.exists() and time.time() < deadline:
            time.sleep(0.1)
        assert lock.exists()
        second = run_cli("run", str(path))
        assert second.returncode == 2 and "is in use by another run" in second.stderr
        assert f"process {first.pid}" in second.stderr and "Traceback" not in second.stderr
    finally:
        first.kill()
        first.wait()
    # the first run was killed: its lock is stale and the next run takes it over
    later = run_cli("run", str(path), "--set", "stages.sft.train.max_steps=2")
    assert later.returncode == 0, later.stderr[-2000:]
    assert "taking over the lock" in later.stderr and not (tmp_path / "out" / ".lock").exists()


# --- checkpoints and leftovers --------------------------------------------------------------------------------------


def test_force_discards_checkpoints_and_trains_from_scratch(make_recipe, chat_data, tmp_path):
    path = make_recipe({"sft": sft_stage(chat_data, steps=4, train={"save_steps": 2})})
    plan = make_plan(load_recipe(path))
    runner.run_plan(plan, keep_checkpoints=True)
    assert list((tmp_path / "out" / ".work").glob("sft-*/checkpoint-4"))
    runner.run_plan(make_plan(load_recipe(path), force=["sft"]))
    metrics = json.loads((tmp_path / "out" / "sft" / "metrics.json").read_text())
    assert metrics["global_step"] == 4 and metrics["train_runtime"] > 0


def test_a_half_written_checkpoint_never_blocks_the_stage(make_recipe, chat_data, tmp_path):
    path = make_recipe({"sft": sft_stage(chat_data, steps=4, train={"save_steps": 2})})
    plan = make_plan(load_recipe(path))
    work = runner.work_dir(plan, plan["sft"])
    half = work / "checkpoint-20"
    half.mkdir(parents=True)
    (half / "model.safetensors").write_bytes(b"half")  # what a kill or a full disk leaves
    runner.run_plan(plan)
    assert json.loads((tmp_path / "out" / "sft" / "metrics.json").read_text())["global_step"] == 4


def test_leftovers_of_dead_runs_are_cleared(make_recipe, chat_data, tmp_path):
    out = tmp_path / "out"
    store = out / ".store"
    (store / ".tmp-sft-abcdef").mkdir(parents=True)
    (store / ".old-sft-1234").mkdir()
    (out / ".work" / "sft-000000000000" / "checkpoint-2").mkdir(parents=True)
    run_recipe(make_recipe({"sft": sft_stage(chat_data)}))
    assert not list(store.glob(".tmp-*")) and not list(store.glob(".old-*"))
    assert not (out / ".work").exists()


def test_a_full_disk_is_named(make_recipe, chat_data, tmp_path, monkeypatch):
    path = make_recipe({"sft": sft_stage(chat_data)})
    run_recipe(path)
    before = Artifact.read(tmp_path / "out" / "sft").manifest["finished_at"]

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "x"))

    monkeypatch.setattr(runner, "record_files", no_space)
    with pytest.raises(StorageError) as info:
        run_recipe(path, force=["sft"])
    assert "no space left on the device" in str(info.value) and "MiB free" in str(info.value)
    assert Artifact.read(tmp_path / "out" / "sft").manifest["finished_at"] == before, "the old artifact stays"
    assert not list((tmp_path / "out").glob(".tmp-*"))
    assert issubclass(StorageError, PipelineError) and StorageError.exit_code == 2


@pytest.mark.slow  # runs in fresh processes
def test_a_really_full_disk(make_recipe, chat_data, tmp_path):
    """On a 1 MB tmpfs the stage runs out of space writing its checkpoint; the error says so. Needs mount rights
    (root in a container that allows it); skipped with the reason elsewhere."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        path = make_recipe({"sft": sft_stage(chat_data, lora=None, train={"save_steps": 1})},
                           output_dir=str(mount / "out"))
        result = run_cli("run", str(path))
        assert result.returncode == 2 and "no space left" in result.stderr.lower(), result.stderr[-2000:]
        assert "Traceback" not in result.stderr
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)

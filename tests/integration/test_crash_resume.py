"""kill -9 while a checkpoint is being written, in every trainer stage and in PPO: the next run skips the half-written
checkpoint, resumes from the last complete one, and ends where an uninterrupted run ends (weights and metrics.json)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipeline.graph.plan import make_plan
from pipeline.graph.runner import run_plan
from pipeline.recipe import load_recipe
from support import RECIPES, copy_artifacts, run_cli
from support.upstream import UPSTREAM

pytestmark = pytest.mark.slow  # three runs of each stage, in fresh processes

TIMING = ("runtime", "per_second", "seconds_per_step", "step_time", "generated_tokens_per_s", "generate_time")
CASES = {  # kind: (recipe, upstream stages, overrides for a short stage)
    "sft": ("tiny.yaml", (), ["stages.sft.train.max_steps=6"]),
    "reward": ("tiny.yaml", ("sft", "preferences"), ["stages.reward.train.max_steps=6"]),
    "dpo": ("tiny.yaml", ("sft", "preferences"), ["stages.dpo.train.max_steps=6"]),
    "grpo": ("online.yaml", ("sft", "preferences", "reward"), ["stages.grpo.train.max_steps=6"]),
    "rloo": ("online.yaml", ("sft", "preferences", "reward"), ["stages.rloo.train.max_steps=6"]),
    # the beta controller's state travels in the checkpoints: the resumed run goes on with the same beta
    "grpo:beta_control": ("online.yaml", ("sft", "preferences", "reward"),
                          ["stages.grpo.train.max_steps=6", "stages.grpo.beta_control={target: 0.005}"]),
}


@pytest.fixture(scope="module")
def built(upstreams) -> dict[str, Path]:
    """Each recipe's sft, preferences and reward, from the session's shared upstreams (tests/conftest.py: online.yaml's
    are tiny.yaml's, one folder); the tests copy them."""
    return {recipe: upstreams.get(RECIPES / recipe, UPSTREAM) for recipe in ("tiny.yaml", "online.yaml")}


def comparable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not any(t in k for t in TIMING)}


def weights(folder: Path) -> dict[str, torch.Tensor]:
    found = {}
    for file in sorted(folder.glob("*.safetensors")):
        found.update({f"{file.name}:{k}": v for k, v in load_file(file).items()})
    return found


@pytest.mark.parametrize("case", list(CASES))
def test_kill_during_a_checkpoint_write_resumes_to_the_uninterrupted_result(case, built, tmp_path):
    recipe, upstream, overrides = CASES[case]
    kind = case.split(":")[0]
    settings = [*overrides, f"stages.{kind}.train.save_steps=2", f"stages.{kind}.train.logging_steps=1",
                f"stages.{kind}.train.callbacks=[support.callbacks:KillDuringSave]", "evaluate=null"]
    args = ["run", str(RECIPES / recipe), "--only", kind, *[a for s in settings for a in ("--set", s)]]
    killed_out = copy_artifacts(built[recipe], tmp_path / "killed", upstream)
    clean_out = copy_artifacts(built[recipe], tmp_path / "clean", upstream)

    killed = run_cli(*args, "--output-dir", str(killed_out), env={"PROBE_KILL_DURING_SAVE": "4"})
    assert killed.returncode == 9, killed.stderr[-3000:]
    work = next((killed_out / ".work").glob(f"{kind}-*"))
    assert (work / "checkpoint-4").is_dir() and (work / "checkpoint-2" / ".complete.json").is_file()
    variant = killed_out / ".store" / work.name  # same <stage>-<fingerprint> name as its work folder
    assert not variant.exists() and (killed_out / kind).resolve() != variant.resolve(), "nothing committed"

    resumed = run_cli(*args, "--output-dir", str(killed_out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "checkpoint-4 is incomplete" in resumed.stderr and "resuming from" in resumed.stderr
    clean = run_cli(*args, "--output-dir", str(clean_out))
    assert clean.returncode == 0, clean.stderr[-3000:]

    a, b = weights(killed_out / kind), weights(clean_out / kind)
    assert a.keys() == b.keys() and a
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    resumed_metrics = comparable(json.loads((killed_out / kind / "metrics.json").read_text()))
    clean_metrics = comparable(json.loads((clean_out / kind / "metrics.json").read_text()))
    assert resumed_metrics.keys() == clean_metrics.keys()
    for key, value in clean_metrics.items():
        assert resumed_metrics[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key


def test_ppo_killed_while_writing_a_checkpoint(tiny_upstream, tmp_path, monkeypatch):
    from stages.ppo import checkpoint

    settings = ["stages.ppo.train.max_steps=6", "stages.ppo.train.save_steps=2", "stages.ppo.train.logging_steps=1",
                "evaluate=null"]

    def plan_for(out: Path):
        return make_plan(load_recipe(RECIPES / "tiny.yaml", [f"output_dir={out}", *settings]), only=["ppo"])

    clean_out = copy_artifacts(tiny_upstream, tmp_path / "clean", UPSTREAM)
    killed_out = copy_artifacts(tiny_upstream, tmp_path / "killed", UPSTREAM)
    run_plan(plan_for(clean_out))

    original = checkpoint.write_json

    def dies_writing_step_4(path, data):
        if data.get("step") == 4:
            raise KeyboardInterrupt("killed while writing checkpoint-4")
        return original(path, data)

    monkeypatch.setattr(checkpoint, "write_json", dies_writing_step_4)
    with pytest.raises(KeyboardInterrupt):
        run_plan(plan_for(killed_out))
    work = next((killed_out / ".work").glob("ppo-*"))
    # the live log of the steps run so far stays beside the checkpoints (pipeline/training/trainer.py)
    assert sorted(p.name for p in work.iterdir()) == [".tmp-checkpoint-4", "checkpoint-2", "log_history.jsonl"]
    assert not (killed_out / ".store" / work.name).exists()

    monkeypatch.setattr(checkpoint, "write_json", original)
    run_plan(plan_for(killed_out))
    a, b = weights(killed_out / "ppo"), weights(clean_out / "ppo")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    resumed = comparable(json.loads((killed_out / "ppo" / "metrics.json").read_text()))
    clean = comparable(json.loads((clean_out / "ppo" / "metrics.json").read_text()))
    assert resumed.keys() == clean.keys()
    for key, value in clean.items():
        if key != "ppo_steps_run":
            expected = pytest.approx(value, rel=1e-4, abs=1e-5) if isinstance(value, float) else value
            assert resumed[key] == expected, key
    assert resumed["ppo_steps_run"] == 4 and clean["ppo_steps_run"] == 6
    shutil.rmtree(killed_out / ".work", ignore_errors=True)

"""The same recipe under accelerate launch with 2 CPU processes is one gloo data-parallel training."""

from __future__ import annotations

import json
import shutil

import pytest

from support import CHAT_ROWS, copy_artifacts, launcher, run_cli, sft_stage, write_jsonl


@pytest.mark.slow
def test_two_cpu_processes_train_one_model(make_recipe, tmp_path, monkeypatch):
    assert shutil.which(launcher()[0]), "accelerate is installed with the project"
    data = write_jsonl(tmp_path / "chat8.jsonl", CHAT_ROWS * 2)  # 8 rows
    path = make_recipe({"sft": sft_stage(data, steps=4, train={"batch_size": 2, "save_steps": 100})})
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    result = run_cli("run", str(path), launcher=launcher())
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "out" / "sft" / "manifest.json").read_text())
    metrics = json.loads((tmp_path / "out" / "sft" / "metrics.json").read_text())
    assert manifest["world_size"] == 2
    # 4 steps x 2 rows x 2 processes = 16 rows = 2 epochs of 8 rows: only true if the ranks shared the data.
    assert metrics["epoch"] == pytest.approx(2.0)


CHAIN_CUTS = ["--set", "evaluate.n=8", "--set", "stages.sft.train.max_steps=6", "--set",
              "stages.reward.train.max_steps=6", "--set", "stages.dpo.train.max_steps=4", "--set",
              "stages.ppo.train.max_steps=2", "--set", "stages.ppo.rollout_batch_size=16"]


@pytest.mark.slow
@pytest.mark.parametrize("config, distributed", [("cpu_2proc.yaml", "MULTI_CPU"),
                                                 ("cpu_2proc_zero2.yaml", "DEEPSPEED"),
                                                 ("cpu_2proc_zero3.yaml", "DEEPSPEED")])
def test_every_stage_runs_unchanged_on_two_processes(tmp_path, monkeypatch, config, distributed):
    """sft, preferences, reward, dpo, ppo (tiny.yaml) and grpo, rloo (online.yaml), unchanged, with 2 CPU processes
    under DDP, DeepSpeed ZeRO-2 and ZeRO-3, each policy followed by the gold evaluation."""
    command = launcher(config)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "out"
    result = run_cli("run", "recipes/tiny.yaml", "--set", f"output_dir={out}", *CHAIN_CUTS, launcher=command,
                     timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    # online.yaml's sft, preferences and reward are tiny.yaml's: with the same cuts they are the artifacts just built
    online = run_cli("run", "recipes/online.yaml", "--only", "grpo", "--only", "rloo", "--set", f"output_dir={out}",
                     *CHAIN_CUTS[:6], "--set", "stages.grpo.train.max_steps=2", "--set",
                     "stages.rloo.train.max_steps=2", launcher=command, timeout=900)
    assert online.returncode == 0, online.stderr[-3000:]
    for stage in ("sft", "reward", "dpo", "ppo", "grpo", "rloo"):
        manifest = json.loads((out / stage / "manifest.json").read_text())
        assert (manifest["world_size"], manifest["distributed_type"]) == (2, distributed), stage
    assert (out / "preferences" / "pairs.jsonl").stat().st_size > 0
    for target in ("base", "sft", "dpo", "ppo", "grpo", "rloo"):
        evaluation = json.loads((out / f"eval-{target}" / "eval.json").read_text())
        assert evaluation["n"] == 8 and -1.0 <= evaluation["gold_mean"] <= 1.0, target


def test_sampling_shared_by_two_processes_gives_what_one_process_gives(tmp_path, monkeypatch):
    """The gold evaluation (eval-base, eval-sft) and the preferences stage deal their sampling batches to both
    processes and gather them: eval.json, every sample and every preference pair equal those of one process."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cuts = ["--set", "evaluate.n=24", "--set", "evaluate.sampling.batch_size=4", "--set",
            "stages.sft.train.max_steps=4", "--set", "stages.preferences.n_prompts=10", "--set",
            "stages.preferences.sampling.batch_size=4"]
    only = [a for s in ("eval-base", "eval-sft", "preferences")
            for option in ("--only", "--force") for a in (option, s)]
    one, two = tmp_path / "one", tmp_path / "two"
    sft = run_cli("run", "recipes/tiny.yaml", "--output-dir", str(one), "--only", "sft", *cuts, timeout=600)
    assert sft.returncode == 0, sft.stderr[-3000:]
    copy_artifacts(one, two, ("sft",))  # one SFT policy for both (its evaluations rerun: --force)
    single = run_cli("run", "recipes/tiny.yaml", "--output-dir", str(one), *only, *cuts, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    shared = run_cli("run", "recipes/tiny.yaml", "--output-dir", str(two), *only, *cuts,
                     launcher=launcher("cpu_2proc.yaml"), timeout=600)
    assert shared.returncode == 0, shared.stderr[-3000:]
    assert "sampling shared by 2 processes" in shared.stderr
    for node in ("eval-base", "eval-sft"):
        assert json.loads((one / node / "eval.json").read_text()) == json.loads((two / node / "eval.json").read_text())
        assert (one / node / "eval_samples.jsonl").read_text() == (two / node / "eval_samples.jsonl").read_text()
    assert (one / "preferences" / "pairs.jsonl").read_text() == (two / "preferences" / "pairs.jsonl").read_text()
    assert (one / "preferences" / "samples.jsonl").read_text() == (two / "preferences" / "samples.jsonl").read_text()

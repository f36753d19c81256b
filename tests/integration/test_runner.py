"""The runner: artifacts, caching, invalidation of downstream only, --only/--from/--force, resume, atomicity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipeline.artifacts.artifact import Artifact
from pipeline.errors import PipelineError, UsageError
from pipeline.graph.plan import make_plan
from pipeline.graph.runner import run_plan
from pipeline.recipe import load_recipe
from pipeline.store.hashing import sha256_file
from support import ROOT, run_cli, sft_stage


def run(path, overrides=(), **selection):
    plan = make_plan(load_recipe(path, list(overrides)), **selection)
    run_plan(plan)
    return plan


def finished_at(out, name):
    return Artifact.read(out / name).manifest["finished_at"]


def test_artifact_layout_and_manifest(make_recipe, chat_data, tmp_path):
    path = make_recipe({"sft": sft_stage(chat_data)})
    run(path)
    stage = tmp_path / "out" / "sft"
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "metrics.json",
                 "manifest.json", "log_history.json"):
        assert (stage / name).is_file(), name
    assert not list(stage.glob("*.bin")), "artifacts hold no pickles"
    manifest = json.loads((stage / "manifest.json").read_text())
    for key in ("kind", "config", "inputs", "fingerprint", "packages", "git_commit", "seed", "world_size",
                "wall_time_s", "host", "lineage"):
        assert key in manifest, key
    assert manifest["world_size"] == 1 and manifest["seed"] == 7
    assert manifest["inputs"]["data"][str(chat_data)] == sha256_file(chat_data)
    assert manifest["output"]["format"] == "adapter"
    assert not list((tmp_path / "out").glob(".tmp-*")), "no temporary folder is left behind"


def test_cache_and_downstream_only_invalidation(make_recipe, chat_data, tmp_path):
    out = tmp_path / "out"
    stages = {
        "sft": sft_stage(chat_data),
        "left": {**sft_stage(chat_data, steps=2), "from": "sft"},
        "right": {**sft_stage(chat_data, steps=2), "from": "sft"},
    }
    path = make_recipe(stages)
    plan = run(path)
    assert [s.action for s in plan.stages] == ["run", "run", "run"]
    first = {name: finished_at(out, name) for name in stages}
    assert Artifact.read(out / "left").manifest["lineage"][0]["stage"] == "sft"

    plan = run(path)
    assert [s.action for s in plan.stages] == ["cached", "cached", "cached"]
    assert {name: finished_at(out, name) for name in stages} == first

    plan = run(path, ["stages.left.lora.r=2"])  # only that stage changes
    assert {s.name: s.action for s in plan.stages} == {"sft": "cached", "left": "run", "right": "cached"}
    assert finished_at(out, "right") == first["right"] and finished_at(out, "left") != first["left"]

    plan = make_plan(load_recipe(path, ["stages.sft.train.learning_rate=0.02"]))
    assert [s.action for s in plan.stages] == ["run", "run", "run"], "an upstream edit reruns its downstream"

    data_edit = chat_data.read_text() + chat_data.read_text().splitlines()[0] + "\n"
    chat_data.write_text(data_edit)
    plan = make_plan(load_recipe(path))
    assert plan["sft"].action == "run" and plan["sft"].reason == "input data changed (stages.sft.data.path)"
    assert plan["right"].reason == "upstream sft changed; input data changed (stages.right.data.path)"


def test_only_from_force(make_recipe, chat_data, tmp_path):
    stages = {"sft": sft_stage(chat_data), "next": {**sft_stage(chat_data, steps=2), "from": "sft"}}
    path = make_recipe(stages)
    recipe = load_recipe(path)
    with pytest.raises(PipelineError, match="needs 'sft', which has not been built"):
        make_plan(recipe, only=["next"])
    run(path, only=["sft"])
    assert Artifact.read(tmp_path / "out" / "next") is None
    plan = run(path, only=["next"])
    assert {s.name: s.action for s in plan.stages} == {"sft": "skip", "next": "run"}
    assert {s.action for s in make_plan(recipe, force=["sft"]).stages} == {"run"}
    assert {s.name: s.action for s in make_plan(recipe, from_stage="next").stages} == {"sft": "skip", "next": "run"}
    with pytest.raises(PipelineError, match="no stage named 'nope'"):
        make_plan(recipe, only=["nope"])
    with pytest.raises(UsageError, match="no stage named 'nxet' in the recipe \\(did you mean 'next'\\?\\)") as info:
        make_plan(recipe, only=["nxet"])
    assert info.value.exit_code == 2  # a usage error, as every other one
    stale = load_recipe(path, ["stages.sft.lora.r=2"])
    with pytest.raises(PipelineError, match="out of date"):
        make_plan(stale, only=["next"])


def test_sft_loss_falls_on_a_memorisation_set(make_recipe, chat_data, tmp_path):
    stage = sft_stage(chat_data, steps=40, lora=None, train={"learning_rate": 1e-2, "logging_steps": 5,
                                                             "save_steps": 100})
    run(make_recipe({"sft": stage}))
    history = [h["loss"] for h in json.loads((tmp_path / "out" / "sft" / "log_history.json").read_text())
               if "loss" in h]
    assert history[-1] < 0.3 * history[0], history
    assert Artifact.read(tmp_path / "out" / "sft").manifest["output"]["format"] == "full"


def test_adapter_reloads_with_plain_peft_and_same_logits(make_recipe, chat_data, tmp_path):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run(make_recipe({"sft": sft_stage(chat_data, steps=6, merge=True)}))
    stage = tmp_path / "out" / "sft"
    tokenizer = AutoTokenizer.from_pretrained(stage)
    ids = tokenizer("What is 2 plus 2?", return_tensors="pt").input_ids
    with torch.no_grad():
        adapted = AutoPeftModelForCausalLM.from_pretrained(stage)(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(stage / "merged")(ids).logits
        base_path = json.loads((stage / "adapter_config.json").read_text())["base_model_name_or_path"]
        base = AutoModelForCausalLM.from_pretrained(base_path)(ids).logits
    assert torch.allclose(adapted, merged, atol=1e-5)
    assert not torch.allclose(adapted, base, atol=1e-3), "training changed the model"


def test_chained_adapters_load_through_the_pipeline(make_recipe, chat_data, tmp_path):
    from pipeline.artifacts.policy import load_policy

    stages = {"sft": sft_stage(chat_data), "next": {**sft_stage(chat_data, steps=2), "from": "sft"}}
    run(make_recipe(stages))
    out = tmp_path / "out"
    base = Artifact.read(out / "next").policy.base
    assert base.relative and Path(base.resolve(out / "next")).parent == out / ".bases", "the merged sft, written once"
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        first = load_policy(out / "sft")(ids).logits
        second = load_policy(out / "next")(ids).logits
    assert not torch.allclose(first, second, atol=1e-4)


@pytest.mark.slow  # runs in fresh processes
def test_resume_continues_from_the_checkpoint(make_recipe, chat_data, tmp_path, monkeypatch):
    """Kill after the first checkpoint; the next run resumes there and ends with the same weights as a clean run."""
    steps_file = tmp_path / "steps.txt"
    monkeypatch.setenv("PROBE_STEP_LOG", str(steps_file))
    monkeypatch.setenv("PROBE_DIE_AFTER_SAVE", "1")
    stage = sft_stage(chat_data, steps=6, train={"save_steps": 3, "callbacks": ["support.callbacks:Probe"]})
    path = make_recipe({"sft": stage})
    killed = run_cli("run", str(path), cwd=ROOT / "tests")
    assert killed.returncode == 17, killed.stderr[-2000:]
    assert not (tmp_path / "out" / "sft").exists()

    assert steps_file.read_text().split() == ["1", "2", "3"]
    monkeypatch.delenv("PROBE_DIE_AFTER_SAVE")
    resumed = run_cli("run", str(path), cwd=ROOT / "tests")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr and "checkpoint-3" in resumed.stderr
    assert steps_file.read_text().split() == ["1", "2", "3", "4", "5", "6"], "training went on from step 4"
    assert not (tmp_path / "out" / ".work").exists(), "checkpoints are removed once the stage is done"

    monkeypatch.delenv("PROBE_STEP_LOG")
    clean = run_cli("run", str(path), "--set", f"output_dir={tmp_path / 'clean'}", cwd=ROOT / "tests")
    assert clean.returncode == 0, clean.stderr[-3000:]
    a = load_file(tmp_path / "out" / "sft" / "adapter_model.safetensors")
    b = load_file(tmp_path / "clean" / "sft" / "adapter_model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # runs in fresh processes
def test_failed_stage_leaves_previous_artifact_intact(make_recipe, chat_data, tmp_path):
    path = make_recipe({"sft": sft_stage(chat_data)})
    run(path)
    before = finished_at(tmp_path / "out", "sft")
    result = run_cli("run", str(path), "--set", "stages.sft.train.callbacks=[support.callbacks:FailAtStep2]",
                     cwd=ROOT / "tests")
    assert result.returncode != 0 and "boom at step 2" in result.stderr
    assert finished_at(tmp_path / "out", "sft") == before


def test_plan_shows_cached_and_parameter_counts(make_recipe, chat_data):
    path = make_recipe({"sft": sft_stage(chat_data), "next": {**sft_stage(chat_data), "from": "sft"}})
    run(path, only=["sft"])
    result = run_cli("plan", str(path))
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith(("sft ", "next "))}
    assert "cached" in lines["sft"] and " run " in lines["next"]
    assert "~" in lines["next"] and "expected time of the 1 stage to run: about" in result.stdout, result.stdout
    assert "Setting accelerator" not in result.stdout + result.stderr, "DeepSpeed's notice is library chatter"
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from pipeline.builtin.tiny_model import tiny_llama_path

    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_path()),
                                LoraConfig(r=4, target_modules="all-linear"))
    trainable, total = peft_model.get_nb_trainable_parameters()
    assert f"{total:,}" in lines["next"] and f"{trainable:,}" in lines["next"]


def test_rows_cut_off_by_max_length_are_counted(make_recipe, tmp_path):
    from support import CHAT_ROWS, write_jsonl

    long_prompt = {"messages": [{"role": "user", "content": "Say the number " + "very " * 40 + "slowly."},
                                {"role": "assistant", "content": "three"}]}
    data = write_jsonl(tmp_path / "d.jsonl", CHAT_ROWS + [long_prompt])
    run(make_recipe({"sft": sft_stage(data, steps=2, max_length=24)}))
    metrics = json.loads((tmp_path / "out" / "sft" / "metrics.json").read_text())
    assert metrics["train_rows"] == 5 and metrics["train_rows_skipped"] == 1


def test_lora_layers_adapts_only_the_top_layers(make_recipe, chat_data, tmp_path):
    run(make_recipe({"sft": sft_stage(chat_data, steps=1, lora={"layers": [-1]})}))
    keys = load_file(tmp_path / "out" / "sft" / "adapter_model.safetensors").keys()
    assert keys and all(".layers.1." in key for key in keys), sorted(keys)[:4]
    assert any(key.endswith("q_proj.lora_A.weight") for key in keys) and any("mlp" in key for key in keys)


def test_a_first_run_announces_its_expected_time_and_counts_it_down(make_recipe, chat_data, caplog):
    path = make_recipe({"sft": sft_stage(chat_data), "next": {**sft_stage(chat_data), "from": "sft"}})
    with caplog.at_level("INFO", logger="pipeline"):
        run(path)
    text = caplog.text
    assert "2 stages to run, expected about" in text and "from the FLOP model" in text, text
    assert "[1/2] sft (sft): 0s elapsed, about" in text and "[2/2] next (sft):" in text and " left" in text


def test_a_stage_computes_the_same_whether_or_not_an_earlier_run_built_its_merged_base(tiny_upstream, tmp_path):
    """The reward model starts from the SFT policy's merged weights, built once into .bases/ by the first stage that
    needs them. Building them loads an adapter, which draws its initial weights before reading the stored ones: on
    the stage's random stream, the reward model's new score head then depended on whether the folder was already
    there (a chain from nothing and a rerun of the stage alone trained different reward models)."""
    import shutil

    from support import RECIPES, copy_artifacts, run_recipe

    out = copy_artifacts(tiny_upstream, tmp_path / "out", ("sft", "preferences"))
    shutil.rmtree(out / ".bases", ignore_errors=True)  # as in a chain from nothing: reward builds it
    short = [f"output_dir={out}", "stages.reward.train.max_steps=2", "evaluate=null"]
    run_recipe(RECIPES / "tiny.yaml", short, only=["reward"], force=["reward"])
    assert list((out / ".bases").glob("sft-*/model.safetensors")), "the reward stage built the merged base"
    first = load_file(out / "reward" / "model.safetensors")
    run_recipe(RECIPES / "tiny.yaml", short, only=["reward"], force=["reward"])  # the merged base is there now
    again = load_file(out / "reward" / "model.safetensors")
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)


def test_the_next_commands_point_chat_and_export_at_an_output_folder_set_by_override(tmp_path):
    from types import SimpleNamespace

    from pipeline.cli.run import next_commands

    args = SimpleNamespace(recipe="recipes/tiny.yaml", output_dir=None, overrides=[f"output_dir={tmp_path}"])
    lines = next_commands(args, tmp_path).splitlines()
    chat = next(line for line in lines if " chat " in line)
    assert f"--output-dir {tmp_path}" in chat, chat
    plain = SimpleNamespace(recipe="recipes/tiny.yaml", output_dir=None, overrides=[])
    assert "--output-dir" not in next_commands(plain, Path("runs/tiny"))


def test_the_next_commands_quote_what_a_shell_would_split(tmp_path):
    import shlex
    from types import SimpleNamespace

    from pipeline.cli.run import next_commands

    override = "stages.kto={kind: kto, from: [sft, preferences]}"
    args = SimpleNamespace(recipe="recipes/tiny.yaml", output_dir=str(tmp_path / "a b"), overrides=[override])
    report = next(line for line in next_commands(args, tmp_path).splitlines() if " report " in line)
    words = shlex.split(report.split("#")[0])
    assert words[words.index("--set") + 1] == override
    assert words[words.index("--output-dir") + 1] == str(tmp_path / "a b")

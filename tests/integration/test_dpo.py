"""DPO against a frozen reference: the reference never moves, the preference margin grows, the adapter reloads."""

from __future__ import annotations

import json

import torch

from pipeline.graph.plan import make_plan
from pipeline.graph.runner import run_plan
from pipeline.recipe import load_recipe
from support import sft_stage, synthetic_pairs, write_jsonl


def run(path):
    run_plan(make_plan(load_recipe(path)))


def dpo_stages(chat_data, pairs, **dpo) -> dict:
    stage = {"kind": "dpo", "from": "sft", "data": {"path": str(pairs), "eval_fraction": 0.2}, "max_length": 48,
             "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "beta": 0.1,
             "train": {"max_steps": 25, "batch_size": 8, "learning_rate": 5e-3, "logging_steps": 5, "save_steps": 100}}
    stage.update(dpo)
    return {"sft": sft_stage(chat_data, merge=True), "dpo": stage}


def margins(folder) -> list[float]:
    history = json.loads((folder / "log_history.json").read_text())
    return [h["rewards/margins"] for h in history if "rewards/margins" in h and "loss" in h]


def test_reference_stays_frozen_while_the_policy_moves(make_recipe, chat_data, tmp_path, monkeypatch):
    probe = tmp_path / "probe.json"
    monkeypatch.setenv("PROBE_REFERENCE_FILE", str(probe))
    pairs = write_jsonl(tmp_path / "pairs.jsonl", synthetic_pairs(80))
    stages = dpo_stages(chat_data, pairs)
    stages["dpo"]["train"]["callbacks"] = ["support.callbacks:ReferenceProbe"]
    run(make_recipe(stages))
    seen = json.loads(probe.read_text())
    assert torch.equal(torch.tensor(seen["reference_begin"]), torch.tensor(seen["reference_end"]))
    assert not torch.allclose(torch.tensor(seen["policy_begin"]), torch.tensor(seen["policy_end"]), atol=1e-4)
    # and the reference is the SFT policy the stage started from
    from peft import AutoPeftModelForCausalLM

    sft = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "out" / "sft")
    with torch.no_grad():
        sft_logits = sft(input_ids=torch.tensor([[5, 6, 7, 8, 9, 10]])).logits[0]
    torch.testing.assert_close(sft_logits, torch.tensor(seen["reference_end"]), rtol=1e-4, atol=1e-4)


def test_margin_grows_and_adapter_reloads_with_plain_peft(make_recipe, chat_data, tmp_path):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    pairs = write_jsonl(tmp_path / "pairs.jsonl", synthetic_pairs(80))
    run(make_recipe(dpo_stages(chat_data, pairs, merge=True)))
    folder = tmp_path / "out" / "dpo"
    curve = margins(folder)
    assert curve[-1] > curve[0] + 0.1, curve
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["eval_rewards/accuracies"] > 0.6
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        adapted = AutoPeftModelForCausalLM.from_pretrained(folder)(ids).logits  # base = sft/merged
        merged = AutoModelForCausalLM.from_pretrained(folder / "merged")(ids).logits
    torch.testing.assert_close(adapted, merged, rtol=1e-4, atol=1e-5)


def test_full_fine_tuning_dpo_with_an_explicit_frozen_reference(make_recipe, chat_data, tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", synthetic_pairs(80))
    run(make_recipe(dpo_stages(chat_data, pairs, lora=None, train={"max_steps": 15, "batch_size": 8,
                                                                   "learning_rate": 1e-3, "logging_steps": 5,
                                                                   "save_steps": 100})))
    folder = tmp_path / "out" / "dpo"
    assert json.loads((folder / "manifest.json").read_text())["output"]["format"] == "full"
    curve = margins(folder)
    assert curve[-1] > curve[0], curve


def test_reference_reusing_the_policy_pass_trains_exactly_as_a_separate_reference(make_recipe, chat_data, tmp_path):
    """With the adapter on the top layer only, the reference pass starts from the policy pass's lower layers
    (share_trunk): every logged loss, reward and log-prob, and the trained adapter, equal a run without it."""
    from safetensors.torch import load_file

    pairs = write_jsonl(tmp_path / "pairs.jsonl", synthetic_pairs(40))
    runs = {}
    for share in (True, False):
        stages = dpo_stages(chat_data, pairs, share_trunk=share,
                            lora={"r": 4, "alpha": 8, "dropout": 0.0, "layers": [-1]})
        stages["dpo"]["train"].update(max_steps=4, logging_steps=1)
        run(make_recipe(stages, name=f"share-{share}", output_dir=str(tmp_path / f"out-{share}")))
        runs[share] = tmp_path / f"out-{share}" / "dpo"
    metrics = json.loads((runs[True] / "metrics.json").read_text())
    assert metrics["reference_passes_reused"] >= 4  # one per training batch, and the evaluation's
    assert "reference_passes_reused" not in json.loads((runs[False] / "metrics.json").read_text())
    shared, separate = (json.loads((runs[s] / "log_history.json").read_text()) for s in (True, False))
    keys = [k for k in separate[0] if k.startswith(("loss", "rewards/", "logps/", "eval_"))]
    assert keys and len(shared) == len(separate)
    for a, b in zip(shared, separate):
        for key in keys:
            if key in b:
                assert abs(a[key] - b[key]) <= 1e-5 * max(1.0, abs(b[key])), (key, a[key], b[key])
    weights = [load_file(runs[s] / "adapter_model.safetensors") for s in (True, False)]
    for name, value in weights[1].items():
        torch.testing.assert_close(weights[0][name], value, rtol=1e-5, atol=1e-6)

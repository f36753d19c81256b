"""Preference pairs from a policy's own samples, and the pairwise reward model trained on them."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.data.cards import load_card, materialise
from pipeline.errors import RecipeError
from pipeline.evaluation.judges import make_judge
from pipeline.graph.plan import make_plan
from pipeline.graph.runner import run_plan
from pipeline.recipe import load_recipe
from support import sft_stage, synthetic_pairs, write_jsonl


def run(path, overrides=()):
    plan = make_plan(load_recipe(path, list(overrides)))
    run_plan(plan)
    return plan


# --- validation ---------------------------------------------------------------------------------------------------

def test_reward_needs_preference_data_and_judge_reward_needs_a_reward_stage(make_recipe, chat_data, tmp_path):
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text("name: p\ndescription: d\nlicense: MIT\nsource: {path: %s}\nformat: prompt\n"
                       "splits: {eval_fraction: 0.0, seed: 0}\n" % write_jsonl(tmp_path / "p.jsonl", [{"prompt": "x"}]))
    stages = {
        "sft": sft_stage(chat_data),
        "reward": {"kind": "reward", "from": "sft"},
        "prefs": {"kind": "preferences", "from": "sft", "prompts": str(prompts), "judge": "reward"},
    }
    with pytest.raises(RecipeError) as info:
        load_recipe(make_recipe(stages))
    problems = [str(p) for p in info.value.problems]
    assert ("stages.reward: needs preference data: name a preferences stage in `from`, or set `data:` to a card"
            in problems)
    assert "stages.prefs: judge: reward needs a reward stage in `from`" in problems


# --- the preferences stage ------------------------------------------------------------------------------------------

def test_preferences_stage_writes_pairs_with_a_valid_card(make_recipe, chat_data, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"What is {i} plus 1?"} for i in range(12)])
    card = tmp_path / "prompts.yaml"
    card.write_text(f"name: p\ndescription: d\nlicense: MIT\nsource: {{path: {prompts}}}\nformat: prompt\n"
                    "splits: {eval_fraction: 0.0, seed: 0}\n")
    stages = {
        "sft": sft_stage(chat_data),
        "prefs": {"kind": "preferences", "from": "sft", "prompts": str(card), "k": 3, "pairs": "all",
                  "min_margin": 0.01, "judge": "pipeline.builtin.toy_judges:digit_share",
                  "sampling": {"max_new_tokens": 8, "batch_size": 12}},
    }
    run(make_recipe(stages))
    folder = tmp_path / "out" / "prefs"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["samples"] == 36 and metrics["prompts"] == 12 and metrics["candidate_pairs"] == 36
    dropped = metrics["dropped_near_ties"] + metrics["dropped_identical"] + metrics["dropped_empty"]
    assert metrics["pairs"] + dropped == 36
    assert len((folder / "samples.jsonl").read_text().splitlines()) == 36
    rows = materialise(load_card(folder / "card.yaml"), str(folder / "card.yaml"))  # checksum and count verified
    assert len(rows) == metrics["pairs"] > 0
    assert all(r["margin"] >= 0.01 and r["chosen"] != r["rejected"] for r in rows)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["produces"] == "preferences" and manifest["lineage"][0]["stage"] == "sft"


# --- the reward stage ---------------------------------------------------------------------------------------------

@pytest.fixture
def reward_recipe(make_recipe, chat_data, tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", synthetic_pairs(160))
    stage = {"kind": "reward", "data": {"path": str(pairs), "eval_fraction": 0.2}, "lora": None, "max_length": 48,
             "train": {"max_steps": 40, "batch_size": 16, "learning_rate": 1e-3, "logging_steps": 10,
                       "save_steps": 100}}
    return make_recipe({"reward": stage})


def test_reward_model_learns_a_synthetic_preference(reward_recipe, tmp_path):
    run(reward_recipe)
    metrics = json.loads((tmp_path / "out" / "reward" / "metrics.json").read_text())
    assert metrics["eval_pairs"] == 32 and metrics["train_pairs"] == 128
    assert metrics["eval_accuracy"] >= 0.9, metrics
    assert metrics["eval_margin_mean"] > 0


def test_reward_artifact_reloads_with_plain_transformers_and_same_scores(reward_recipe, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run(reward_recipe)
    folder = tmp_path / "out" / "reward"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    recorded = [json.loads(line) for line in (folder / "eval_scores.jsonl").read_text().splitlines()]
    for row in recorded[:6]:
        for side in ("chosen", "rejected"):
            ids = tokenizer.apply_chat_template(row["prompt"] + row[side], return_tensors="pt", return_dict=True)
            with torch.no_grad():
                reward = model(**ids).logits[0, 0].item()
            assert reward == pytest.approx(row[f"{side}_reward"], abs=1e-4)
    judge = make_judge(f"reward:{folder}")  # the same artifact serves as a judge for eval and preferences
    row = recorded[0]
    got = judge.score([row["prompt"][0]["content"]], [row["chosen"][0]["content"]])
    assert got[0] == pytest.approx(row["chosen_reward"], abs=1e-4)


def test_lora_reward_model_saves_adapter_and_merged_weights(make_recipe, chat_data, tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", synthetic_pairs(40))
    stages = {"sft": sft_stage(chat_data),
              "reward": {"kind": "reward", "from": "sft", "data": {"path": str(pairs), "eval_fraction": 0.25},
                         "lora": {"r": 4, "alpha": 8}, "max_length": 48,
                         "train": {"max_steps": 4, "batch_size": 8, "save_steps": 100}}}
    run(make_recipe(stages))
    folder = tmp_path / "out" / "reward"
    assert (folder / "adapter" / "adapter_model.safetensors").is_file()
    adapter_config = json.loads((folder / "adapter" / "adapter_config.json").read_text())
    assert "score" in (adapter_config["modules_to_save"] or [])
    assert (folder / "model.safetensors").is_file() and not list(folder.rglob("*.bin"))

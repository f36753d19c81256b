"""The recipes for the setups users run on GPUs (Zephyr-style SFT -> DPO on UltraFeedback-binarized, SFT -> reward
-> PPO on HH-RLHF) validate and plan offline once their model and datasets are in the local hub cache, with the
parameter counts of the real model and a memory figure per GPU for each launch config they are meant for."""

from __future__ import annotations

import re

import pytest
import yaml

from support import CARDS, RECIPES, run_cli
from support.fake_hub import QWEN_PARAMETERS, QWEN_REVISION, gpu_recipes_hub

pytestmark = pytest.mark.slow  # builds a hub cache of 61,135 + 160,800 rows

PINNED = {"ultrafeedback_sft.yaml": "3949bf5f8c17c394422ccfab0c31ea9c20bdeb85",
          "ultrafeedback_prefs.yaml": "3949bf5f8c17c394422ccfab0c31ea9c20bdeb85",
          "hh_rlhf.yaml": "09be8c5bbc57cb3887f3a9732ad6aa7ec602a1fa",
          "hh_sft.yaml": "09be8c5bbc57cb3887f3a9732ad6aa7ec602a1fa",
          "hh_prompts.yaml": "09be8c5bbc57cb3887f3a9732ad6aa7ec602a1fa"}
STAGES = {"zephyr_dpo.yaml": ("sft", "dpo"), "hh_ppo.yaml": ("sft", "reward", "ppo")}
"""Every recipe that reads the hub (tests/unit/recipe/test_loader.py checks all the others)."""
LAUNCHES = ("gpu_1.yaml", "gpu_zero2.yaml", "gpu_zero3.yaml")


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    return {"HF_HOME": str(gpu_recipes_hub(tmp_path_factory.mktemp("hf_home"))), "HF_HUB_OFFLINE": "1"}


def test_every_hub_source_is_pinned():
    def model_source(path):
        model = yaml.safe_load(path.read_text())["model"]
        return model if isinstance(model, str) else model["source"]

    hub_recipes = {p.name for p in RECIPES.glob("*.yaml") if "/" in model_source(p)}
    assert hub_recipes == set(STAGES), "a recipe that reads the hub needs a case here"
    for card, revision in PINNED.items():
        source = yaml.safe_load((CARDS / card).read_text())["source"]["hub"]
        assert source["revision"] == revision, card
    for recipe in STAGES:
        assert yaml.safe_load((RECIPES / recipe).read_text())["model"]["revision"] == QWEN_REVISION


@pytest.mark.parametrize("recipe", list(STAGES))
def test_gpu_recipe_validates_and_plans_memory_per_gpu(recipe, hub):
    checked = run_cli("validate", str(RECIPES / recipe), env=hub)
    assert checked.returncode == 0, checked.stderr[-2000:]
    assert f"OK: {len(STAGES[recipe])} stage(s)" in checked.stdout
    memory = {}
    for launch in LAUNCHES:
        planned = run_cli("plan", str(RECIPES / recipe), "--launch", str(RECIPES.parent / "launch" / launch), env=hub)
        assert planned.returncode == 0, planned.stderr[-2000:]
        rows = {line.split()[0]: line.split() for line in planned.stdout.splitlines()
                if line.split() and line.split()[0] in STAGES[recipe]}
        assert set(rows) == set(STAGES[recipe]), planned.stdout
        for stage, row in rows.items():
            total, trainable, gib = (re.sub(",", "", cell) for cell in row[4:7])
            assert int(total) > QWEN_PARAMETERS and 0 < int(trainable) < 0.2 * QWEN_PARAMETERS, row  # base + LoRA
            memory[launch, stage] = float(gib)
    for stage in STAGES[recipe]:  # sharding more state across 8 GPUs never needs more memory per GPU
        assert memory["gpu_zero3.yaml", stage] <= memory["gpu_zero2.yaml", stage] <= memory["gpu_1.yaml", stage]
        assert memory["gpu_zero3.yaml", stage] < memory["gpu_1.yaml", stage]


def test_without_the_download_validate_says_what_to_fetch(tmp_path):
    checked = run_cli("validate", str(RECIPES / "zephyr_dpo.yaml"),
                      env={"HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"})
    assert checked.returncode == 2 and "Traceback" not in checked.stderr
    assert "Qwen/Qwen2.5-0.5B" in checked.stderr and "HF_HUB_OFFLINE=1" in checked.stderr

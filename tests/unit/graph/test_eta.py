"""Time up front: a stage's expected seconds from the FLOP model and a matmul rate, or from what the same stage took
here before with the same settings."""

from __future__ import annotations

import json

from transformers import AutoConfig

from pipeline.graph.eta import expected_seconds
from pipeline.graph.plan import make_plan
from pipeline.models import duration, flops
from pipeline.recipe import load_recipe
from support import ROOT, sft_stage

RATE = 100e9


def smollm_shape() -> flops.Shape:
    return flops.Shape(layers=30, hidden=576, intermediate=1536, heads=9, kv_heads=3, head_dim=64, vocab=49152)


def rlhf():
    return load_recipe(ROOT / "recipes" / "rlhf.yaml")


def test_the_estimate_follows_the_work_the_settings_ask_for():
    recipe, shape = rlhf(), smollm_shape()
    sft = recipe.stages["sft"]
    once = sft.work_flops(shape, recipe.stages)
    twice = sft.model_copy(update={"train": sft.train.model_copy(update={"max_steps": 80})}).work_flops(shape, {})
    assert twice == 2 * once
    ppo = recipe.stages["ppo"]
    shared = ppo.work_flops(shape, recipe.stages)
    unshared = ppo.model_copy(update={"share_trunk": False}).work_flops(shape, recipe.stages)
    assert shared < unshared
    base, after_sft = recipe.stages["eval-base"], recipe.stages["eval-sft"]
    assert base.work_flops(shape, {}) < after_sft.work_flops(shape, {}), "no KL pass for the base model"
    fast, slow = (duration.estimate(sft, shape, rate).seconds for rate in (2 * RATE, RATE))
    assert fast < slow


def test_epoch_based_training_is_not_estimated():
    sft = rlhf().stages["sft"]
    epochs = sft.model_copy(update={"train": sft.train.model_copy(update={"max_steps": -1})})
    assert duration.estimate(epochs, smollm_shape(), RATE).seconds is None


def test_the_rlhf_recipe_is_estimated_within_2x_of_its_measured_run():
    """The fit: rlhf.yaml's stages as measured on 2026-12-06 (b6f93db, AMD EPYC AVX512-BF16, bf16) at that
    machine's probe rate; a change to the FLOP model or the recipe that breaks the fit fails here."""
    measured = {"eval-base": 27, "sft": 138, "eval-sft": 58, "preferences": 136, "reward": 470, "dpo": 534,
                "eval-dpo": 65, "ppo": 714, "eval-ppo": 60}
    recipe, shape = rlhf(), smollm_shape()
    for name, seconds in measured.items():
        estimate = duration.estimate(recipe.stages[name], shape, duration.REFERENCE_RATE, recipe.stages).seconds
        assert seconds / 2 < estimate < seconds * 2, (name, estimate, seconds)


def test_a_stage_stored_with_the_same_settings_counts_as_measured(make_recipe, chat_data, tmp_path):
    path = make_recipe({"sft": sft_stage(chat_data)})
    plan = make_plan(load_recipe(path))
    assert not expected_seconds(plan, RATE)["sft"].measured
    config = plan["sft"].parts["config"]
    folder = tmp_path / "out" / ".store" / "sft-0"
    folder.mkdir(parents=True)
    manifest = {"stage": "sft", "fingerprint_parts": {"config": config}, "wall_time_s": 41.0, "import_time_s": 1.0}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    stored = expected_seconds(plan, RATE)["sft"]
    assert stored.measured and stored.seconds == 42.0
    manifest["fingerprint_parts"]["config"] = {**config, "max_length": 999}  # other settings: not this stage's time
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert not expected_seconds(plan, RATE)["sft"].measured


def test_the_shape_is_read_from_the_model_config():
    from pipeline.builtin.tiny_model import tiny_llama_path

    shape = flops.Shape.of(AutoConfig.from_pretrained(tiny_llama_path()))
    assert shape.layers >= 1 and rlhf().stages["sft"].work_flops(shape, {}) > 0

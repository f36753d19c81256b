"""The shared schema pieces: the names `train:` accepts (trackers, schedulers, optimizers) and their messages, and
the stage contract's defaults (a kind's data inputs are fingerprinted without it having to say so)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import pytest
from pydantic import ValidationError

from pipeline.config.schema import StageConfig, TrainSettings
from pipeline.data.settings import DataSettings
from pipeline.recipe import load_recipe
from support import ROOT


def refusal(**train) -> str:
    with pytest.raises(ValidationError) as info:
        TrainSettings(**train)
    return info.value.errors()[0]["msg"].removeprefix("Value error, ")


def test_an_unknown_tracker_is_refused_with_the_known_ones():
    assert refusal(report_to="tensorbord") == (
        "unknown tracker 'tensorbord' (did you mean 'tensorboard'?); one of: clearml, comet_ml, dvclive, mlflow, "
        "swanlab, tensorboard, trackio, wandb")


def test_a_tracker_needs_its_package(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name, *a))
    assert refusal(report_to=["wandb"]) == "report_to: wandb needs the wandb package (pip install wandb)"
    assert TrainSettings(report_to="tensorboard").report_to == ["tensorboard"]


def test_unknown_scheduler_and_optimizer_messages():
    scheduler = refusal(lr_scheduler="cosin")
    assert scheduler.startswith("unknown scheduler 'cosin' (did you mean 'cosine'?); transformers has: ")
    assert "constant_with_warmup, cosine," in scheduler
    assert refusal(optim="adam") == ("unknown optimizer 'adam' (did you mean 'adamw_torch'?) (transformers' names, "
                                     "e.g. adamw_torch, adamw_bnb_8bit, sgd, adafactor)")
    assert TrainSettings(lr_scheduler="cosine", optim="sgd").optim == "sgd"


class _Reads(StageConfig):
    kind: Literal["reads"] = "reads"
    data: DataSettings
    prompts: Path

    produces: ClassVar[str] = "policy"

    def data_inputs(self):
        return [("data", self.data, "chat"), ("prompts", self.prompts, "prompt")]


def test_input_files_are_the_files_of_the_data_inputs_by_default(tmp_path):
    """A kind names its data once, in data_inputs(); the fingerprint (input_files) follows without an override."""
    for name in ("train.jsonl", "eval.jsonl", "prompts.yaml"):
        (tmp_path / name).write_text("")
    config = _Reads(data={"path": tmp_path / "train.jsonl", "eval_path": tmp_path / "eval.jsonl"},
                    prompts=tmp_path / "prompts.yaml")
    assert config.input_files() == [tmp_path / "train.jsonl", tmp_path / "eval.jsonl", tmp_path / "prompts.yaml"]
    assert StageConfig.model_construct(kind="x").input_files() == []


@pytest.mark.parametrize("recipe", ["tiny.yaml", "online.yaml"])
def test_every_shipped_kind_fingerprints_all_its_data(recipe):
    stages = load_recipe(ROOT / "recipes" / recipe).stages
    for name, config in stages.items():
        for key, what, _ in config.data_inputs():
            files = what.files() if isinstance(what, DataSettings) else [what]
            assert set(files) <= set(config.input_files()), f"{name}.{key}"

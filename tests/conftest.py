"""Shared fixtures. Every test runs offline on the tiny locally built model; the cache lives in a temp folder."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent

# Set before anything imports transformers/huggingface_hub; inherited by the subprocesses tests start.
os.environ.setdefault("PIPELINE_CACHE", tempfile.mkdtemp(prefix="pipeline-test-cache-"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CHAT_ROWS = [
    {"messages": [{"role": "user", "content": "What is 2 plus 2?"}, {"role": "assistant", "content": "2 + 2 = 4."}]},
    {"messages": [{"role": "user", "content": "Say the number 3."}, {"role": "assistant", "content": "three"}]},
    {"messages": [{"role": "user", "content": "Is 5 more than 1?"}, {"role": "assistant", "content": "yes"}]},
    {"messages": [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "hello"}]},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sft_stage(data: Path, steps: int = 4, **extra) -> dict:
    stage = {
        "kind": "sft",
        "data": {"path": str(data)},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "max_length": 48,
        "train": {"max_steps": steps, "batch_size": 2, "learning_rate": 1e-2, "logging_steps": 1, "save_steps": 2},
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(stage.get(key), dict):
            stage[key] = {**stage[key], **value}
        else:
            stage[key] = value
    return stage


@pytest.fixture
def chat_data(tmp_path) -> Path:
    return write_jsonl(tmp_path / "chat.jsonl", CHAT_ROWS)


@pytest.fixture
def make_recipe(tmp_path):
    """Write a recipe YAML into tmp_path and return its path; output goes to tmp_path/out."""

    def make(stages: dict, name: str = "t", **top) -> Path:
        recipe = {"name": name, "seed": 7, "model": "builtin:tiny-llama", "output_dir": str(tmp_path / "out"), **top,
                  "stages": stages}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        return path

    return make


def run_cli(*args: str, cwd: Path = ROOT, launcher: list[str] | None = None, timeout: int = 300):
    """Run the CLI in a fresh process (as a user would) and return the CompletedProcess."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = (launcher or [sys.executable, "-m"]) + ["pipeline", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def build_upstream(recipe: Path, out: Path, stages: tuple[str, ...]) -> Path:
    """Run ``stages`` of a recipe into ``out`` (no gold evaluation); for module-scoped fixtures."""
    from pipeline.recipe import load_recipe
    from pipeline.runner import make_plan, run_plan

    run_plan(make_plan(load_recipe(recipe, [f"output_dir={out}", "evaluate=null"]), only=list(stages)))
    return out


def copy_artifacts(source: Path, target: Path, stages: tuple[str, ...]) -> Path:
    """Copies of finished stage folders in a fresh output folder, so a test can run downstream stages there."""
    import shutil

    for name in stages:
        shutil.copytree(source / name, target / name)
    return target

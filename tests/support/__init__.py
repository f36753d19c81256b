"""Helpers the tests share (fixtures live in conftest.py): data rows, recipe snippets, running the CLI as a user
would, building upstream artifacts once, and the accelerate launcher of the multi-process tests."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
RECIPES = ROOT / "recipes"
CARDS = ROOT / "data_cards"

CHAT_ROWS = [
    {"messages": [{"role": "user", "content": "What is 2 plus 2?"}, {"role": "assistant", "content": "2 + 2 = 4."}]},
    {"messages": [{"role": "user", "content": "Say the number 3."}, {"role": "assistant", "content": "three"}]},
    {"messages": [{"role": "user", "content": "Is 5 more than 1?"}, {"role": "assistant", "content": "yes"}]},
    {"messages": [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "hello"}]},
]

def free_port() -> int:
    """A TCP port nothing listens on now: two suites at once (or a run left behind) on fixed ports joined each
    other's process group and waited for ranks that never came, until the test's timeout."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launcher(config: str = "cpu_2proc.yaml") -> list[str]:
    """``accelerate launch`` with 2 CPU processes (gloo DDP; another launch config for ZeRO-2/3) on a free port."""
    return [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file", str(ROOT / "launch" / config),
            "--main_process_port", str(free_port()), "-m"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sft_stage(data: Path, steps: int = 4, **extra) -> dict:
    """A small LoRA sft stage body on ``data``; ``extra`` entries replace (dicts: update) its keys."""
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


def synthetic_pairs(n: int, seed: int = 0) -> list[dict]:
    """Learnable preference: the digit-heavy answer beats the word-heavy one."""
    rng = random.Random(seed)
    words = ["good", "film", "the", "plot", "was", "fine", "story", "yes"]
    rows = []
    for i in range(n):
        digits = " ".join(str(rng.randint(0, 99)) for _ in range(rng.randint(2, 5)))
        text = " ".join(rng.choice(words) for _ in range(rng.randint(2, 5)))
        rows.append({"prompt": [{"role": "user", "content": f"Question {i}?"}],
                     "chosen": [{"role": "assistant", "content": digits}],
                     "rejected": [{"role": "assistant", "content": text}]})
    return rows


def run_cli(*args: str, cwd: Path = ROOT, launcher: list[str] | None = None, timeout: int = 300, env=None):
    """Run the CLI in a fresh process (as a user would) and return the CompletedProcess. tests/ is on the Python
    path, so recipes can name ``support.callbacks:...`` and ``support.judges:...``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)]), **(env or {})}
    command = (launcher or [sys.executable, "-m"]) + ["pipeline", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def build_upstream(recipe: Path, out: Path, stages: tuple[str, ...]) -> Path:
    """Run ``stages`` of a recipe into ``out`` (no gold evaluation); the session's shared upstreams are built with it
    (support/upstream.py, the ``upstreams`` fixture)."""
    from pipeline.graph.plan import make_plan
    from pipeline.graph.runner import run_plan
    from pipeline.recipe import load_recipe

    run_plan(make_plan(load_recipe(recipe, [f"output_dir={out}", "evaluate=null"]), only=list(stages)))
    return out


def copy_artifacts(source: Path, target: Path, stages: tuple[str, ...] = ()) -> Path:
    """A copy of a finished run's output folder (its store of variants, the stage links, merged bases), so a test
    can run downstream stages there; ``stages`` says which are expected in it."""
    shutil.copytree(source, target, symlinks=True, ignore=shutil.ignore_patterns(".lock"))
    missing = [name for name in stages if not (target / name / "manifest.json").exists()]
    assert not missing, f"{source} has no {missing}"
    return target


def run_recipe(path, overrides=(), **selection):
    """Plan and run a recipe in this process; returns the plan."""
    from pipeline.graph.plan import make_plan
    from pipeline.graph.runner import run_plan
    from pipeline.recipe import load_recipe

    plan = make_plan(load_recipe(path, list(overrides)), **selection)
    run_plan(plan)
    return plan


def make_card(tmp_path: Path, name: str = "card", **fields) -> Path:
    """A data card YAML in tmp_path (messages format unless ``format`` says otherwise)."""
    import yaml

    body = {"name": "test", "description": "test rows", "license": "MIT", "format": "messages", **fields}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def numbered_rows(n: int) -> list[dict]:
    """n prompt/completion rows, each with its own prompt."""
    return [{"prompt": f"question {i}", "completion": f"answer {i}"} for i in range(n)]

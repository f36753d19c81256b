"""Shared fixtures. Every test runs offline on the tiny locally built model; the cache lives in a temp folder.
Plain helpers are in tests/support/ (importable as ``support``)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import yaml

# Set before anything imports transformers/huggingface_hub; inherited by the subprocesses tests start.
os.environ.setdefault("PIPELINE_CACHE", tempfile.mkdtemp(prefix="pipeline-test-cache-"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from support import CHAT_ROWS, write_jsonl  # noqa: E402
from support.upstream import SharedUpstreams  # noqa: E402


@pytest.fixture
def chat_data(tmp_path) -> Path:
    return write_jsonl(tmp_path / "chat.jsonl", CHAT_ROWS)


@pytest.fixture
def make_recipe(tmp_path):
    """Write a recipe YAML into tmp_path and return its path; output goes to tmp_path/out."""

    def make(stages: dict, name: str = "t", **top) -> Path:
        # float32: the same numbers on every CPU (dtype auto would pick bf16 where it is native)
        recipe = {"name": name, "seed": 7, "model": {"source": "builtin:tiny-llama", "dtype": "float32"},
                  "output_dir": str(tmp_path / "out"), **top, "stages": stages}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        return path

    return make


@pytest.fixture(scope="session")
def tiny_path() -> str:
    """The tiny model's folder (built once per test session)."""
    from pipeline.builtin.tiny_model import tiny_llama_path

    return str(tiny_llama_path())


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_path):
    from pipeline.models.loading import load_tokenizer

    return load_tokenizer(tiny_path)


@pytest.fixture(scope="session")
def tiny_model(tiny_path):
    from pipeline.models.loading import load_causal_lm

    return load_causal_lm(tiny_path, "float32")


@pytest.fixture(scope="session")
def upstreams(tmp_path_factory):
    """Upstream runs built once per session and shared by every module (support/upstream.py): ``get(recipe,
    stages)``. Never write into one: copy it (support.copy_artifacts). At the end of the session, any file changed in
    them is an error."""
    shared = SharedUpstreams(tmp_path_factory.mktemp("upstreams"))
    yield shared
    shared.check_untouched()


@pytest.fixture(scope="session")
def tiny_upstream(upstreams) -> Path:
    """recipes/tiny.yaml's SFT policy (an unmerged LoRA adapter), preference pairs and reward model, built once per
    session (recipes/online.yaml's are the same stages: the same folder)."""
    return upstreams.get()

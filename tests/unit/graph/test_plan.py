"""Why a stage runs: the plan compares the stored fingerprint parts with today's and names what changed."""

from __future__ import annotations

import copy

from pipeline.graph.plan import DamagedArtifact, _content_keyed, why_changed

PARTS = {
    "version": 2, "kind": "dpo", "seed": 42, "upstream": {"sft": "a" * 64}, "data": ["d1"],
    "config": {"kind": "dpo", "beta": 0.1, "train": {"max_steps": 30}, "data": {"path": "sha256:one"}},
    "model": {"source": "builtin:tiny-llama", "revision": None, "dtype": "auto", "quantization": None,
              "fingerprint": "m1"},
    "code": {"stages/dpo": "c1", "pipeline/training/trainer": "c2"},
    "libraries": {"torch": "2.13.0", "trl": "1.16.0"},
}


def changed(**edits) -> dict:
    new = copy.deepcopy(PARTS)
    for path, value in edits.items():
        node = new
        keys = path.split("__")
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    return new


def test_each_kind_of_change_is_named():
    assert why_changed("dpo", PARTS, changed(config__beta=0.2)) == "config: stages.dpo.beta 0.1 -> 0.2"
    assert why_changed("dpo", PARTS, changed(config__train__max_steps=60)) == \
        "config: stages.dpo.train.max_steps 30 -> 60"
    assert why_changed("dpo", PARTS, changed(code={"stages/dpo": "c9", "pipeline/training/trainer": "c2"})) == \
        "code changed (stages/dpo)"
    assert why_changed("dpo", PARTS, changed(libraries__trl="1.17.0")) == "trl 1.16.0 -> 1.17.0"
    assert why_changed("dpo", PARTS, changed(upstream__sft="b" * 64)) == "upstream sft changed"
    assert why_changed("dpo", PARTS, changed(config__data__path="sha256:two", data=["d2"])) == \
        "input data changed (stages.dpo.data.path)"
    assert why_changed("dpo", PARTS, changed(model__dtype="bfloat16")) == "model.dtype auto -> bfloat16"
    assert why_changed("dpo", PARTS, changed(model__fingerprint="m2")) == "base model files changed"
    assert why_changed("dpo", PARTS, changed(seed=1)) == "seed 42 -> 1"
    assert why_changed("dpo", {}, PARTS) == "stored by an older version of the pipeline"


def test_several_changes_are_listed_together():
    reason = why_changed("dpo", PARTS, changed(config__beta=0.2, libraries__trl="1.17.0", upstream__sft="b" * 64))
    assert reason == "upstream sft changed; config: stages.dpo.beta 0.1 -> 0.2; trl 1.16.0 -> 1.17.0"


def test_input_files_are_keyed_by_content_not_path(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "elsewhere" / "a.jsonl"
    config = {"data": {"path": str(a)}, "prompts": str(b), "name": "x"}
    keyed = _content_keyed(config, {a: "1" * 64, b: "1" * 64})
    assert keyed == {"data": {"path": "sha256:" + "1" * 64}, "prompts": "sha256:" + "1" * 64, "name": "x"}


def test_a_damaged_artifact_error_carries_the_stage_names():
    error = DamagedArtifact({"sft": "out/sft (variant abc): weights missing", "eval-sft": "out/eval-sft: changed"})
    assert error.stages == ["sft", "eval-sft"]
    assert str(error).endswith("rebuild with: --force sft --force eval-sft")
    assert "  - out/sft (variant abc): weights missing\n  - out/eval-sft: changed" in str(error)

"""`runs`: the columns that tell a stage's variants apart and show what each achieved, never cut mid-word."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from pipeline.graph.variants import Variant, distinguishing_settings, metrics_text


def variant(stage: str, name: str, config: dict, upstream: dict | None = None) -> Variant:
    artifact = SimpleNamespace(manifest={"config": config, "inputs": {"upstream": upstream or {}}}, metrics={},
                               fingerprint=name * 12)
    return Variant(stage, Path(name), artifact, 0, False)


def test_the_settings_that_tell_variants_apart_are_named():
    rows = [variant("dpo", "a", {"beta": 0.1, "train": {"max_steps": 80}}),
            variant("dpo", "b", {"beta": 0.3, "train": {"max_steps": 80}}),
            variant("sft", "c", {"lora": {"r": 16}}),
            variant("eval-dpo", "d", {"n": 256}, {"dpo": "a" * 64}),
            variant("eval-dpo", "e", {"n": 256}, {"dpo": "b" * 64})]
    shown = distinguishing_settings(rows)
    assert shown[Path("a")] == "beta 0.1" and shown[Path("b")] == "beta 0.3"
    assert Path("c") not in shown, "a stage with one variant needs nothing to tell it apart"
    assert shown[Path("d")] == f"of dpo {'a' * 12}" and shown[Path("e")] == f"of dpo {'b' * 12}"


def test_metrics_are_shown_whole_with_short_names():
    text = metrics_text({"gold_mean": 0.8371, "kl_mean": 11.265, "repetition_share": 0.1, "eval_accuracy": 0.7848,
                         "eval_loss": 0.4697, "train_loss": 0.5, "global_step": 220})
    assert text == "gold 0.837, KL 11.3, repeat 10%, held-out acc 0.785, held-out loss 0.47"
    assert metrics_text({"eval_rewards/accuracies": 0.574}) == "held-out acc 0.574"
    assert metrics_text({}) == "-"

"""`runs`: the columns that tell a stage's variants apart and show what each achieved, never cut mid-word."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from pipeline.graph.variants import Variant, distinguishing_settings, metrics_text, seed_groups, seed_lines


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


def seeded_run(name: str, seed: int, target: float, code: str, commit: str, gold: float) -> list[Variant]:
    """A PPO variant at ``seed`` and its evaluation."""
    from pipeline.artifacts.outputs import EvaluationOutput

    parts = {"config": {"kind": "ppo", "seed": seed, "kl": {"target": target}}, "seed": "42",
             "upstream": {"reward": "r" * 64}, "code": {"stages/ppo/kl_guard": code}}
    ppo = SimpleNamespace(manifest={"config": parts["config"], "fingerprint_parts": parts, "seed": seed,
                                    "git_commit": commit}, metrics={}, fingerprint=name * 64, output=None)
    evaluation = SimpleNamespace(
        manifest={"config": {"n": 256}, "inputs": {"upstream": {"ppo": name * 64}}}, output=EvaluationOutput("ppo"),
        metrics={"gold_mean": gold, "kl_mean": target, "repetition_share": 0.0}, fingerprint=f"x{name}" * 32)
    return [Variant("ppo", Path(name), ppo, 0, False), Variant("eval-ppo", Path(f"e{name}"), evaluation, 0, False)]


def test_seeds_group_only_runs_of_the_same_settings_and_code_and_say_which():
    rows = [*seeded_run("a", 42, 10.0, "old", "080317a46", 0.76), *seeded_run("b", 43, 10.0, "old", "080317a46", 0.82),
            *seeded_run("c", 42, 10.0, "new", "64532ade4", 0.80), *seeded_run("d", 43, 10.0, "new", "64532ade4", 0.80),
            *seeded_run("e", 42, 6.0, "new", "64532ade4", 0.62), *seeded_run("f", 43, 6.0, "new", "64532ade4", 0.70)]
    groups = seed_groups(rows)
    assert sorted(g["metrics"]["gold_mean"] for g in groups) == [[0.62, 0.70], [0.76, 0.82], [0.80, 0.80]]
    lines = seed_lines(rows)
    assert lines[0].startswith("eval-ppo of ppo (kl.target 10.0, code at 080317a) at 2 seeds (42, 43): gold 0.790")
    assert lines[1].startswith("eval-ppo of ppo (kl.target 10.0, code at 64532ad) at 2 seeds (42, 43): gold 0.800")
    assert lines[2].startswith("eval-ppo of ppo (kl.target 6.0, code at 64532ad) at 2 seeds (42, 43): gold 0.660")
    assert seed_lines(rows[:4])[0].startswith("eval-ppo of ppo at 2 seeds (42, 43)"), "alone: nothing to tell apart"

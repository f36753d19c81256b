"""A variant's label in the report's charts names what tells it apart: its first two swept settings, and its seed
(the seeds of one variant would otherwise share a label in the over-optimisation chart's legend)."""

from __future__ import annotations

from pipeline.graph.html_report import variant_label


def test_a_label_names_two_settings_and_the_seed():
    config = {"kl": {"target": 10.0, "coef": 0.2}, "repetition_penalty": 2.0, "seed": 43}
    assert variant_label("ppo", config) == "ppo (KL target 10.0, KL coef 0.2, seed 43)"
    assert variant_label("ppo", {**config, "seed": None}) == "ppo (KL target 10.0, KL coef 0.2)"
    assert variant_label("dpo", {"seed": 44}) == "dpo (seed 44)"
    assert variant_label("sft", {}) == "sft"


def test_colliding_labels_are_told_apart_by_code_then_by_variant():
    from pipeline.graph.html_report import tell_apart

    items = tell_apart([
        {"label": "ppo (KL target 10.0)", "commit": "080317a46", "variant": "f6dbe3b6"},
        {"label": "ppo (KL target 10.0)", "commit": "64532ade4", "variant": "2ed917ee"},
        {"label": "ppo (KL target 10.0, seed 43)", "commit": "64532ade4", "variant": "e1dafe78"},
        {"label": "dpo", "commit": "64532ade4", "variant": "0f1ed359"},
        {"label": "dpo", "commit": "64532ade4", "variant": "7f09f2bc"},
        {"label": "sft", "commit": None, "variant": "e132b6de"}])
    assert [item["label"] for item in items] == [
        "ppo (KL target 10.0, code at 080317a)", "ppo (KL target 10.0, code at 64532ad)",
        "ppo (KL target 10.0, seed 43)", "dpo (variant 0f1ed359)", "dpo (variant 7f09f2bc)", "sft"]

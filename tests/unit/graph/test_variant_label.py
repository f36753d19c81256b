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

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


def test_colliding_labels_are_told_apart_by_settings_then_code_then_variant():
    from pipeline.graph.html_report import tell_apart

    def item(label, settings, commit, variant):
        return {"label": label, "settings": settings, "commit": commit, "variant": variant}

    ppo = {"kl.target": 10.0, "ensemble_penalty": 0.0}
    items = tell_apart([
        item("ppo (KL target 10.0)", ppo, "080317a46", "f6dbe3b6"),
        item("ppo (KL target 10.0)", ppo, "64532ade4", "2ed917ee"),
        item("ppo (KL target 10.0)", {**ppo, "ensemble_penalty": 1.0}, "64532ade4", "20d0d4ee"),
        item("ppo (KL target 10.0, seed 43)", ppo, "64532ade4", "e1dafe78"),
        item("dpo", {}, "64532ade4", "0f1ed359"), item("dpo", {}, "64532ade4", "7f09f2bc"),
        item("sft", {}, None, "e132b6de")])
    assert [i["label"] for i in items] == [
        "ppo (KL target 10.0, ensemble_penalty 0.0, code at 080317a)",
        "ppo (KL target 10.0, ensemble_penalty 0.0, code at 64532ad)",
        "ppo (KL target 10.0, ensemble_penalty 1.0)",
        "ppo (KL target 10.0, seed 43)", "dpo (variant 0f1ed359)", "dpo (variant 7f09f2bc)", "sft"]

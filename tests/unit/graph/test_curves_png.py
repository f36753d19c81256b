"""The report's training curves: a controlled stage's KL drawn against its target and the 20% band either side."""

from __future__ import annotations

import pytest

from pipeline.graph.html_report import curves_figure, curves_png, kl_target

HISTORY = [{"step": s, "kl": 8.0 + s % 3, "kl_predicted": 9.0, "kl_coef": 0.2, "score": 0.1 * s} for s in range(1, 9)]


def panels(fig) -> dict:
    return {ax.get_title(): ax for ax in fig.axes if ax.get_title()}


@pytest.mark.parametrize("config, expected", [
    ({"kl": {"coef": 0.2, "target": 10.0, "controller": "pi"}}, 10.0),   # PPO
    ({"beta": 0.04, "beta_control": {"target": 3, "kp": 0.5}}, 3.0),     # GRPO / RLOO
    ({"kl": {"coef": 0.2, "target": None}}, None),                        # a fixed coefficient
    ({"beta": 0.1}, None),                                                # DPO
])
def test_the_kl_target_is_read_from_the_stage_config(config, expected):
    assert kl_target(config) == expected


def test_kl_curves_show_the_target_and_its_band():
    fig = curves_figure("ppo", HISTORY, target=10.0)
    axes = panels(fig)
    for key in ("kl", "kl_predicted"):
        levels = [line.get_ydata()[0] for line in axes[key].get_lines() if len(set(line.get_ydata())) == 1]
        assert 10.0 in levels, f"{key}: no line at the target"
        (band,) = axes[key].patches
        extent = band.get_extents().transformed(axes[key].transData.inverted())
        assert extent.y0 == pytest.approx(8.0) and extent.y1 == pytest.approx(12.0)
    for key in ("kl_coef", "score"):
        assert not axes[key].patches, f"{key} is not a KL: no band"


def test_without_a_target_no_band_is_drawn():
    fig = curves_figure("ppo", HISTORY)
    assert not any(ax.patches for ax in fig.axes)
    assert curves_png("ppo", HISTORY)[:8] == b"\x89PNG\r\n\x1a\n"

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


REWARD = [{"step": s, "loss": 0.7 - 0.02 * s, "accuracy": min(1.0, 0.5 + 0.1 * s)} for s in range(1, 8)] + \
    [{"step": 7, "eval_loss": 0.47, "eval_accuracy": 0.786}]


def test_the_held_out_value_sits_on_its_quantitys_panel_not_on_one_of_its_own():
    axes = panels(curves_figure("reward", REWARD))
    assert set(axes) == {"loss", "accuracy"}, "eval_* values logged once get no panel of their own"
    labels = [line.get_label() for line in axes["accuracy"].get_lines()]
    assert labels == ["training", "held-out 0.786"]
    (held_out,) = [line for line in axes["accuracy"].get_lines() if line.get_label().startswith("held-out")]
    assert list(held_out.get_ydata()) == [0.786]


def test_a_quantity_logged_once_gets_no_panel():
    history = [{"step": s, "loss": 3.0 / s} for s in range(1, 5)] + [{"step": 4, "entropy": 3.6}]
    axes = panels(curves_figure("sft", history))
    assert set(axes) == {"loss"}


def test_a_flat_line_is_drawn_flat():
    history = [{"step": s, "entropy": 6.2237 + 0.0001 * (s % 11)} for s in range(1, 12)]
    low, high = panels(curves_figure("ppo", history))["entropy"].get_ylim()
    assert high - low >= 0.05 * 6.2, (low, high)


def test_the_frontier_legend_sits_below_the_axes():
    from pipeline.graph import html_report

    captured = {}
    original = html_report._png

    def keep(fig):
        captured["fig"] = fig
        fig.canvas.draw()
        captured["legend"] = fig.axes[0].get_legend().get_window_extent()
        captured["axes"] = fig.axes[0].get_window_extent()
        return original(fig)

    points = [{"kind": kind, "label": label, "kl": kl, "gold": gold, "ci": [gold - 0.05, gold + 0.05],
               "repetition": 0.02, "judge": "vader"}
              for kind, label, kl, gold in (("dpo", "dpo (beta 0.1)", 4.0, 0.6), ("ppo", "ppo", 9.0, 0.83),
                                            ("base model", "base", 0.0, 0.14), ("sft", "sft", 17.0, 0.12))]
    html_report._png = keep
    try:
        html_report.frontier_png(points)
    finally:
        html_report._png = original
    assert captured["legend"].y1 <= captured["axes"].y0, "the legend overlaps the plot (and its points' labels)"


def test_the_report_reads_the_live_log_which_holds_the_evaluation_after_training(tmp_path):
    import json

    from pipeline.graph.html_report import logged_steps

    trained = [{"step": s, "loss": 1.0 / s, "accuracy": 0.5 + 0.05 * s} for s in (1, 2, 3)]
    (tmp_path / "log_history.json").write_text(json.dumps(trained))
    resumed = [*trained[:2], {"step": 2, "loss": 0.45, "accuracy": 0.61}, trained[2],
               {"step": 3, "eval_loss": 0.9, "eval_accuracy": 0.64}]
    (tmp_path / "log_history.jsonl").write_text("\n".join(map(json.dumps, resumed)) + '\n{"step": 4, "lo')
    axes = panels(curves_figure("reward", logged_steps(tmp_path)))
    (training, held_out) = axes["accuracy"].get_lines()
    assert list(training.get_xdata()) == [1, 2, 3] and training.get_ydata()[1] == 0.61, "one point per step"
    assert list(held_out.get_ydata()) == [0.64]

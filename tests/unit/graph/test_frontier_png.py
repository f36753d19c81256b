"""The report's reward-KL frontier: points filled by their repetition share, with a colour bar naming it."""

from __future__ import annotations

import io

from PIL import Image

from pipeline.graph.html_report import frontier_png


def point(kind: str, kl: float, gold: float, repetition):
    return {"kind": kind, "label": kind, "kl": kl, "gold": gold, "ci": [gold - 0.05, gold + 0.05], "judge": "vader",
            "repetition": repetition}


def pixels(png: bytes) -> Image.Image:
    return Image.open(io.BytesIO(png)).convert("RGB")


def test_points_are_filled_by_repetition_share_and_a_colour_bar_is_drawn():
    plain = pixels(frontier_png([point("sft", 1.0, 0.2, None), point("ppo", 5.0, 0.8, None)]))
    coloured = pixels(frontier_png([point("sft", 1.0, 0.2, 0.0), point("ppo", 5.0, 0.8, 0.4)]))
    swapped = pixels(frontier_png([point("sft", 1.0, 0.2, 0.4), point("ppo", 5.0, 0.8, 0.0)]))
    assert list(swapped.getdata()) != list(coloured.getdata()), "same colour bar: only the points' fill differs"
    # plasma runs from dark blue (0) to yellow (high): the high-repetition point brings yellow, the other dark blue
    colours = set(coloured.getdata())
    assert any(r > 200 and g > 180 and b < 90 for r, g, b in colours), "yellow: the colour bar's top (0.4)"
    assert not any(r > 200 and g > 180 and b < 90 for r, g, b in set(plain.getdata()))


def test_points_of_older_evaluations_without_the_share_still_draw():
    png = frontier_png([point("base model", 0.0, 0.1, None), point("dpo", 4.0, 0.6, 0.02)])
    assert pixels(png).width > 100


def test_labels_of_close_variants_are_stacked_not_overprinted():
    from pipeline.graph.html_report import _label_offsets

    close = [point("dpo (beta 0.05)", 0.366, 0.225, 0.0), point("dpo (beta 0.1)", 0.354, 0.225, 0.0),
             point("ppo", 9.6, 0.83, 0.08), point("base", 0.0, 0.14, 0.02)]
    offsets = _label_offsets(close)
    assert offsets[0] != offsets[1], "the two DPO labels would print over each other"
    assert offsets[2] == offsets[3] == 4, "labels with room keep the usual place"

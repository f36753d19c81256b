"""Toy judges for the tiny recipe and tests: rules a tiny model can learn, standing in for a real gold judge."""

from __future__ import annotations


def digit_share(prompts: list[str], completions: list[str]) -> list[float]:
    """The share of a completion's non-space characters that are digits (0..1): "12 + 13 = 25." scores high."""
    scores = []
    for text in completions:
        chars = [c for c in text if not c.isspace()]
        scores.append(sum(c.isdigit() for c in chars) / len(chars) if chars else 0.0)
    return scores

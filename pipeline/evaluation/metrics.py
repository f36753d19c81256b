"""Evaluation statistics on plain lists: bootstrap confidence intervals, distinct-n diversity and repetition (the
signs of a policy that games its reward with strings of the same words)."""

from __future__ import annotations

import math
import re
from collections import Counter

REPEAT_MIN_LETTERS = 4
"""A content word, for the repetition share: a run of at least this many letters (skips "the", "and", "a")."""
REPEAT_MIN_COUNT = 3
"""A completion repeats itself when one content word occurs at least this many times in it."""
_WORD = re.compile(r"[^\W\d_]+")


def bootstrap_ci(values: list[float], resamples: int, seed: int) -> list[float]:
    """95% percentile-bootstrap interval [lo, hi] of the mean of ``values``: ``resamples`` resamples with
    replacement from a numpy Generator seeded with ``seed``, then the 2.5th and 97.5th percentiles of their means."""
    import numpy as np

    data = np.asarray(values, dtype=np.float64)
    if data.ndim != 1 or data.size == 0:
        raise ValueError("bootstrap_ci needs a non-empty list of numbers")
    if resamples < 1:
        raise ValueError("bootstrap_ci needs at least one resample")
    rng = np.random.default_rng(seed)
    chunk = max(1, 2**22 // data.size)  # bound the index matrix to about 32 MB
    means = []
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        means.append(data[rng.integers(0, data.size, size=(rows, data.size))].mean(axis=1))
    lo, hi = np.percentile(np.concatenate(means), [2.5, 97.5])
    return [float(lo), float(hi)]


T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
"""Student's t 97.5% quantile for 1-30 degrees of freedom (beyond: 1.96)."""


def seed_interval(values: list[float]) -> tuple[float, list[float]]:
    """The mean of a few runs' results (one per seed) and its 95% Student-t interval: what run-to-run variation
    leaves of a result. One value: an interval of zero width says nothing and is refused."""
    n = len(values)
    if n < 2:
        raise ValueError("an interval across seeds needs at least two runs")
    mean = math.fsum(values) / n
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = (T_975[n - 2] if n - 1 <= len(T_975) else 1.96) * sd / math.sqrt(n)
    return mean, [mean - half, mean + half]


def distinct_n(texts: list[str], n: int) -> float:
    """Unique n-grams / total n-grams over all ``texts`` (whitespace tokens; n-grams never span two texts).
    0.0 when there are no n-grams at all."""
    if n < 1:
        raise ValueError("n must be at least 1")
    total = 0
    unique: set[tuple[str, ...]] = set()
    for text in texts:
        words = text.split()
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else 0.0


def most_repeated_word(text: str) -> tuple[str, int]:
    """The content word (``REPEAT_MIN_LETTERS`` letters or more, case folded) that occurs most often in ``text``, and
    its count; ("", 0) when there is none."""
    words = Counter(w for w in (m.group().casefold() for m in _WORD.finditer(text)) if len(w) >= REPEAT_MIN_LETTERS)
    if not words:
        return "", 0
    word, count = max(words.items(), key=lambda item: (item[1], item[0]))
    return word, count


def repeats_itself(text: str) -> bool:
    """Whether one content word occurs ``REPEAT_MIN_COUNT`` times or more in ``text``."""
    return most_repeated_word(text)[1] >= REPEAT_MIN_COUNT


def repetition_share(texts: list[str]) -> float:
    """Share of ``texts`` that repeat a content word ``REPEAT_MIN_COUNT`` times or more (0.0 for no texts)."""
    return sum(map(repeats_itself, texts)) / len(texts) if texts else 0.0


def gold_peak(history: list[dict]) -> dict:
    """Where along training the gold judge of the rollouts peaked (over-optimisation: the reward model's score can
    climb on past it): ``gold_first``, ``gold_peak``, ``gold_peak_step`` and, where the step logged its KL,
    ``kl_at_gold_peak``; empty when no step logged ``gold``."""
    judged = [row for row in history if isinstance(row.get("gold"), (int, float))]
    if not judged:
        return {}
    peak = max(judged, key=lambda row: row["gold"])
    found = {"gold_first": judged[0]["gold"], "gold_peak": peak["gold"], "gold_peak_step": peak.get("step")}
    if isinstance(peak.get("kl"), (int, float)):
        found["kl_at_gold_peak"] = peak["kl"]
    return found

"""Evaluation statistics on plain lists: bootstrap confidence intervals, distinct-n diversity and repetition (the
signs of a policy that games its reward with strings of the same words)."""

from __future__ import annotations

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

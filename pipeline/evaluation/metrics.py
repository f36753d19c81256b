"""Evaluation statistics on plain lists: bootstrap confidence intervals and distinct-n diversity."""

from __future__ import annotations


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

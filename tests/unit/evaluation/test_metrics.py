"""Evaluation statistics: distinct-n and bootstrap intervals, by hand."""

from __future__ import annotations

import pytest

from pipeline.evaluation.metrics import bootstrap_ci, distinct_n, most_repeated_word, repetition_share


def test_distinct_n_by_hand():
    assert distinct_n(["a b a b"], 1) == 2 / 4
    assert distinct_n(["a b a b"], 2) == 2 / 3  # (a b) (b a) (a b)
    assert distinct_n(["a b", "b a"], 2) == 1.0  # n-grams do not span texts
    assert distinct_n(["x  y\nx"], 1) == 2 / 3  # any whitespace splits
    assert distinct_n(["", "one"], 2) == 0.0  # no bigrams at all
    assert distinct_n([], 1) == 0.0


def test_bootstrap_ci_by_hand():
    assert bootstrap_ci([2.0, 2.0, 2.0], 200, seed=0) == [2.0, 2.0]
    assert bootstrap_ci([5.0], 10, seed=0) == [5.0, 5.0]
    # mean of 2 draws from {0, 1} is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4: the 2.5% and 97.5% points are 0, 1
    assert bootstrap_ci([0.0, 1.0], 1000, seed=3) == [0.0, 1.0]
    # mean of 4 draws from {0, 0, 0, 1}: P(0) = 0.32, P(>= 0.75) = 0.051 but P(1) = 0.004, so [0, 0.75]
    assert bootstrap_ci([0.0, 0.0, 0.0, 1.0], 4000, seed=1) == [0.0, 0.75]
    values = [0.1, 0.9, 0.3, 0.4, 0.8]
    assert bootstrap_ci(values, 500, seed=7) == bootstrap_ci(values, 500, seed=7)
    lo, hi = bootstrap_ci(values, 500, seed=7)
    assert 0.1 <= lo < sum(values) / 5 < hi <= 0.9
    with pytest.raises(ValueError):
        bootstrap_ci([], 10, seed=0)


def test_repetition_by_hand():
    assert most_repeated_word("Happy, happy HAPPY days of joy") == ("happy", 3)
    assert most_repeated_word("a an the 123 4444") == ("", 0)  # no run of 4+ letters
    assert most_repeated_word("café café") == ("café", 2)  # letters, not only ASCII
    assert repetition_share(["love love love", "love love", "fine"]) == pytest.approx(1 / 3)
    assert repetition_share(["good good good"]) == 1.0
    assert repetition_share([]) == 0.0


def test_the_interval_across_seeds_is_students_t():
    from pipeline.evaluation.metrics import seed_interval

    mean, (lo, hi) = seed_interval([1.0, 2.0, 3.0])  # sd 1, three runs: t(2) = 4.303
    assert mean == 2.0 and (lo, hi) == pytest.approx((2 - 4.303 / 3**0.5, 2 + 4.303 / 3**0.5))
    assert seed_interval([5.0, 5.0]) == (5.0, [5.0, 5.0])
    with pytest.raises(ValueError, match="at least two runs"):
        seed_interval([1.0])

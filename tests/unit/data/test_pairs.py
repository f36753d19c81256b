"""The rules that turn scored samples into preference pairs."""

from __future__ import annotations

import pytest

from pipeline.data.pairs import PairCounts, build_pairs


def test_best_worst_takes_the_extremes_and_drops_near_ties():
    counts = PairCounts()
    pairs = build_pairs("p", [("a", 0.1), ("b", 0.9), ("c", 0.5), ("d", 0.0)], "best_worst", 0.3, counts)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("b", "d")]
    assert pairs[0]["margin"] == pytest.approx(0.9)
    assert build_pairs("q", [("x", 0.5), ("y", 0.6)], "best_worst", 0.3, counts) == []
    assert (counts.prompts, counts.candidates, counts.kept, counts.near_ties) == (2, 2, 1, 1)


def test_all_pairs_orders_each_pair_and_counts_every_drop():
    counts = PairCounts()
    samples = [("a", 0.0), ("b", 1.0), ("b ", 0.2), ("c", 0.05)]
    pairs = build_pairs("p", samples, "all", 0.1, counts)
    got = {(p["chosen"], p["rejected"]) for p in pairs}
    # 6 candidates: (a,b) (a,b ) (a,c: 0.05 < 0.1) (b,b : identical text) (b,c) (b ,c)
    assert got == {("b", "a"), ("b ", "a"), ("b", "c"), ("b ", "c")}
    assert (counts.candidates, counts.kept, counts.near_ties, counts.identical) == (6, 4, 1, 1)
    assert all(p["chosen_score"] - p["rejected_score"] >= 0.1 for p in pairs)


def test_exact_ties_are_dropped_even_with_zero_margin():
    counts = PairCounts()
    assert build_pairs("p", [("a", 0.5), ("b", 0.5)], "all", 0.0, counts) == []
    assert counts.near_ties == 1


def test_a_pair_with_an_empty_completion_is_dropped_and_counted():
    """A policy that ends at once leaves an empty completion: no response to prefer or reject (and an invalid row of
    the pairs' data card)."""
    counts = PairCounts()
    pairs = build_pairs("p", [("", 0.0), ("good", 0.9), ("  ", 0.5), ("bad", -0.5)], "all", 0.1, counts)
    assert {(p["chosen"], p["rejected"]) for p in pairs} == {("good", "bad")}
    assert (counts.candidates, counts.kept, counts.empty) == (6, 1, 5)
    assert counts.as_metrics()["dropped_empty"] == 5

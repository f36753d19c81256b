"""Judges that tests name as "support.judges:<function>" (imported like a user's own judge module)."""

from __future__ import annotations


def length_judge(prompts, completions):
    return [len(c) for c in completions]


def constant_judge(prompts, completions):
    return [0.25] * len(completions)


def short_judge(prompts, completions):
    return [1.0] * (len(completions) - 1)


def nan_judge(prompts, completions):
    return [float("nan")] * len(completions)


NOT_A_FUNCTION = 3

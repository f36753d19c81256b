"""Turning scored samples into preference pairs: the rules the preferences stage applies, kept pure for testing."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations


@dataclass
class PairCounts:
    """What happened to the candidate pairs: every candidate is kept or counted under one reason."""

    prompts: int = 0
    candidates: int = 0
    kept: int = 0
    near_ties: int = 0
    """Candidates whose score difference was below min_margin (ties included)."""
    identical: int = 0
    """Candidates whose two completions were the same text."""
    empty: int = 0
    """Candidates with an empty completion (the policy ended at once): not a response to prefer or reject."""
    margins: list[float] = field(default_factory=list)

    def as_metrics(self) -> dict:
        mean = sum(self.margins) / len(self.margins) if self.margins else 0.0
        return {"prompts": self.prompts, "candidate_pairs": self.candidates, "pairs": self.kept,
                "dropped_near_ties": self.near_ties, "dropped_identical": self.identical, "dropped_empty": self.empty,
                "mean_margin": mean}


def build_pairs(prompt: str, samples: list[tuple[str, float]], mode: str, min_margin: float,
                counts: PairCounts) -> list[dict]:
    """Pairs {prompt, chosen, rejected, margin} from one prompt's (completion, score) samples.

    best_worst: the highest- against the lowest-scored sample (one candidate per prompt); all: every two samples.
    A candidate is dropped (and counted) if a text is empty, both texts are equal, or the scores differ by less than
    min_margin.
    """
    counts.prompts += 1
    if mode == "best_worst":
        ranked = sorted(samples, key=lambda s: s[1])
        candidates = [(ranked[-1], ranked[0])]
    else:
        candidates = [(a, b) if a[1] >= b[1] else (b, a) for a, b in combinations(samples, 2)]
    pairs = []
    for (chosen, chosen_score), (rejected, rejected_score) in candidates:
        counts.candidates += 1
        margin = chosen_score - rejected_score
        if not chosen.strip() or not rejected.strip():
            counts.empty += 1
        elif chosen.strip() == rejected.strip():
            counts.identical += 1
        elif margin < min_margin or margin == 0:
            counts.near_ties += 1
        else:
            counts.kept += 1
            counts.margins.append(margin)
            pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "margin": margin,
                          "chosen_score": chosen_score, "rejected_score": rejected_score})
    return pairs


def unpair(pairs: list[dict]) -> tuple[list[dict], int]:
    """Unpaired labelled completions {prompt, completion, label} from preference pairs, for KTO: each pair's chosen
    is desirable (True), its rejected undesirable (False). A completion that several pairs hold counts once (with
    ``pairs: all`` every sample of a prompt is in several); one that is chosen in one pair and rejected in another
    (a middle sample) has no label and is left out. Returns (rows in first-seen order, how many were left out)."""
    labels: dict[tuple, bool | None] = {}
    for pair in pairs:
        for key, label in (("chosen", True), ("rejected", False)):
            identity = (_hashable(pair["prompt"]), _hashable(pair[key]))
            labels[identity] = label if labels.get(identity, label) == label else None
    rows = [{"prompt": _plain(p), "completion": _plain(c), "label": label}
            for (p, c), label in labels.items() if label is not None]
    return rows, sum(label is None for label in labels.values())


def _hashable(value):
    """A prompt or completion (text, or a list of chat messages) as a dictionary key."""
    if isinstance(value, list):
        return ("messages", tuple(tuple(sorted(m.items())) for m in value))
    return value


def _plain(key):
    if isinstance(key, tuple) and key[:1] == ("messages",):
        return [dict(m) for m in key[1]]
    return key

"""The preference pairs a pairwise stage (`reward`, `dpo`, `kto`) trains on."""

from __future__ import annotations

from ..data.loading import preference_splits


def preference_pairs(ctx, config) -> tuple[list[dict], list[dict]]:
    """(train, eval) pairs from the stage's ``data:``, or else from the card its upstream preferences stage wrote."""
    preferences = ctx.upstream_of("preferences")
    card = preferences.path / preferences.output.data_card if preferences is not None else None
    return preference_splits(config.data, card, ctx.seed)

"""Models the tests build from the tiny model."""

from __future__ import annotations

import torch

from pipeline.models.loading import load_causal_lm


def perturbed(path: str, scale: float = 0.2, seed: int = 0):
    """A copy of the tiny model with seeded noise on every matrix: sharper, more varied next-token distributions."""
    model = load_causal_lm(path, "float32")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() > 1:
                weight.add_(torch.randn(weight.shape, generator=generator) * scale)
    return model

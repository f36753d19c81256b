"""Loading models with the recipe's settings: 4-bit quantisation on CPU."""

from __future__ import annotations

import torch

from pipeline.models.loading import load_causal_lm


def test_base_model_loads_quantised_in_4bit_on_cpu(tiny_path):
    import bitsandbytes as bnb

    model = load_causal_lm(tiny_path, "float32", quantization="4bit")
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[5, 6, 7]])).logits).all()

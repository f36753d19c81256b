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


def test_lm_head_gets_a_contiguous_input_and_the_same_logits(tiny_path):
    """transformers slices the positions the head runs on (logits_to_keep): a strided input that torch multiplies
    against a per-row copy of a frozen head weight (about 10x slower). The loaded model's head must see a contiguous
    tensor, and give the logits the unsliced forward gives."""
    model = load_causal_lm(tiny_path, "float32").requires_grad_(False)
    seen = []
    model.get_output_embeddings().register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]])
    with torch.no_grad():
        kept = model(ids, logits_to_keep=3).logits
        full = model(ids).logits
    assert seen[0].shape[1] == 3 and seen[0].is_contiguous()
    torch.testing.assert_close(kept, full[:, -3:], rtol=0, atol=1e-5)
    load_causal_lm(tiny_path, "float32")  # loading again adds no second hook to a shared module
    assert len(model.get_output_embeddings()._forward_pre_hooks) == 2

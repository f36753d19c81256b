"""QLoRA on CPU: LoRA on a 4-bit nf4 base trains, with gradients equal to those of the dequantised dense model."""

from __future__ import annotations

import torch

from pipeline.builtin.tiny_model import tiny_llama_path
from pipeline.models.loading import load_causal_lm


def lora(model):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    # random B as well as A (peft's default B = 0 would make every A gradient 0)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear",
                                            init_lora_weights=False))


def test_lora_gradients_on_a_4bit_base_are_nonzero_and_match_the_dequantised_model():
    import bitsandbytes as bnb

    path = str(tiny_llama_path())
    quantised = load_causal_lm(path, "float32", quantization="4bit")
    dense = load_causal_lm(path, "float32")
    layers = [(name, m) for name, m in quantised.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers
    for name, module in layers:
        weight = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
        dense.get_submodule(name).weight.data.copy_(weight)
    quantised, dense = lora(quantised), lora(dense)
    adapter = {n: p for n, p in quantised.state_dict().items() if "lora_" in n}
    dense.load_state_dict(adapter, strict=False)  # the same adapter weights

    ids = torch.tensor([[3, 14, 15, 92, 65, 35, 89, 79]])
    # An eval-mode no-grad pass first: on AVX512-BF16 CPUs this is what used to break backward for good.
    for model in (quantised, dense):
        model.eval()
        with torch.no_grad():
            model(input_ids=ids)
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()

    grads = {n: p.grad for n, p in quantised.named_parameters() if p.requires_grad}
    reference = {n: p.grad for n, p in dense.named_parameters() if p.requires_grad}
    assert grads and all(g is not None for g in grads.values()), "every LoRA weight gets a gradient"
    assert all(g.abs().sum() > 0 for g in grads.values())
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference[name], rtol=1e-3, atol=1e-5, msg=name)


def test_sft_trains_with_8bit_adam_on_a_4bit_base(make_recipe, chat_data, tmp_path):
    """QLoRA end to end through the sft stage: nf4 base, LoRA adapter, bitsandbytes' 8-bit AdamW."""
    import json

    from pipeline.graph.plan import make_plan
    from pipeline.graph.runner import run_plan
    from pipeline.recipe import load_recipe
    from support import sft_stage

    path = make_recipe({"sft": sft_stage(chat_data, steps=6, train={"optim": "adamw_bnb_8bit"})},
                       model={"source": "builtin:tiny-llama", "quantization": "4bit", "dtype": "float32"})
    run_plan(make_plan(load_recipe(path)))
    history = json.loads((tmp_path / "out" / "sft" / "log_history.json").read_text())
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) >= 2 and losses[-1] < losses[0], losses


QLORA = ["model={source: 'builtin:tiny-llama', quantization: 4bit, dtype: float32}", "evaluate=null",
         "stages.reward.lora={r: 8, alpha: 16, dropout: 0.0}", "stages.ppo.lora={r: 8, alpha: 16, dropout: 0.0}",
         "stages.sft.train.max_steps=6", "stages.reward.train.max_steps=6", "stages.dpo.train.max_steps=3",
         "stages.ppo.train.max_steps=2"]


def test_every_training_stage_runs_as_qlora(tmp_path):
    """sft, reward, dpo and ppo on a 4-bit base (upstream policies are quantised as they load, too)."""
    import json

    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    from pipeline.artifacts.policy import load_policy
    from pipeline.graph.plan import make_plan
    from pipeline.graph.runner import run_plan
    from pipeline.recipe import load_recipe
    from support import ROOT

    recipe = load_recipe(ROOT / "recipes" / "tiny.yaml", [f"output_dir={tmp_path}", *QLORA])
    run_plan(make_plan(recipe))
    for stage in ("sft", "dpo", "ppo"):
        manifest = json.loads((tmp_path / stage / "manifest.json").read_text())
        assert manifest["output"]["format"] == "adapter", stage
        load_policy(tmp_path / stage)  # dense weights with the adapters merged, loadable without bitsandbytes
    # peft starts every lora_B at zero: a non-zero B means gradients reached the adapter through the 4-bit layers
    # (the CPU repacking bug leaves them None, and B stays 0)
    for adapter in ("sft", "dpo", "ppo", "reward/adapter"):
        weights = load_file(tmp_path / adapter / "adapter_model.safetensors")
        lora_b = [w for name, w in weights.items() if "lora_B" in name]
        assert lora_b and all(w.abs().sum() > 0 for w in lora_b), adapter
    # the reward artifact is the adapter merged into the dense starting weights, not a 4-bit model
    reward = AutoModelForSequenceClassification.from_pretrained(tmp_path / "reward")
    assert getattr(reward, "is_loaded_in_4bit", False) is False
    assert "quantization_config" not in json.loads((tmp_path / "reward" / "config.json").read_text())


def test_full_fine_tuning_on_a_quantised_base_is_refused_with_the_key_named(tmp_path):
    import pytest

    from pipeline.errors import RecipeError
    from pipeline.recipe import load_recipe
    from support import ROOT

    with pytest.raises(RecipeError) as error:
        load_recipe(ROOT / "recipes" / "tiny.yaml", [f"output_dir={tmp_path}", QLORA[0]])
    message = str(error.value)
    assert "stages.reward.lora" in message and "stages.ppo.lora" in message and "quantis" in message

"""The kto stage: TRL's KTOTrainer on preference pairs unpaired into desirable and undesirable completions; the
policy learns the desirable kind, and its artifact loads and computes the same with plain peft / transformers."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.data.pairs import unpair
from pipeline.graph.plan import make_plan
from pipeline.graph.runner import run_plan
from pipeline.recipe import load_recipe
from support import sft_stage, synthetic_pairs, write_jsonl


def kto_stages(chat_data, pairs, **kto) -> dict:
    stage = {"kind": "kto", "from": "sft", "data": {"path": str(pairs), "eval_fraction": 0.2}, "max_length": 48,
             "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "beta": 0.1,
             "train": {"max_steps": 25, "batch_size": 8, "learning_rate": 5e-3, "logging_steps": 5, "save_steps": 100}}
    stage.update(kto)
    return {"sft": sft_stage(chat_data, merge=True), "kto": stage}


def test_unpairing_labels_each_completion_once_and_drops_the_contradicted():
    pairs = [{"prompt": "p", "chosen": "best", "rejected": "middle"},
             {"prompt": "p", "chosen": "best", "rejected": "worst"},
             {"prompt": "p", "chosen": "middle", "rejected": "worst"},  # middle: chosen here, rejected above
             {"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "yes"}],
              "rejected": [{"role": "assistant", "content": "no"}]}]
    rows, dropped = unpair(pairs)
    assert dropped == 1
    assert rows == [{"prompt": "p", "completion": "best", "label": True},
                    {"prompt": "p", "completion": "worst", "label": False},
                    {"prompt": [{"role": "user", "content": "q"}],
                     "completion": [{"role": "assistant", "content": "yes"}], "label": True},
                    {"prompt": [{"role": "user", "content": "q"}],
                     "completion": [{"role": "assistant", "content": "no"}], "label": False}]


@pytest.mark.slow  # a tiny-model training run of a minute or more: the full suite runs it
def test_kto_prefers_the_desirable_kind_and_reloads_with_plain_peft(make_recipe, chat_data, tmp_path):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    pairs = write_jsonl(tmp_path / "pairs.jsonl", synthetic_pairs(80))
    run_plan(make_plan(load_recipe(make_recipe(kto_stages(chat_data, pairs, merge=True)))))
    folder = tmp_path / "out" / "kto"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["labelled_completions"] == 128 and metrics["desirable"] == 64  # 64 training pairs, unpaired
    # on held-out completions, the desirable kind gained on the reference and the undesirable kind lost (both are 0
    # at the start: the policy is the reference)
    assert metrics["eval_rewards/chosen"] > 0.05 and metrics["eval_rewards/rejected"] < -0.05, metrics
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        adapted = AutoPeftModelForCausalLM.from_pretrained(folder)(ids).logits  # base = sft/merged
        merged = AutoModelForCausalLM.from_pretrained(folder / "merged")(ids).logits
        start = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "sft" / "merged")(ids).logits
    torch.testing.assert_close(adapted, merged, rtol=1e-4, atol=1e-5)
    assert (adapted - start).abs().max() > 1e-3  # it trained


def test_kto_needs_two_rows_a_batch(make_recipe, chat_data, tmp_path):
    from pipeline.errors import RecipeError

    pairs = write_jsonl(tmp_path / "pairs.jsonl", synthetic_pairs(8))
    stages = kto_stages(chat_data, pairs)
    stages["kto"]["train"]["batch_size"] = 1
    with pytest.raises(RecipeError, match="train.batch_size must be at least 2"):
        make_plan(load_recipe(make_recipe(stages)))

"""The decode loop behind generate (pipeline/evaluation/sampler.py): an exact draw from the model's distribution, the
tokens transformers' generate gives where no randomness is involved, one random stream per row (the same samples
whatever the batch size), finished rows out of the batch, one prefill per distinct prompt."""

from __future__ import annotations

import pytest
import torch

from pipeline.evaluation.generation import generate, render_prompts
from pipeline.evaluation.sampler import draw, row_seed
from pipeline.evaluation.settings import SamplingSettings
from support.models import perturbed

PROMPTS = ["Say hello.", "What is 2 plus 2 and then some more words?", "the film", "a", "one two three four five"]


@pytest.fixture(scope="module")
def model(tiny_path, tiny_tokenizer):
    """The perturbed tiny model with an untied head biased toward <|im_end|>: rows end at different steps."""
    model = perturbed(tiny_path)
    with torch.no_grad():
        head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
        head.weight.copy_(model.get_input_embeddings().weight)
        head.bias.zero_()
        head.bias[tiny_tokenizer.eos_token_id] = 3.0
        model.lm_head = head
    return model.eval()


def test_draw_is_an_exact_draw_and_never_picks_a_zero_probability_token():
    probs = torch.tensor([[0.0, 0.1, 0.0, 0.6, 0.3, 0.0]]).repeat(4000, 1)
    generators = [torch.Generator().manual_seed(row_seed(0, i)) for i in range(len(probs))]
    tokens = draw(probs, generators)
    counts = torch.bincount(tokens, minlength=6).double() / len(tokens)
    assert counts[[0, 2, 5]].sum() == 0
    sigma = (probs[0] * (1 - probs[0]) / len(tokens)).sqrt()
    assert ((counts - probs[0]).abs() <= 4 * sigma + 1e-12).all(), counts


def test_greedy_tokens_equal_transformers_generate_as_rows_end_at_different_steps(model, tiny_tokenizer):
    greedy = SamplingSettings(max_new_tokens=14, do_sample=False, batch_size=len(PROMPTS))
    ours = generate(model, tiny_tokenizer, PROMPTS, greedy, seed=0)
    assert len({len(c.completion_ids) for c in ours}) > 1, "rows should end at different steps"
    for prompt, completion in zip(render_prompts(tiny_tokenizer, PROMPTS), ours):
        ids = tiny_tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            theirs = model.generate(ids, max_new_tokens=14, do_sample=False, eos_token_id=tiny_tokenizer.eos_token_id,
                                    pad_token_id=tiny_tokenizer.pad_token_id)[0, ids.shape[1]:].tolist()
        assert completion.completion_ids == theirs[: len(completion.completion_ids)]
        assert completion.eos == (theirs[len(completion.completion_ids) - 1] == tiny_tokenizer.eos_token_id)


def test_samples_do_not_depend_on_the_batch_size_and_copies_share_one_prefill(model, tiny_tokenizer):
    repeated = [p for p in PROMPTS for _ in range(3)]
    prefill_rows = []
    hook = model.get_input_embeddings().register_forward_pre_hook(
        lambda module, args: prefill_rows.append(args[0].shape[0]) if args[0].shape[1] > 1 else None)
    try:
        together = generate(model, tiny_tokenizer, repeated, SamplingSettings(max_new_tokens=10, batch_size=15),
                            seed=4, progress=False)
    finally:
        hook.remove()
    assert prefill_rows == [len(PROMPTS)], "each distinct prompt is prefilled once for its copies"
    for size in (1, 4):
        alone = generate(model, tiny_tokenizer, repeated, SamplingSettings(max_new_tokens=10, batch_size=size),
                         seed=4, progress=False)
        assert [c.completion_ids for c in alone] == [c.completion_ids for c in together]
    assert len({tuple(c.completion_ids) for c in together[:3]}) > 1, "copies of a prompt draw different samples"


def test_the_cache_goes_by_the_keyword_the_model_takes_without_a_deprecation_warning(model, tiny_tokenizer):
    import warnings

    from peft import LoraConfig, get_peft_model

    adapted = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    for candidate in (model, adapted):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            generate(candidate, tiny_tokenizer, PROMPTS[:2], SamplingSettings(max_new_tokens=4), seed=0)
        assert not [w for w in caught if "past_key_values" in str(w.message)], [str(w.message) for w in caught]
    adapted.unload()

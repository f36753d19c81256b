"""Batched sampling and teacher-forced log-probabilities on the tiny model: seeded, padding-independent, EOS-aware."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.evaluation.generation import Completion, completion_logprobs, generate, render_prompts
from pipeline.evaluation.settings import SamplingSettings
from pipeline.models.loading import load_causal_lm, load_tokenizer
from support.models import perturbed

PROMPTS = ["Say hello.", "What is 2 plus 2 and then some more words?", "the film", "a", "one two three four five"]


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer):
    return tiny_tokenizer


@pytest.fixture(scope="module")
def model(tiny_path):
    return load_causal_lm(tiny_path, "float32")


def manual_logprobs(model, completion: Completion) -> torch.Tensor:
    """One unpadded forward pass, no batching, no masks."""
    ids = torch.tensor([completion.prompt_ids + completion.completion_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    p, n = len(completion.prompt_ids), len(completion.completion_ids)
    steps = logits[p - 1 : p + n - 1].log_softmax(-1)
    return steps.gather(-1, torch.tensor(completion.completion_ids)[:, None]).squeeze(-1)


def test_completion_logprobs_match_unbatched_forward(tokenizer, tiny_path):
    model = perturbed(tiny_path)
    completions = generate(model, tokenizer, PROMPTS, SamplingSettings(max_new_tokens=10, batch_size=5), seed=0)
    # different completion lengths as well as prompt lengths: right padding must not leak into the result
    completions[1].completion_ids = completions[1].completion_ids[:4]
    completions[3].completion_ids = []
    assert len({len(c.prompt_ids) for c in completions}) == len(PROMPTS)
    batched = completion_logprobs(model, completions, batch_size=3)
    singly = completion_logprobs(model, completions, batch_size=1)
    for completion, got, alone in zip(completions, batched, singly):
        assert got.shape == (len(completion.completion_ids),) and got.dtype == torch.float32
        if completion.completion_ids:
            torch.testing.assert_close(got, manual_logprobs(model, completion), atol=1e-5, rtol=0)
        torch.testing.assert_close(got, alone, atol=1e-5, rtol=0)
        assert (got <= 0).all()


def test_render_prompts_uses_the_chat_template(tokenizer, tiny_path):
    assert render_prompts(tokenizer, ["Hi"]) == ["<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"]
    plain = load_tokenizer(tiny_path)
    plain.chat_template = None
    assert render_prompts(plain, ["Hi"]) == ["Hi"]


def test_a_conversational_prompt_renders_its_turns(tokenizer, tiny_path):
    """HH-RLHF prompts are conversations up to the user's last turn: rendered as they are, not as one user message."""
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
             {"role": "user", "content": "Bye"}]
    assert render_prompts(tokenizer, [turns, "Hi"]) == [
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
        "<|im_start|>assistant\n", "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"]
    plain = load_tokenizer(tiny_path)
    plain.chat_template = None
    with pytest.raises(ValueError, match="conversational prompts .* need a tokenizer with a chat template"):
        render_prompts(plain, [turns])


def test_generation_is_seeded_and_restores_state(model, tokenizer):
    sampling = SamplingSettings(max_new_tokens=8, batch_size=2)
    model.train()
    first = generate(model, tokenizer, PROMPTS, sampling, seed=5)
    assert model.training and tokenizer.padding_side == "right"
    model.eval()
    again = generate(model, tokenizer, PROMPTS, sampling, seed=5)
    other = generate(model, tokenizer, PROMPTS, sampling, seed=6)
    assert [c.prompt for c in first] == PROMPTS
    assert [c.completion_ids for c in first] == [c.completion_ids for c in again]
    assert [c.completion for c in first] == [c.completion for c in again]
    assert [c.completion_ids for c in first] != [c.completion_ids for c in other]
    assert all(len(c.completion_ids) == 8 for c in first)


def test_left_padding_does_not_change_greedy_samples(tokenizer, tiny_path):
    model = perturbed(tiny_path)  # the unperturbed tiny model greedily repeats one token, which would prove nothing
    greedy = SamplingSettings(max_new_tokens=12, do_sample=False, batch_size=len(PROMPTS))
    together = generate(model, tokenizer, PROMPTS, greedy, seed=0)
    assert len({tuple(c.completion_ids) for c in together}) == len(PROMPTS)
    for prompt, batched in zip(PROMPTS, together):
        (alone,) = generate(model, tokenizer, [prompt], greedy, seed=0)
        assert alone.prompt_ids == batched.prompt_ids
        assert alone.completion_ids == batched.completion_ids


def test_eos_ends_a_completion_and_is_kept(tokenizer, tiny_path):
    model = perturbed(tiny_path)
    eos = tokenizer.eos_token_id
    with torch.no_grad():  # untie the head and give <|im_end|> a bias: most samples end early, at different steps
        head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
        head.weight.copy_(model.get_input_embeddings().weight)
        head.bias.zero_()
        head.bias[eos] = 4.0
        model.lm_head = head
    completions = generate(model, tokenizer, PROMPTS * 2, SamplingSettings(max_new_tokens=16), seed=3)
    ended = [c for c in completions if c.eos]
    assert ended and len({len(c.completion_ids) for c in ended}) > 1
    for c in completions:
        assert c.completion_ids.count(eos) == (1 if c.eos else 0)
        assert (c.completion_ids[-1] == eos) == c.eos
        assert c.eos or len(c.completion_ids) == 16
        assert "<|im_end|>" not in c.completion and "<|endoftext|>" not in c.completion
    lengths = [len(t) for t in completion_logprobs(model, completions, batch_size=4)]
    assert lengths == [len(c.completion_ids) for c in completions]


def test_bf16_generation_and_logprobs_on_cpu(tokenizer, tiny_path):
    model = load_causal_lm(tiny_path, "bfloat16")
    sampling = SamplingSettings(max_new_tokens=6, batch_size=2)
    completions = generate(model, tokenizer, PROMPTS[:3], sampling, seed=0)
    assert completions == generate(model, tokenizer, PROMPTS[:3], sampling, seed=0)
    logprobs = completion_logprobs(model, completions, batch_size=2)
    assert all(t.dtype == torch.float32 and t.shape == (6,) and torch.isfinite(t).all() for t in logprobs)
    assert math.isfinite(sum(float(t.sum()) for t in logprobs))

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


def full_logits_logprobs(model, completions: list[Completion], batch_size: int) -> list[torch.Tensor]:
    """The computation completion_logprobs replaced, kept as it was: the LM head over every position (prompt and
    padding included), the completion's rows sliced out afterwards."""
    results = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(completions), batch_size):
            chunk = completions[start : start + batch_size]
            sequences = [c.prompt_ids + c.completion_ids for c in chunk]
            width = max(len(s) for s in sequences)
            input_ids = torch.zeros(len(chunk), width, dtype=torch.long)
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            for row, seq in enumerate(sequences):
                input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                mask[row, : len(seq)] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=False).logits
            assert logits.shape[:2] == (len(chunk), width)  # every position went through the head
            for row, c in enumerate(chunk):
                p, n = len(c.prompt_ids), len(c.completion_ids)
                if n == 0:
                    results.append(torch.zeros(0, dtype=torch.float32))
                    continue
                step = logits[row, p - 1 : p + n - 1].float().log_softmax(-1)
                results.append(step.gather(-1, torch.tensor(c.completion_ids)[:, None]).squeeze(-1).cpu())
    return results


@pytest.fixture(scope="module")
def varied_completions(tokenizer, tiny_path):
    """Completions of the perturbed model: five prompt lengths, completion lengths 10, 4, 0 and 1."""
    completions = generate(perturbed(tiny_path), tokenizer, PROMPTS, SamplingSettings(max_new_tokens=10, batch_size=5),
                           seed=0)
    completions[1].completion_ids = completions[1].completion_ids[:4]
    completions[3].completion_ids = []
    completions[4].completion_ids = completions[4].completion_ids[:1]
    assert len({len(c.prompt_ids) for c in completions}) == len(PROMPTS)
    assert len({tuple(c.completion_ids) for c in completions}) == len(PROMPTS)  # not one repeated token
    return completions


def head_rows(model) -> list[int]:
    """Records how many positions each call of the model's LM head gets (its input's rows)."""
    rows: list[int] = []
    model.get_output_embeddings().register_forward_hook(lambda module, args, out: rows.append(args[0][..., 0].numel()))
    return rows


def assert_same_logprobs(got: list[torch.Tensor], expected: list[torch.Tensor], completions) -> None:
    assert len(got) == len(expected) == len(completions)
    for completion, new, old in zip(completions, got, expected):
        assert new.dtype == torch.float32 and new.device.type == "cpu"
        assert new.shape == old.shape == (len(completion.completion_ids),)
        if new.numel():
            assert (new - old).abs().max() <= 1e-5


@pytest.mark.parametrize("batch_size", [1, 2, 3, 5, 8])
def test_logprobs_with_the_head_on_completion_positions_only_equal_the_full_logits_ones(
        varied_completions, tiny_path, batch_size):
    model = perturbed(tiny_path)
    expected = full_logits_logprobs(model, varied_completions, batch_size)
    rows = head_rows(model)
    got = completion_logprobs(model, varied_completions, batch_size)
    assert_same_logprobs(got, expected, varied_completions)
    # the head saw exactly one position per completion token, no prompt or padding position
    assert sum(rows) == sum(len(c.completion_ids) for c in varied_completions)
    (empty,) = completion_logprobs(model, varied_completions[3:4], batch_size)  # nothing to score: no forward pass
    assert empty.shape == (0,) and empty.dtype == torch.float32
    assert sum(rows) == sum(len(c.completion_ids) for c in varied_completions)


@pytest.mark.parametrize("batch_size", [2, 5])
def test_head_only_logprobs_of_a_lora_model_with_its_adapter_enabled_and_disabled(varied_completions, tiny_path,
                                                                                  batch_size):
    """The evaluation's reference is often the policy with its LoRA adapter disabled: logits_to_keep must go
    through peft's wrapper in both states."""
    from peft import LoraConfig, get_peft_model

    base = perturbed(tiny_path)
    plain = full_logits_logprobs(base, varied_completions, batch_size)
    torch.manual_seed(0)  # init_lora_weights=False: a random B, so the adapter changes the logits
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM",
                                           init_lora_weights=False))
    enabled = completion_logprobs(lora, varied_completions, batch_size)
    assert_same_logprobs(enabled, full_logits_logprobs(lora, varied_completions, batch_size), varied_completions)
    assert max(float((e - p).abs().max()) for e, p in zip(enabled, plain) if e.numel()) > 1e-2
    with lora.disable_adapter():
        disabled = completion_logprobs(lora, varied_completions, batch_size)
        assert_same_logprobs(disabled, full_logits_logprobs(lora, varied_completions, batch_size), varied_completions)
    assert_same_logprobs(disabled, plain, varied_completions)


def test_a_model_without_mask_slicing_gets_the_full_logits_indexed(varied_completions, tiny_path, monkeypatch):
    from pipeline.evaluation import generation

    model = perturbed(tiny_path)
    expected = full_logits_logprobs(model, varied_completions, 3)
    monkeypatch.setattr(generation, "_keeps_logits_by_mask", lambda model: False)
    rows = head_rows(model)
    assert_same_logprobs(completion_logprobs(model, varied_completions, 3), expected, varied_completions)
    assert sum(rows) > sum(len(c.completion_ids) for c in varied_completions)  # the head ran over every position


@pytest.mark.parametrize("sampling", [dict(), dict(temperature=0.7, top_p=0.9, top_k=20)], ids=["plain", "warped"])
def test_sampling_records_the_log_probs_a_teacher_forced_pass_computes(tokenizer, tiny_path, sampling):
    """The log-prob of each sampled token as the decode loop saw it (its KV cache, left-padded prompts, rows leaving
    the batch) is the model's own, before temperature and top-k/top-p: what teacher forcing gives (fp32)."""
    model = perturbed(tiny_path)
    completions = generate(model, tokenizer, PROMPTS, SamplingSettings(max_new_tokens=10, batch_size=3, **sampling),
                           seed=0)
    forced = completion_logprobs(model, completions, batch_size=2)
    for completion, expected in zip(completions, forced):
        assert len(completion.logprobs) == len(completion.completion_ids)
        torch.testing.assert_close(torch.tensor(completion.logprobs), expected, atol=1e-5, rtol=0)

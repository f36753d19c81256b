"""Batched sampling from a causal LM and teacher-forced log-probabilities of what was sampled.

torch and transformers are imported inside the functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .sampler import model_device
from .settings import SamplingSettings

if TYPE_CHECKING:
    from collections.abc import Collection

    import torch


@dataclass
class Completion:
    """One sampled completion and the token ids it came from."""

    prompt: str
    """The prompt as given (before the chat template)."""
    completion: str
    """The generated text, special tokens stripped."""
    prompt_ids: list[int]
    """Token ids of the rendered prompt, without padding."""
    completion_ids: list[int]
    """Generated token ids, up to and including the end-of-sequence token when one was produced."""
    eos: bool
    """Whether generation ended with the end-of-sequence token (rather than at max_new_tokens)."""
    logprobs: list[float] | None = None
    """The sampling model's log-probability of each completion token, as it was sampled: its own distribution
    (temperature 1, before top-k/top-p), what ``completion_logprobs`` recomputes by teacher forcing. None where the
    completion was not sampled here."""


def _has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompts(tokenizer, prompts: list) -> list[str]:
    """Each prompt through the tokenizer's chat template (generation prompt added): a string as a user message, a
    list of turns (a conversation up to the user's last turn, e.g. HH-RLHF's) as it is. Without a chat template a
    string prompt is used as raw text."""
    if not _has_chat_template(tokenizer):
        if any(not isinstance(p, str) for p in prompts):
            raise ValueError("conversational prompts (lists of turns) need a tokenizer with a chat template; set "
                             "model.chat_template")
        return list(prompts)
    return [
        tokenizer.apply_chat_template(p if isinstance(p, list) else [{"role": "user", "content": p}], tokenize=False,
                                      add_generation_prompt=True)
        for p in prompts
    ]


def _eos_ids(tokenizer) -> set[int]:
    eos = tokenizer.eos_token_id
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, (list, tuple)) else {int(eos)}


def generate(
    model,
    tokenizer,
    prompts: list[str],
    sampling: SamplingSettings,
    seed: int,
    desc: str = "generating",
    *,
    progress: bool = True,
    batches: Collection[int] | None = None,
) -> list[Completion]:
    """Sample one completion per prompt, in order (with ``batches``: only for the prompts of those batch indices,
    as ``shard_batches`` deals them to the processes of a job).

    Prompts go through ``render_prompts`` and are sampled ``sampling.batch_size`` at a time by ``sampler.sample``:
    prompt i draws from its own random stream, seeded from ``seed`` and i, so the same prompts, settings and seed
    give the same completions whatever the batch size or the number of processes; a row that has ended leaves the
    batch, and copies of a prompt in a batch share one prefill. Only the settings in ``sampling`` shape the
    distribution (no top-k unless asked, no repetition penalty, whatever the model's generation_config says).
    """
    import torch
    from tqdm.auto import tqdm

    from .sampler import row_seed, sample

    prompts = list(prompts)
    if not prompts:
        return []
    rendered = render_prompts(tokenizer, prompts)
    # A rendered chat template already holds its special tokens; raw text gets the tokenizer's usual ones (BOS).
    add_special_tokens = not _has_chat_template(tokenizer)
    eos_ids = _eos_ids(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has neither a pad token nor an end-of-sequence token")
    was_training = model.training
    results: list[Completion] = []
    chosen = [(i, start) for i, start in enumerate(range(0, len(prompts), sampling.batch_size))
              if batches is None or i in batches]
    try:
        model.eval()
        with torch.no_grad():
            for _, start in tqdm(chosen, desc=desc, unit="batch", disable=not progress):
                texts = rendered[start : start + sampling.batch_size]
                prompt_ids = tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]
                seeds = [row_seed(seed, start + row) for row in range(len(texts))]
                sampled = sample(model, prompt_ids, sampling, seeds, eos_ids, pad_id)
                for row, (ids, logprobs) in enumerate(zip(*sampled)):
                    ended = bool(ids) and ids[-1] in eos_ids
                    results.append(
                        Completion(
                            prompt=prompts[start + row],
                            completion=tokenizer.decode(ids, skip_special_tokens=True),
                            prompt_ids=list(prompt_ids[row]),
                            completion_ids=ids,
                            eos=ended,
                            logprobs=logprobs,
                        )
                    )
    finally:
        model.train(was_training)
    return results


def shard_batches(count: int, batch_size: int, rank: int, world: int) -> list[int]:
    """The batch indices process ``rank`` of ``world`` samples, round robin. Each prompt keeps its own random
    stream (seeded from seed and its index), so the completions are those
    one process would sample."""
    return list(range(rank, (count + batch_size - 1) // batch_size, world))


def generate_sharded(model, tokenizer, prompts: list[str], sampling: SamplingSettings, seed: int, desc: str,
                     rank: int, world: int, per_batch=None) -> list | None:
    """``generate`` with the batches dealt to the ``world`` processes of a job and gathered: every process must call
    it; the main process (rank 0) gets every completion in prompt order, the others None.

    ``per_batch(completions) -> list`` (one value per completion) runs on the process that sampled each batch, on
    exactly that batch (so the result does not depend on the number of processes); the main process then gets
    (completion, value) pairs."""
    size = sampling.batch_size
    mine = shard_batches(len(prompts), size, rank, world)
    local = generate(model, tokenizer, prompts, sampling, seed, desc, progress=rank == 0, batches=mine)
    if per_batch is not None:
        local = [pair for start in range(0, len(local), size)
                 for pair in zip(local[start : start + size], per_batch(local[start : start + size]))]
    gathered = all_gather_objects((mine, local), world)
    return merge_batches(gathered, size) if rank == 0 else None


def all_gather_objects(obj, num_processes: int) -> list:
    """``obj`` of every process, in rank order (pickled through torch.distributed; gloo on CPU). One process: [obj]."""
    if num_processes == 1:
        return [obj]
    import torch.distributed as dist

    gathered = [None] * num_processes
    dist.all_gather_object(gathered, obj)
    return gathered


def merge_batches(shards: list[tuple[list[int], list]], batch_size: int) -> list:
    """Items of batch-sharded work (each shard: its batch indices and their items, batch_size a batch but the last)
    back in batch order."""
    by_batch = {}
    for indices, items in shards:
        for position, index in enumerate(indices):
            by_batch[index] = items[position * batch_size : (position + 1) * batch_size]
    return [item for index in sorted(by_batch) for item in by_batch[index]]


def completion_logprobs(model, completions: list[Completion], batch_size: int) -> list[torch.Tensor]:
    """Per-token log-probabilities (float32, on the CPU) of each completion's tokens given its prompt under ``model``.

    Teacher forcing over ``prompt_ids + completion_ids``, right-padded batches of ``batch_size`` with an attention
    mask and explicit position ids (0, 1, ... per row), so the result does not depend on how samples are batched.
    One 1-D tensor per completion, of length ``len(completion_ids)`` (empty for an empty completion). These are the
    model's raw probabilities (temperature 1), whatever the completions were sampled with.

    The output embedding (the LM head, a vocabulary-wide matmul) runs only on the positions that predict a completion
    token, not on the prompt's (``_response_logits``).
    """
    import torch

    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    device = model_device(model)
    was_training = model.training
    results: list[torch.Tensor] = []
    try:
        model.eval()
        with torch.no_grad():
            for start in range(0, len(completions), batch_size):
                results += _batch_logprobs(model, completions[start : start + batch_size], device)
    finally:
        model.train(was_training)
    return results


def _batch_logprobs(model, chunk: list[Completion], device) -> list[torch.Tensor]:
    import torch

    if any(c.completion_ids and not c.prompt_ids for c in chunk):
        raise ValueError("a completion without prompt tokens has no logit for its first token")
    lengths = [len(c.completion_ids) for c in chunk]
    if not any(lengths):
        return [torch.zeros(0, dtype=torch.float32) for _ in chunk]
    sequences = [c.prompt_ids + c.completion_ids for c in chunk]
    width = max(len(s) for s in sequences)
    input_ids = torch.zeros(len(chunk), width, dtype=torch.long)
    mask = torch.zeros(len(chunk), width, dtype=torch.long)
    keep = torch.zeros(len(chunk), width, dtype=torch.bool)
    for row, (c, seq) in enumerate(zip(chunk, sequences)):
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
        # logits at position t predict token t + 1
        keep[row, len(c.prompt_ids) - 1 : len(seq) - 1] = True
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = _response_logits(model, input_ids.to(device), mask.to(device), positions.to(device), keep.to(device))
    targets = torch.tensor([t for c in chunk for t in c.completion_ids], dtype=torch.long, device=logits.device)
    picked = logits.float().log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1).cpu()
    return list(picked.split(lengths))


def _response_logits(model, input_ids, attention_mask, position_ids, keep) -> torch.Tensor:
    """The logits at the ``True`` positions of the boolean (batch, length) mask ``keep``, row by row: (kept, vocab).

    The decoder runs over every position; the LM head only over the kept ones, through transformers'
    ``logits_to_keep`` (a boolean mask slices the hidden states before the head; a peft model passes it through).
    A model whose forward does not take such a mask gets the full logits, indexed afterwards: the same numbers."""
    if _keeps_logits_by_mask(model):
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                       use_cache=False, logits_to_keep=keep).logits
        if logits.dim() == 2 and logits.shape[0] == int(keep.sum()):
            return logits
        raise RuntimeError(f"logits_to_keep with a boolean mask gave logits of shape {tuple(logits.shape)}")
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   use_cache=False).logits
    return logits[keep]


def _keeps_logits_by_mask(model) -> bool:
    """Whether the (unwrapped) model's forward slices its hidden states with transformers' ``slice_logits_to_keep``,
    which takes a boolean mask (most causal LMs of transformers 5; a few still take only an int or 1-D indices)."""
    import inspect
    import sys

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    module = sys.modules.get(type(base).__module__)
    return ("logits_to_keep" in inspect.signature(base.forward).parameters
            and getattr(module, "slice_logits_to_keep", None) is not None)

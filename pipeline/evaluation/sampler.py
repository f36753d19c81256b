"""The decode loop behind ``generate``: a KV cache, one random stream per row, finished rows out of the batch.

transformers' ``generate`` draws every row's token from one random stream, so a row's sample depends on which rows
share its batch; it keeps decoding rows that have finished until every row has; and it prefills a prompt once per
copy. Here each row draws from its own generator, seeded from its index in the caller's list (``row_seed``): the
same prompt at the same index gives the same completion whatever the batch size, the order of batches or the number
of processes. A row that has ended leaves the batch (its cache rows too), and rows with the same prompt share one
prefill. The logits are the model's own, processed by transformers' temperature, top-k and top-p warpers; the token
is drawn by inverse transform sampling (one uniform number a row), an exact draw from the processed distribution.

torch and transformers are imported inside the functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .settings import SamplingSettings

if TYPE_CHECKING:
    import torch

_MIX = 0x9E3779B97F4A7C15  # 2^64 / golden ratio: spreads consecutive (seed, index) pairs over the seed space


def model_device(model):
    """The device of the model's weights (the CPU for a model without any)."""
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        import torch

        return torch.device("cpu")


def row_seed(seed: int, index: int) -> int:
    """The seed of the random stream of row ``index`` of a call seeded with ``seed``."""
    return (seed * _MIX + index * 0xBF58476D1CE4E5B9 + 1) % (2**63 - 1)


def draw(probs: torch.Tensor, generators: list) -> torch.Tensor:
    """One token a row from ``probs`` [rows, vocab] (each row sums to 1, up to rounding): the first token whose
    cumulative probability exceeds the row's uniform number times the row's total. A token of probability 0 is never
    drawn."""
    import torch

    uniform = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in generators])
    cumulative = probs.double().cumsum(-1)
    target = (uniform * cumulative[:, -1]).unsqueeze(-1)
    return torch.searchsorted(cumulative, target, right=True).squeeze(-1).clamp(max=probs.shape[-1] - 1)


def _warpers(settings: SamplingSettings):
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    warpers = LogitsProcessorList()
    if settings.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(settings.temperature))
    if settings.top_k:
        warpers.append(TopKLogitsWarper(settings.top_k))
    if settings.top_p < 1.0:
        warpers.append(TopPLogitsWarper(settings.top_p))
    return warpers


def _cache_keyword(model) -> str:
    """The keyword the model's forward takes its KV cache by: transformers 5.25 renamed ``past_key_values`` to
    ``cache`` (the old name warns, and goes in 5.40); models written for older versions still take the old one."""
    import inspect

    inner = getattr(model, "module", model)  # DDP / DeepSpeed engines
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner  # peft
    return "cache" if "cache" in inspect.signature(type(inner).forward).parameters else "past_key_values"


def _zero3_world() -> bool:
    """Whether this process is one of several under DeepSpeed ZeRO-3: every forward then needs every process (each
    holds a shard of the weights), so all keep stepping until the last row of any process has ended."""
    try:
        from transformers.integrations import is_deepspeed_zero3_enabled
    except ImportError:  # pragma: no cover - transformers without the integration
        return False
    import torch.distributed as dist

    return is_deepspeed_zero3_enabled() and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def sample(model, prompts: list[list[int]], settings: SamplingSettings, seeds: list[int], eos_ids: set[int],
           pad_id: int) -> tuple[list[list[int]], list[list[float]]]:
    """The completion token ids of each prompt (token ids, no padding), up to and including an end-of-sequence token
    or ``max_new_tokens`` of them, and the model's log-probability of each (its own distribution, before
    temperature, top-k and top-p: what a teacher-forced pass computes); row i draws from a generator seeded with
    ``seeds[i]``. The model runs in its current mode; call it under ``torch.no_grad``."""
    import torch
    from transformers import DynamicCache

    if not prompts:
        return [], []
    device = model_device(model)
    unique: dict[tuple[int, ...], int] = {}
    source = torch.tensor([unique.setdefault(tuple(p), len(unique)) for p in prompts], device=device)
    firsts = list(unique)
    width = max(len(p) for p in firsts)
    input_ids = torch.full((len(firsts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for row, ids in enumerate(firsts):  # left padding: every prompt ends in the last column
        input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        mask[row, width - len(ids):] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=getattr(model, "config", None))
    with_cache = {_cache_keyword(model): cache}
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, **with_cache,
                   use_cache=True, logits_to_keep=1).logits[:, -1]
    if len(firsts) != len(prompts):  # each copy of a prompt continues from the one prefill
        cache.batch_select_indices(source)
    logits, mask, next_position = logits[source], mask[source], positions[source, -1] + 1

    warpers = _warpers(settings)
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=device)
    outputs: list[list[int]] = [[] for _ in prompts]
    logprobs: list[list[float]] = [[] for _ in prompts]
    active = torch.arange(len(prompts), device=device)  # the caller's row index of each row of the batch
    synced = _zero3_world()
    for step in range(settings.max_new_tokens):
        if len(active):
            scores = warpers(None, logits.float())
            tokens = draw(torch.softmax(scores, -1), [generators[i] for i in active.tolist()]).to(device) \
                if settings.do_sample else scores.argmax(-1)
            chosen = torch.log_softmax(logits.float(), -1).gather(-1, tokens[:, None]).squeeze(-1)
            for row, token, logprob in zip(active.tolist(), tokens.tolist(), chosen.tolist()):
                outputs[row].append(token)
                logprobs[row].append(logprob)
            running = ~torch.isin(tokens, eos)
        last = step == settings.max_new_tokens - 1
        if len(active) and not running.all() and not last:  # ended rows leave the batch, and their cache rows
            keep = running.nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            active, tokens, mask, next_position = active[keep], tokens[keep], mask[keep], next_position[keep]
        if last or not _any_running(len(active) > 0, synced):
            break
        if not len(active):  # ZeRO-3: this process is done, the others are not; its forwards keep them going
            model(input_ids=torch.full((1, 1), pad_id, device=device), use_cache=False, logits_to_keep=1)
            continue
        mask = torch.cat([mask, mask.new_ones(len(active), 1)], dim=-1)
        logits = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=next_position[:, None],
                       **with_cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        next_position = next_position + 1
    return outputs, logprobs


def _any_running(local: bool, synced: bool) -> bool:
    if not synced:
        return local
    import torch
    import torch.distributed as dist

    flag = torch.tensor([1.0 if local else 0.0])
    if dist.get_backend() == "nccl":
        flag = flag.cuda()
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())

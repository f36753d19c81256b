"""Rollout tensors and the prompt schedule of a PPO run."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from pipeline.evaluation.generation import Completion


@dataclass
class Rollout:
    """A batch of prompt + response token sequences: prompts left-padded, responses right-padded, so every response
    starts at the same column and the response columns are the last ones."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    response_ids: torch.Tensor
    """[batch, response width]; padding after the end."""
    response_mask: torch.Tensor
    """[batch, response width]; 1 on real response tokens."""

    @classmethod
    def pack(cls, completions: list[Completion], pad_id: int, device) -> "Rollout":
        prompt_width = max(len(c.prompt_ids) for c in completions)
        response_width = max(1, max(len(c.completion_ids) for c in completions))
        rows = len(completions)
        input_ids = torch.full((rows, prompt_width + response_width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for row, c in enumerate(completions):
            p, n = len(c.prompt_ids), len(c.completion_ids)
            input_ids[row, prompt_width - p : prompt_width] = torch.tensor(c.prompt_ids)
            input_ids[row, prompt_width : prompt_width + n] = torch.tensor(c.completion_ids, dtype=torch.long)
            mask[row, prompt_width - p : prompt_width + n] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        response_mask = mask[:, prompt_width:].clone()
        return cls(input_ids.to(device), mask.to(device), positions.to(device),
                   input_ids[:, prompt_width:].to(device), response_mask.to(device))

    def with_suffixes(self, suffixes: list[list[int] | None], pad_id: int) -> "Extended":
        """The rows with each row's ``suffix`` tokens right after its response (in its padding, the batch widened
        where a row has too little), attended to and positioned as the continuation of the row; a None suffix adds
        nothing. The columns of the rollout itself stay where they are, so under a causal mask every position of
        it computes what it computes without the suffixes."""
        rows, width = self.input_ids.shape
        ends = width - self.response_mask.shape[1] + self.response_mask.sum(-1)  # one past each row's last token
        extra = [len(s or ()) for s in suffixes]
        wide = max(width, max(int(e) + n for e, n in zip(ends.tolist(), extra)))
        input_ids = torch.full((rows, wide), pad_id, dtype=self.input_ids.dtype, device=self.input_ids.device)
        mask = torch.zeros_like(input_ids, dtype=self.attention_mask.dtype)
        positions = torch.zeros_like(input_ids, dtype=self.position_ids.dtype)
        input_ids[:, :width], mask[:, :width], positions[:, :width] = \
            self.input_ids, self.attention_mask, self.position_ids
        last = torch.full((rows,), -1, dtype=torch.long)
        for row, (suffix, end) in enumerate(zip(suffixes, ends.tolist())):
            if suffix is None:
                continue
            count = len(suffix)
            if count:
                input_ids[row, end : end + count] = torch.tensor(suffix, dtype=input_ids.dtype)
                mask[row, end : end + count] = 1
                positions[row, end : end + count] = self.position_ids[row, end - 1] + 1 + torch.arange(count)
            last[row] = end + count - 1
        return Extended(input_ids, mask, positions, last.to(self.input_ids.device), width)

    def columns(self, index: torch.Tensor) -> tuple[int, int, int]:
        """(first, cut, response columns kept) of ``select(index)``: the column range of the selected rows with the
        columns that are padding in every one of them cut away."""
        mask = self.attention_mask[index]
        width = self.response_mask.shape[1]
        keep_response = max(1, int(self.response_mask[index].sum(-1).max().item()))
        first = int(mask.float().argmax(-1).min().item())  # leftmost real token of any selected row
        return first, self.input_ids.shape[1] - width + keep_response, keep_response

    def select(self, index: torch.Tensor) -> "Rollout":
        """Rows ``index``, with columns that are padding in every selected row cut away (less compute)."""
        first, cut, keep_response = self.columns(index)
        return Rollout(self.input_ids[index][:, first:cut], self.attention_mask[index][:, first:cut],
                       self.position_ids[index][:, first:cut], self.response_ids[index][:, :keep_response],
                       self.response_mask[index][:, :keep_response])


@dataclass
class Extended:
    """A rollout micro-batch with tokens appended after each response (``Rollout.with_suffixes``)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    last: torch.Tensor
    """[batch] the column of each row's final token, suffix included (-1 for a row given no suffix)."""
    width: int
    """The rollout's own width: its columns are the first ``width``."""


def prompt_schedule(count: int, step: int, per_step: int, seed: int) -> list[int]:
    """Indices of the prompts of global PPO step ``step`` (0-based): an endless stream of seeded permutations of all
    prompts, cut into consecutive blocks. A function of the step alone, so a resumed run sees the same prompts."""
    start = step * per_step
    indices: list[int] = []
    epoch = start // count
    offset = start % count
    while len(indices) < per_step:
        order = list(range(count))
        random.Random(seed + epoch).shuffle(order)
        indices += order[offset:]
        epoch, offset = epoch + 1, 0
    return indices[:per_step]

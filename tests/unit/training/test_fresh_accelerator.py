"""A hand-written loop's Accelerator starts from a clean gradient-accumulation state: a dataloader an earlier stage
left registered mid-iteration (a run stopped by an exception) must not make every micro-batch an optimizer step."""

from __future__ import annotations

import torch

from pipeline.training.distributed import fresh_accelerator


class _StoppedDataloader:
    end_of_dataloader = True


def test_accumulation_is_in_phase_after_a_dataloader_was_left_behind():
    from accelerate.state import GradientState

    stale = _StoppedDataloader()  # kept alive, as the stopped trainer holding it is (accelerate keeps a weakref)
    GradientState()._add_dataloader(stale)  # what an interrupted trainer leaves registered
    accelerator = fresh_accelerator(gradient_accumulation_steps=2)
    model = accelerator.prepare(torch.nn.Linear(2, 1))
    synced = []
    for _ in range(4):
        with accelerator.accumulate(model):
            synced.append(accelerator.sync_gradients)
    assert synced == [False, True, False, True]
    del stale

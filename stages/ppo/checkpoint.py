"""Resumable PPO checkpoints: trainable weights, optimizer, RNG per process and the loop's own state, written to a
temporary folder and renamed, so a kill at any moment leaves either the previous checkpoint or the new one."""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path

import torch

from pipeline.errors import PipelineError
from pipeline.store.atomic import write_json
from pipeline.training.distributed import uses_deepspeed

log = logging.getLogger("pipeline")

PREFIX = "checkpoint-"
STATE = "state.json"
EXTRA = "extra.safetensors"
"""Tensors of the loop's own state beside its weights (kl.guard's last policy inside the band)."""


def _trainable_state(accelerator, model) -> dict[str, torch.Tensor]:
    unwrapped = accelerator.unwrap_model(model)
    return {name: p.detach().cpu().contiguous() for name, p in unwrapped.named_parameters() if p.requires_grad}


def save_checkpoint(accelerator, model, optimizer, work_dir: Path, step: int, state: dict,
                    tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Write checkpoint-<step> (collective: every process calls it) and remove older ones; ``tensors``, the loop's
    own, go to extra.safetensors."""
    from safetensors.torch import save_file

    final = work_dir / f"{PREFIX}{step}"
    tmp = work_dir / f".tmp-{PREFIX}{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    if uses_deepspeed(accelerator):
        accelerator.save_state(str(tmp))  # sharded optimizer state: every rank writes its part
    elif accelerator.is_main_process:
        save_file(_trainable_state(accelerator, model), str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save({"python": random.getstate(), "torch": torch.get_rng_state()},
               tmp / f"rng_{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if tensors:
            save_file(tensors, str(tmp / EXTRA))
        write_json(tmp / STATE, state)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in work_dir.glob(f"{PREFIX}*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def load_checkpoint(accelerator, model, optimizer, work_dir: Path, stage: str
                    ) -> tuple[dict, dict[str, torch.Tensor]] | None:
    """Restore the newest complete checkpoint into model, optimizer and RNG; returns the loop state and tensors
    saved with it (None when there is none)."""
    from safetensors.torch import load_file

    found = sorted((p for p in work_dir.glob(f"{PREFIX}*") if (p / STATE).exists()),
                   key=lambda p: int(p.name[len(PREFIX):]))
    if not found:
        return None
    folder = found[-1]
    if accelerator.is_main_process:
        log.info("[%s] resuming from %s", stage, folder)
    if uses_deepspeed(accelerator):
        accelerator.load_state(str(folder))
    else:
        unwrapped = accelerator.unwrap_model(model)
        missing = unwrapped.load_state_dict(load_file(str(folder / "trainable.safetensors")), strict=False)
        if missing.unexpected_keys:
            raise PipelineError(f"{folder}: checkpoint does not match this model ({missing.unexpected_keys[:3]})")
        optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    rng_file = folder / f"rng_{accelerator.process_index}.pt"
    if rng_file.exists():
        rng = torch.load(rng_file, weights_only=True)
        random.setstate(rng["python"])
        torch.set_rng_state(rng["torch"])
    tensors = load_file(str(folder / EXTRA)) if (folder / EXTRA).exists() else {}
    return json.loads((folder / STATE).read_text()), tensors

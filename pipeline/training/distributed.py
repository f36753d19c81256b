"""The process group of a job: accelerate's state created once, right for CPU (gloo) and DeepSpeed, and left in step
at the end."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import MachineError


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def world_size() -> int:
    """Processes in this job, from the launcher's environment (1 when not launched by accelerate/torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


STALE_BUILD_LOCK_S = 600
"""Age past which a build lock of torch's extension cache is a dead build's: compiling an op takes about a minute."""


def extensions_cache() -> Path:
    """Where torch (for DeepSpeed) compiles and caches C++ ops."""
    return Path(os.environ.get("TORCH_EXTENSIONS_DIR", Path.home() / ".cache" / "torch_extensions"))


def uses_deepspeed_launch() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def refuse_stale_build_locks() -> None:
    """DeepSpeed compiles its ops under a lock file that torch removes when the build ends; a build killed midway
    leaves it, and every later DeepSpeed run then waits on it without a word, forever. Refuse to start instead."""
    import time

    if not uses_deepspeed_launch():
        return
    now = time.time()
    for lock in sorted(extensions_cache().glob("*/*/lock")):
        age = now - lock.stat().st_mtime
        if age > STALE_BUILD_LOCK_S:
            raise MachineError(f"{lock}: a DeepSpeed op build that stopped {age / 60:.0f} min ago left this lock, and "
                               "DeepSpeed would wait on it forever; delete it (no build takes that long) and run again")


def distributed_state():
    """accelerate's process state, created the way transformers' Trainer would create it for these settings.

    The state is a process-wide singleton: whoever creates it first fixes the backend, so the runner creates it
    here, before any trainer, with gloo on CPU (the only backend that works there). DeepSpeed's communication layer,
    started here, compiles its op the first time (the runner refuses a dead build's lock before the first call).
    """
    from accelerate import PartialState

    cpu = not on_gpu()
    if cpu:  # what DeepSpeed would pick anyway, without its "unable to detect" notice on stdout
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    state = PartialState(cpu=cpu, backend="gloo" if cpu and world_size() > 1 else None)
    if cpu and uses_deepspeed_launch():
        # accelerate only starts DeepSpeed's communication layer off the CPU; DeepSpeed code that runs before an
        # engine exists (ZeRO-3's zero.Init, used by TRL to load reference models) would otherwise see one process.
        import deepspeed.comm as ds_comm

        if not ds_comm.is_initialized():
            ds_comm.init_distributed(dist_backend="gloo", auto_mpi_discovery=False, verbose=False)
    return state


def shutdown_distributed() -> None:
    """Leave the process group in step with the other ranks. A rank that exits while others still use the group can
    abort ("terminate called without an active exception"), turning a finished run into a failed launch."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def forget_deepspeed_config() -> None:
    """Drop the DeepSpeed config an earlier stage's trainer registered with transformers in this process.

    Left in place, a ZeRO-3 config makes every later ``from_pretrained`` partition the weights as they load
    (zero.Init, a collective): a main-process-only load (sampling preferences, gold evaluation) then waits forever for
    the other ranks, and merging upstream adapters fails on the partitioned weights. Stages load models whole; the
    trainer's DeepSpeed engine partitions them when it prepares the model."""
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()


def announce_deepspeed_build(log) -> None:
    """DeepSpeed compiles its CPU communication op the first time it runs on a machine (about 45 s on 2 cores, then
    cached); say so instead of appearing to hang."""
    if not uses_deepspeed_launch() or on_gpu():
        return
    cache = extensions_cache()
    if not any(cache.glob("*/deepspeed_shm_comm*")):
        log.warning("DeepSpeed will now compile its CPU communication op (about a minute, once per machine; cached "
                    "in %s)", cache)


def fresh_accelerator(**kwargs):
    """An ``Accelerator`` for a hand-written training loop (PPO), with this stage's settings.

    accelerate keeps one process-wide state whose mixed-precision settings the first Accelerator (an earlier stage's
    Trainer) fixes; it is reset first, keeping the process group, as transformers' own Trainer does, and so is the
    gradient-accumulation state. Under a DeepSpeed launch the Accelerator must not be told cpu=True (accelerate would
    then drop DeepSpeed); on a CPU-only machine it runs on the CPU over the gloo group ``distributed_state`` created
    anyway."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    # The gradient-accumulation state is process-wide too: a dataloader an earlier stage left mid-iteration (a run
    # stopped by an exception) stays registered there, and its end_of_dataloader would make every micro-batch of
    # this loop an optimizer step.
    GradientState._reset_state()
    return Accelerator(cpu=not on_gpu() and not uses_deepspeed_launch(), **kwargs)


def uses_deepspeed(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def current_distributed_type() -> str | None:
    """How the last stage's training was distributed (NO, MULTI_CPU, MULTI_GPU, DEEPSPEED, ...), as accelerate set it
    up for that stage's trainer (None before any): a launch config that asked for DeepSpeed but did not get it shows
    here. Read from accelerate's shared state without creating one."""
    from accelerate.state import AcceleratorState

    kind = AcceleratorState._shared_state.get("distributed_type")
    return getattr(kind, "value", None)


def to_process_device(model):
    """``model`` on this process's device (its own GPU under a multi-GPU launch, else the CPU); a quantised model
    stays where bitsandbytes put it."""
    from accelerate import PartialState

    if getattr(model, "is_quantized", False) or getattr(model, "hf_quantizer", None) is not None:
        return model
    return model.to(PartialState().device)


def uncount_accumulation_step(accelerator) -> None:
    """Undo ``accelerator.accumulate()``'s count of a micro-batch that was left before its backward pass (PPO's
    kl.guard ends a step there), so that the next step's accumulation cycles start in phase. accelerate keeps that
    count in ``accelerator.step`` and has no public way to take one back."""
    accelerator.step -= 1

"""What every trainer-based stage shares: device-aware TrainingArguments, LoRA configs, user callbacks."""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path

from .errors import PipelineError
from .schema import LoraSettings, TrainSettings


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def world_size() -> int:
    """Processes in this job, from the launcher's environment (1 when not launched by accelerate/torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def distributed_state():
    """accelerate's process state, created the way transformers' Trainer would create it for these settings.

    The state is a process-wide singleton: whoever creates it first fixes the backend, so the runner creates it
    here, before any trainer, with gloo on CPU (the only backend that works there).
    """
    from accelerate import PartialState

    cpu = not on_gpu()
    state = PartialState(cpu=cpu, backend="gloo" if cpu and world_size() > 1 else None)
    if cpu and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
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
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true" or on_gpu():
        return
    cache = Path(os.environ.get("TORCH_EXTENSIONS_DIR", Path.home() / ".cache" / "torch_extensions"))
    if not any(cache.glob("*/deepspeed_shm_comm*")):
        log.warning("DeepSpeed will now compile its CPU communication op (about a minute, once per machine; cached "
                    "in %s)", cache)


def precision_flags(precision: str) -> dict:
    """bf16/fp16 flags for TrainingArguments. TRL defaults to bf16=True, which fails on CPU, so always say."""
    import torch

    if precision == "auto":
        precision = "bf16" if on_gpu() and torch.cuda.is_bf16_supported() else "fp32"
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def trainer_kwargs(train: TrainSettings, work_dir: Path, seed: int, has_eval: bool) -> dict:
    """Keyword arguments common to every TRL config (SFTConfig, RewardConfig, DPOConfig, ...)."""
    cpu = not on_gpu()
    kwargs = dict(
        output_dir=str(work_dir),
        max_steps=train.max_steps,
        num_train_epochs=train.epochs,
        learning_rate=train.learning_rate,
        lr_scheduler_type=train.lr_scheduler,
        warmup_steps=train.warmup_ratio,  # a float in [0, 1) is read as a ratio of the total steps
        weight_decay=train.weight_decay,
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=train.batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        max_grad_norm=train.max_grad_norm,
        optim=train.optim,
        # Checkpointing costs compute and only pays off when GPU memory is short; on CPU it is pure slowdown.
        gradient_checkpointing=train.gradient_checkpointing if train.gradient_checkpointing is not None else not cpu,
        logging_steps=train.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=train.save_steps,
        save_total_limit=1,
        eval_strategy=("steps" if train.eval_steps else "no") if has_eval else "no",
        eval_steps=train.eval_steps,
        seed=seed,
        data_seed=seed,
        report_to="none",
        # Without use_cpu, several CPU processes would run independent trainings instead of one gloo DDP run.
        use_cpu=cpu,
        ddp_backend="gloo" if cpu and world_size() > 1 else None,
        dataloader_num_workers=0,
        **precision_flags(train.precision),
    )
    return kwargs


def lora_config(lora: LoraSettings, task_type: str = "CAUSAL_LM", modules_to_save: list[str] | None = None,
                model=None):
    """peft's LoraConfig for these settings. ``model`` is needed with ``lora.layers``: it gives the layer count and,
    for target_modules "all-linear" (which peft refuses together with layers_to_transform), the linear layers'
    names inside the transformer blocks."""
    from peft import LoraConfig

    layers, targets = None, lora.target_modules
    if lora.layers is not None:
        import torch

        count = model.config.num_hidden_layers
        layers = sorted({i % count if i < 0 else i for i in lora.layers})
        if max(layers) >= count or min(lora.layers) < -count:
            raise PipelineError(f"lora.layers: the model has {count} layers (0..{count - 1}); got {lora.layers}")
        if targets == "all-linear":
            targets = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                              if isinstance(module, torch.nn.Linear) and re.search(r"\.layers\.\d+\.", name)})
    return LoraConfig(
        layers_to_transform=layers,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        task_type=task_type,
        modules_to_save=modules_to_save,
    )


def load_callbacks(names: list[str]) -> list:
    """Instantiate user TrainerCallback classes named "module:ClassName"."""
    callbacks = []
    for name in names:
        module_name, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise PipelineError(f"train.callbacks: cannot import '{name}': {exc}") from None
        callbacks.append(cls())
    return callbacks


def train_and_measure(ctx, trainer, train_size: int, unit: str, eval_size: int | None = None) -> dict:
    """Train (resuming from a checkpoint if one exists), evaluate, save the log; return the stage's metrics.

    TRL drops examples in preprocessing (too long for max_length, or no completion token left); the count is
    reported as ``train_<unit>_skipped`` and warned about, so nothing is lost silently.
    """
    import logging

    from .artifacts import write_log_history

    skipped = train_size - len(trainer.train_dataset)
    if skipped and ctx.is_main:
        logging.getLogger("pipeline").warning(
            "[%s] %d of %d training %s were dropped by TRL's preprocessing (longer than max_length, or no "
            "completion token left); raise max_length to keep them", ctx.name, skipped, train_size, unit)
    result = trainer.train(resume_from_checkpoint=ctx.resume_checkpoint())
    metrics = {"train_loss": result.training_loss, "global_step": result.global_step, f"train_{unit}": train_size,
               f"train_{unit}_skipped": skipped,
               **{k: v for k, v in result.metrics.items() if k.startswith("train_") or k == "epoch"}}
    if eval_size:
        metrics.update(trainer.evaluate())
        metrics[f"eval_{unit}"] = eval_size
    write_log_history(ctx, trainer.state.log_history)
    return metrics

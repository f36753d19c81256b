"""What every trainer-based stage shares: device-aware TrainingArguments, LoRA configs, user callbacks, and the
train-measure step around a TRL trainer (``train_with_trl``)."""

from __future__ import annotations

import importlib
import logging
import math
import re
from pathlib import Path

from ..config.schema import LoraSettings, TrainSettings
from ..errors import PipelineError, TrainingDiverged
from .distributed import on_gpu, world_size

log = logging.getLogger("pipeline")


def precision_flags(precision: str, model_dtype: str) -> dict:
    """bf16/fp16 flags for TrainingArguments. TRL defaults to bf16=True, which fails on CPU, so always say.
    auto: bf16 on a GPU that supports it; on a CPU, the weights' own dtype (bf16 compute only where the recipe's
    dtype made the weights bf16, which ``dtype: auto`` does where bf16 is native)."""
    import torch

    from ..models.loading import resolved_dtype

    if precision == "auto":
        if on_gpu():
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        else:
            precision = "bf16" if resolved_dtype(model_dtype) == "bfloat16" else "fp32"
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def trainer_kwargs(train: TrainSettings, work_dir: Path, seed: int, has_eval: bool, model_dtype: str) -> dict:
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
        # a NaN loss must show in the log (transformers would replace it by the running mean); GuardCallback stops
        logging_nan_inf_filter=False,
        seed=seed,
        data_seed=seed,
        report_to="none",
        # Without use_cpu, several CPU processes would run independent trainings instead of one gloo DDP run.
        use_cpu=cpu,
        ddp_backend="gloo" if cpu and world_size() > 1 else None,
        dataloader_num_workers=0,
        disable_tqdm=False,  # otherwise it follows transformers' log level, and prints every log dict instead
        **precision_flags(train.precision, model_dtype),
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


def guard_callback(ctx):
    """The callback every TRL stage trains with: stops at the first non-finite gradient or logged loss (naming the
    step), and marks each checkpoint complete once the trainer has written all of it."""
    import torch
    from transformers import TrainerCallback

    from .checkpoints import mark_complete

    def diverged(step: int, what: str) -> TrainingDiverged:
        return TrainingDiverged(
            f"stage '{ctx.name}': training diverged at step {step}: {what}. Nothing was saved; the last good "
            f"checkpoint (if any) is kept in {ctx.work_dir}. Lower the learning rate, or check the data and model")

    class Guard(TrainerCallback):
        trainer = None
        """Set by train_with_trl: the trainer whose counters a resume must restore."""
        resumed = False

        def on_step_begin(self, args, state, control, **kwargs):
            if not self.resumed and state.global_step > 0:
                # TRL counts the tokens trained on (`num_tokens` in logs and metrics) in an attribute no checkpoint
                # keeps: after a resume it would restart from 0. Take it up where the log left it.
                if hasattr(self.trainer, "_total_train_tokens"):
                    logged = [row["num_tokens"] for row in state.log_history if "num_tokens" in row]
                    if logged and not self.trainer._total_train_tokens:
                        self.trainer._total_train_tokens = logged[-1]
                if state.is_world_process_zero:
                    live_log_resumed_at(ctx, state.global_step)
            self.resumed = True

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            if model is None:
                return
            for name, param in model.named_parameters():
                if param.grad is not None and not torch.isfinite(param.grad).all():
                    raise diverged(state.global_step + 1, f"the gradient of {name} holds NaN or inf")

        def on_log(self, args, state, control, logs=None, **kwargs):
            for key in ("loss", "grad_norm"):
                value = (logs or {}).get(key)
                if isinstance(value, (int, float)) and not math.isfinite(value):
                    raise diverged(state.global_step, f"{key} is {value}")
            if state.is_world_process_zero and logs:
                append_live_log(ctx, {**logs, "step": state.global_step})

        def on_save(self, args, state, control, **kwargs):
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.barrier()  # every rank has written its part (DeepSpeed shards)
            if state.is_world_process_zero:
                mark_complete(Path(args.output_dir) / f"checkpoint-{state.global_step}")

    return Guard()


LIVE_LOG = "log_history.jsonl"


def append_live_log(ctx, row: dict) -> None:
    """One logged step, appended to <work dir>/log_history.jsonl as it happens: a running or crashed stage can be
    read there (the committed artifact gets a copy)."""
    import json

    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    with (ctx.work_dir / LIVE_LOG).open("a") as handle:
        handle.write(json.dumps(row, default=float) + "\n")


def live_log_resumed_at(ctx, step: int) -> None:
    """A resumed run logs again from the checkpoint on: drop the rows the killed run logged after it."""
    import json

    path = ctx.work_dir / LIVE_LOG
    if not path.is_file():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in rows if json.loads(line).get("step", 0) <= step]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(path)


def tracker_run_name(ctx) -> str:
    """One tracker run per stage variant, named after it."""
    return f"{ctx.name}-{ctx.fingerprint[:12]}"


def _tracking_root(ctx) -> Path:
    return Path(ctx.output_dir if ctx.output_dir is not None else ctx.final_dir.parent)


def tensorboard_dir(ctx) -> Path:
    """Where a stage variant's TensorBoard event files go: <output_dir>/tensorboard/<stage>-<fingerprint>/."""
    return _tracking_root(ctx) / "tensorboard" / tracker_run_name(ctx)


def tracking(ctx, train: TrainSettings) -> dict:
    """TrainingArguments for the trackers of ``train.report_to``: one run per stage variant, named after it;
    TensorBoard's event files in ``tensorboard_dir``. The trackers' libraries read their folders from environment
    variables (transformers' TensorBoard callback has no other way in), so those are set here."""
    import os

    if not train.report_to:
        return {"report_to": "none"}
    name = tracker_run_name(ctx)
    root = _tracking_root(ctx)
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(tensorboard_dir(ctx))
    os.environ.setdefault("WANDB_DIR", str(root))
    os.environ.setdefault("WANDB_PROJECT", ctx.recipe.name)
    os.environ.setdefault("MLFLOW_EXPERIMENT_NAME", ctx.recipe.name)
    os.environ.setdefault("MLFLOW_TRACKING_URI", (Path(root) / "mlruns").absolute().as_uri())
    return {"report_to": list(train.report_to), "run_name": name}


def quiet_progress(stage: str):
    """transformers' progress bars named by ``stage``, without the per-step dictionaries (the loss goes to the bar
    instead; the whole log is in log_history.jsonl)."""
    from transformers.trainer_callback import ProgressCallback

    class QuietProgress(ProgressCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            super().on_train_begin(args, state, control, **kwargs)
            if self.training_bar is not None:
                self.training_bar.set_description(f"{stage}: training")
                self.training_bar.unit = "step"

        def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
            fresh = self.prediction_bar is None
            super().on_prediction_step(args, state, control, eval_dataloader=eval_dataloader, **kwargs)
            if fresh and self.prediction_bar is not None:
                self.prediction_bar.set_description(f"{stage}: evaluating")
                self.prediction_bar.unit = "batch"

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and self.training_bar is not None and logs and "loss" in logs:
                self.training_bar.set_postfix(loss=f"{logs['loss']:.4g}")

    return QuietProgress


def mean_logged_loss(history: list[dict]) -> float | None:
    """The training loss over every step, from the per-step log: each logged loss weighted by the steps it
    averages. A resumed run's log is the uninterrupted run's, so both report the same figure (transformers' own
    train_loss covers only the steps since the resume)."""
    total, steps, previous = 0.0, 0, 0
    for row in history:
        if "loss" in row and "step" in row and isinstance(row["loss"], (int, float)):
            window = row["step"] - previous
            total += row["loss"] * window
            steps += window
            previous = row["step"]
    return total / steps if steps else None


def train_and_measure(ctx, trainer, train_size: int, unit: str, eval_size: int | None = None) -> dict:
    """Train (resuming from a checkpoint if one exists), evaluate, save the log; return the stage's metrics.

    TRL drops examples in preprocessing (too long for max_length, or no completion token left); the count is
    reported as ``train_<unit>_skipped`` and warned about, so nothing is lost silently.
    """
    skipped = train_size - len(trainer.train_dataset)
    if skipped and ctx.is_main:
        log.warning(
            "[%s] %d of %d training %s were dropped by TRL's preprocessing (longer than max_length, or no "
            "completion token left); raise max_length to keep them", ctx.name, skipped, train_size, unit)
    result = trainer.train(resume_from_checkpoint=ctx.resume_checkpoint())
    logged_loss = mean_logged_loss(trainer.state.log_history)
    metrics = {"train_loss": logged_loss if logged_loss is not None else result.training_loss,
               "global_step": result.global_step, f"train_{unit}": train_size,
               f"train_{unit}_skipped": skipped,
               **{k: v for k, v in result.metrics.items()
                  if (k.startswith("train_") and k != "train_loss") or k == "epoch"}}
    if eval_size:
        metrics.update(trainer.evaluate())
        metrics[f"eval_{unit}"] = eval_size
    ctx.write_log_history(trainer.state.log_history)
    return metrics


def train_with_trl(ctx, trainer_class, config_class, *, train: TrainSettings, model, tokenizer, train_dataset,
                   unit: str, eval_dataset=None, evaluate_at_end: bool = True, lora: LoraSettings | None = None,
                   lora_task: str = "CAUSAL_LM", modules_to_save: list[str] | None = None,
                   method_args: dict | None = None, trainer_args: dict | None = None, prepare=None,
                   callbacks: list | None = None):
    """The skeleton every TRL-trainer stage shares: TrainingArguments from ``train`` (device-aware), the method's own
    config fields (``method_args``), LoRA from ``lora`` (None: full fine-tuning), the stage's ``callbacks`` (before
    the divergence guard, which writes the live log) and the user's; then train (resuming from a checkpoint), measure
    and save the log. ``prepare(trainer)`` runs before training.
    Returns (trainer, metrics); the stage saves what it produced."""
    args = config_class(**{**trainer_kwargs(train, ctx.work_dir, ctx.seed, has_eval=eval_dataset is not None,
                                           model_dtype=ctx.recipe.model.run_dtype),
                           **tracking(ctx, train)}, **(method_args or {}))
    guard = guard_callback(ctx)
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=lora_config(lora, lora_task, modules_to_save, model) if lora is not None else None,
        callbacks=[*(callbacks or []), guard, *load_callbacks(train.callbacks)],
        **(trainer_args or {}),
    )
    guard.trainer = trainer
    if not logging.getLogger("pipeline").isEnabledFor(logging.DEBUG):
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        trainer.pop_callback(PrinterCallback)
        if trainer.pop_callback(ProgressCallback) is not None:
            trainer.add_callback(quiet_progress(ctx.name))
    if prepare is not None:
        prepare(trainer)
    eval_size = len(eval_dataset) if eval_dataset is not None and evaluate_at_end else None
    return trainer, train_and_measure(ctx, trainer, len(train_dataset), unit, eval_size)

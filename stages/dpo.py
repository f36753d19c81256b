"""The `dpo` stage: TRL's DPOTrainer from the upstream policy, against that policy frozen as the reference."""

from __future__ import annotations

import copy
import logging

from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from pipeline.artifacts import save_policy
from pipeline.context import StageContext
from pipeline.data import preference_splits
from pipeline.training import load_callbacks, lora_config, train_and_measure, trainer_kwargs

from .dpo_config import DPOStageConfig

log = logging.getLogger("pipeline")


def run(ctx: StageContext) -> dict:
    config: DPOStageConfig = ctx.config
    train_rows, eval_rows = preference_splits(config.data, ctx.upstream_of("preferences"), ctx.seed)
    keep = ("prompt", "chosen", "rejected")
    train_data = Dataset.from_list([{k: r[k] for k in keep} for r in train_rows])
    eval_data = Dataset.from_list([{k: r[k] for k in keep} for r in eval_rows]) if eval_rows else None
    source = ctx.policy_source()
    tokenizer, model = source.tokenizer(), source.load()
    reference = None
    if config.lora is None or config.reference == "copy":
        # Full fine-tuning: TRL would rebuild the reference from the model's hub name, which for a merged upstream
        # policy is the wrong model. An explicit frozen copy of the starting weights is the reference.
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    loss_type = config.loss_type if isinstance(config.loss_type, list) else [config.loss_type]
    args = DPOConfig(
        **trainer_kwargs(config.train, ctx.work_dir, ctx.seed, has_eval=eval_data is not None),
        max_length=config.max_length,
        beta=config.beta,
        loss_type=loss_type,
        loss_weights=config.loss_weights,
        label_smoothing=config.label_smoothing,
        precompute_ref_log_probs=config.precompute_ref_log_probs,
    )
    trainer = DPOTrainer(
        model=model,
        ref_model=reference,
        args=args,
        train_dataset=train_data,
        eval_dataset=eval_data,
        processing_class=tokenizer,
        # With LoRA the reference is the same weights with the adapter disabled: one copy in memory.
        peft_config=lora_config(config.lora, model=model) if config.lora else None,
        callbacks=load_callbacks(config.train.callbacks),
    )
    metrics = train_and_measure(ctx, trainer, len(train_data), "pairs", len(eval_data) if eval_data else None)
    model_info = save_policy(ctx, trainer, tokenizer, source, merge=config.merge)
    return {"metrics": metrics, "model": model_info}

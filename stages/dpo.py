"""The `dpo` stage: TRL's DPOTrainer from the upstream policy, against that policy frozen as the reference."""

from __future__ import annotations

import copy

from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from pipeline.artifacts.policy import save_policy
from pipeline.contract import StageContext, StageResult
from pipeline.data.loading import as_conversations, has_string_rows, preference_splits
from pipeline.training.trainer import train_with_trl

from .dpo_config import DPOStageConfig


def run(ctx: StageContext) -> StageResult:
    config: DPOStageConfig = ctx.config
    preferences = ctx.upstream_of("preferences")
    card = preferences.path / preferences.output.data_card if preferences is not None else None
    train_rows, eval_rows = preference_splits(config.data, card, ctx.seed)
    source = ctx.policy_source()
    tokenizer, model = source.tokenizer(), source.load()
    if tokenizer.chat_template and has_string_rows(train_rows):
        # rendered through the chat template, like the prompts the pipeline samples and evaluates
        train_rows, eval_rows = as_conversations(train_rows), as_conversations(eval_rows)
    keep = ("prompt", "chosen", "rejected")
    train_data = Dataset.from_list([{k: r[k] for k in keep} for r in train_rows])
    eval_data = Dataset.from_list([{k: r[k] for k in keep} for r in eval_rows]) if eval_rows else None
    reference = None
    if config.lora is None or config.reference == "copy":
        # Full fine-tuning: TRL would rebuild the reference from the model's hub name, which for a merged upstream
        # policy is the wrong model. An explicit frozen copy of the starting weights is the reference.
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    loss_type = config.loss_type if isinstance(config.loss_type, list) else [config.loss_type]
    trainer, metrics = train_with_trl(
        ctx, DPOTrainer, DPOConfig, train=config.train, model=model, tokenizer=tokenizer, train_dataset=train_data,
        eval_dataset=eval_data, unit="pairs",
        # With LoRA the reference is the same weights with the adapter disabled: one copy in memory.
        lora=config.lora,
        method_args=dict(
            max_length=config.max_length,
            beta=config.beta,
            loss_type=loss_type,
            loss_weights=config.loss_weights,
            label_smoothing=config.label_smoothing,
            precompute_ref_log_probs=config.precompute_ref_log_probs,
        ),
        trainer_args={"ref_model": reference},
    )
    return StageResult(save_policy(ctx, trainer, tokenizer, source, merge=config.merge), metrics)

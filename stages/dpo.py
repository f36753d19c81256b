"""The `dpo` stage: TRL's DPOTrainer from the upstream policy, against that policy frozen as the reference."""

from __future__ import annotations

import logging

from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from pipeline.artifacts.policy import save_policy
from pipeline.contract import StageContext, StageResult
from pipeline.data.loading import as_chat_rows
from pipeline.models.loading import frozen_copy
from pipeline.models.trunk import plan_reference_reuse
from pipeline.training.pairwise import preference_pairs
from pipeline.training.trainer import train_with_trl

from .dpo_config import DPOStageConfig

log = logging.getLogger("pipeline")


class ReferenceReusingDPOTrainer(DPOTrainer):
    """TRL's DPOTrainer whose reference pass reuses the policy pass's unadapted lower layers (pipeline/models/trunk.py):
    TRL runs the policy, then the reference, within each compute_loss."""

    reference_reuse = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.reference_reuse is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        with self.reference_reuse.pair():
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def run(ctx: StageContext) -> StageResult:
    config: DPOStageConfig = ctx.config
    pairs = preference_pairs(ctx, config)  # read (and checked) before the model is loaded
    source = ctx.policy_source()
    tokenizer, model = source.tokenizer(), source.load()
    train_rows, eval_rows = as_chat_rows(tokenizer, *pairs)
    keep = ("prompt", "chosen", "rejected")
    train_data = Dataset.from_list([{k: r[k] for k in keep} for r in train_rows])
    eval_data = Dataset.from_list([{k: r[k] for k in keep} for r in eval_rows]) if eval_rows else None
    # Full fine-tuning: TRL would rebuild the reference from the model's hub name, which for a merged upstream policy
    # is the wrong model. An explicit frozen copy of the starting weights is the reference.
    reference = frozen_copy(model) if config.explicit_reference() else None
    loss_type = config.loss_type if isinstance(config.loss_type, list) else [config.loss_type]

    def share_trunk(trainer) -> None:  # after TRL has wrapped the model in LoRA and turned dropout off
        if not config.share_trunk or config.precompute_ref_log_probs:
            return
        trainer.reference_reuse, why = plan_reference_reuse(trainer.model, reference is not None)
        if ctx.is_main:
            log.info("[%s] reference trunk reuse %s", ctx.name, why)

    trainer, metrics = train_with_trl(
        ctx, ReferenceReusingDPOTrainer, DPOConfig, train=config.train, model=model, tokenizer=tokenizer,
        train_dataset=train_data, eval_dataset=eval_data, unit="pairs",
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
        prepare=share_trunk,
    )
    if trainer.reference_reuse is not None:
        metrics["reference_passes_reused"] = trainer.reference_reuse.reused
    return StageResult(save_policy(ctx, trainer, tokenizer, source, merge=config.merge), metrics)

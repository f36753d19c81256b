"""The `kto` stage: TRL's KTOTrainer from the upstream policy, on the preference pairs unpaired into desirable and
undesirable completions, against the starting policy frozen as the reference."""

from __future__ import annotations

import logging

from datasets import Dataset
from trl import KTOConfig, KTOTrainer

from pipeline.artifacts.policy import save_policy
from pipeline.contract import StageContext, StageResult
from pipeline.data.loading import as_chat_rows
from pipeline.data.pairs import unpair
from pipeline.errors import DataError
from pipeline.models.loading import frozen_copy
from pipeline.training.pairwise import preference_pairs
from pipeline.training.trainer import train_with_trl

from .kto_config import KTOStageConfig

log = logging.getLogger("pipeline")


def run(ctx: StageContext) -> StageResult:
    config: KTOStageConfig = ctx.config
    pairs_train, pairs_eval = preference_pairs(ctx, config)
    (train_rows, unlabelled), (eval_rows, _) = unpair(pairs_train), unpair(pairs_eval)
    desirable = sum(row["label"] for row in train_rows)
    if not desirable or desirable == len(train_rows):
        raise DataError("data", f"KTO needs desirable and undesirable completions; the pairs gave {desirable} "
                        f"desirable of {len(train_rows)}")
    if ctx.is_main:
        log.info("[%s] %d labelled completions from %d pairs: %d desirable, %d undesirable (%d left out: chosen in "
                 "one pair, rejected in another)", ctx.name, len(train_rows), len(pairs_train), desirable,
                 len(train_rows) - desirable, unlabelled)
    source = ctx.policy_source()
    tokenizer, model = source.tokenizer(), source.load()
    train_rows, eval_rows = as_chat_rows(tokenizer, train_rows, eval_rows)
    train_data = Dataset.from_list(train_rows)
    eval_data = Dataset.from_list(eval_rows) if eval_rows else None
    # as in dpo: an explicit frozen copy of the starting weights, never one rebuilt from a hub name
    reference = frozen_copy(model) if config.explicit_reference() else None
    trainer, metrics = train_with_trl(
        ctx, KTOTrainer, KTOConfig, train=config.train, model=model, tokenizer=tokenizer,
        train_dataset=train_data, eval_dataset=eval_data, unit="completions", lora=config.lora,
        method_args=dict(max_length=config.max_length, beta=config.beta, loss_type=config.loss_type,
                         desirable_weight=config.desirable_weight, undesirable_weight=config.undesirable_weight),
        trainer_args={"ref_model": reference},
    )
    metrics.update(labelled_completions=len(train_rows), desirable=desirable, unlabelled_completions=unlabelled)
    return StageResult(save_policy(ctx, trainer, tokenizer, source, merge=config.merge), metrics)

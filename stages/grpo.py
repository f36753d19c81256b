"""The `grpo` stage: TRL's GRPOTrainer from the upstream policy, rewarded by the upstream reward stage's model."""

from __future__ import annotations

import logging

from trl import GRPOConfig, GRPOTrainer

from pipeline.artifacts import save_policy
from pipeline.context import StageContext
from pipeline.online import prompt_dataset, reward_model, start_policy, summarise
from pipeline.training import load_callbacks, lora_config, train_and_measure, trainer_kwargs

from .grpo_config import GRPOStageConfig

log = logging.getLogger("pipeline")


def run(ctx: StageContext) -> dict:
    config: GRPOStageConfig = ctx.config
    train_data = prompt_dataset(config)
    source = ctx.policy_source()
    tokenizer, model = source.tokenizer(), start_policy(ctx, config)
    scorer, scorer_tokenizer = reward_model(ctx)
    args = GRPOConfig(
        **trainer_kwargs(config.train, ctx.work_dir, ctx.seed, has_eval=False),
        **config.sampling_kwargs(),
        loss_type=config.loss_type,
        scale_rewards=config.scale_rewards,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[scorer],
        args=args,
        train_dataset=train_data,
        processing_class=tokenizer,
        # The reward model reads prompt + completion through its own tokenizer's chat template, as it was trained.
        reward_processing_classes=[scorer_tokenizer],
        # With LoRA the reference is the same weights with the adapter disabled: one copy in memory.
        peft_config=lora_config(config.lora, model=model) if config.lora else None,
        callbacks=load_callbacks(config.train.callbacks),
    )
    metrics = train_and_measure(ctx, trainer, len(train_data), "prompts")
    metrics.update(summarise(trainer.state.log_history))
    model_info = save_policy(ctx, trainer, tokenizer, source, merge=config.merge)
    return {"metrics": metrics, "model": model_info}

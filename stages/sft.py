"""The `sft` stage: TRL's SFTTrainer with LoRA or full fine-tuning, resumable, writing a policy artifact."""

from __future__ import annotations

import logging

from trl import SFTConfig, SFTTrainer

from pipeline.artifacts import save_policy, write_log_history
from pipeline.context import StageContext
from pipeline.data import load_chat_splits
from pipeline.errors import PipelineError
from pipeline.training import load_callbacks, lora_config, trainer_kwargs

from .sft_config import SFTStageConfig

log = logging.getLogger("pipeline")


def run(ctx: StageContext) -> dict:
    config: SFTStageConfig = ctx.config
    train_data, eval_data, fmt = load_chat_splits(config.data, ctx.seed)
    source = ctx.policy_source()
    tokenizer = source.tokenizer()
    completion_only = config.loss_on == "completion"
    if completion_only and fmt == "messages" and "generation" not in (tokenizer.chat_template or ""):
        raise PipelineError(
            f"stages.{ctx.name}.loss_on: 'completion' on chat data needs a chat template with "
            "{% generation %} markers, and this tokenizer's has none; set loss_on: all or supply such a template"
        )
    model = source.load()

    args = SFTConfig(
        **trainer_kwargs(config.train, ctx.work_dir, ctx.seed, has_eval=eval_data is not None),
        max_length=config.max_length,
        packing=config.packing,
        assistant_only_loss=completion_only and fmt == "messages",
        completion_only_loss=completion_only if fmt == "prompt_completion" else None,
        dataset_num_proc=None,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_data,
        eval_dataset=eval_data,
        processing_class=tokenizer,
        peft_config=lora_config(config.lora) if config.lora else None,
        callbacks=load_callbacks(config.train.callbacks),
    )
    result = trainer.train(resume_from_checkpoint=ctx.resume_checkpoint())
    metrics = {
        "train_loss": result.training_loss,
        "global_step": result.global_step,
        "train_rows": len(train_data),
        **{k: v for k, v in result.metrics.items() if k.startswith("train_") or k == "epoch"},
    }
    if eval_data is not None:
        metrics.update(trainer.evaluate())
        metrics["eval_rows"] = len(eval_data)
    write_log_history(ctx, trainer.state.log_history)
    model_info = save_policy(ctx, trainer, tokenizer, source, merge=config.merge)
    return {"metrics": metrics, "model": model_info}

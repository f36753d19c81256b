"""The `sft` stage: TRL's SFTTrainer with LoRA or full fine-tuning, resumable, writing a policy artifact."""

from __future__ import annotations

import logging
import re

from trl import SFTConfig, SFTTrainer

from pipeline.artifacts.policy import save_policy
from pipeline.contract import StageContext, StageResult
from pipeline.data.loading import load_chat_splits
from pipeline.errors import PipelineError
from pipeline.training.trainer import train_with_trl

from .sft_config import SFTStageConfig

log = logging.getLogger("pipeline")
GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")


def _final_turn_as_completion(dataset, stage: str):
    def split(row):
        messages = row["messages"]
        if messages[-1]["role"] != "assistant":
            raise PipelineError(f"stages.{stage}.data: a conversation does not end with an assistant turn, so "
                                "with this chat template (no generation markers) there is nothing to learn from it")
        return {"prompt": messages[:-1], "completion": messages[-1:]}

    return dataset.map(split, remove_columns=["messages"])


def run(ctx: StageContext) -> StageResult:
    config: SFTStageConfig = ctx.config
    source = ctx.policy_source()
    tokenizer = source.tokenizer()
    train_data, eval_data, fmt = load_chat_splits(config.data, ctx.seed,
                                                  conversational=bool(tokenizer.chat_template))
    completion_only = config.loss_on == "completion"
    if completion_only and fmt == "messages" and not GENERATION_MARKER.search(tokenizer.chat_template or ""):
        # TRL masks assistant turns through {% generation %} markers. Without them (most hub templates, SmolLM2's
        # too), train on the final assistant turn as a conversational completion, which TRL masks by itself.
        train_data, eval_data = (_final_turn_as_completion(d, ctx.name) if d is not None else None
                                 for d in (train_data, eval_data))
        fmt = "prompt_completion"
        if ctx.is_main:
            log.info("[%s] the chat template has no {%% generation %%} markers: the loss is on the final assistant "
                     "turn of each conversation", ctx.name)
    model = source.load()
    trainer, metrics = train_with_trl(
        ctx, SFTTrainer, SFTConfig, train=config.train, model=model, tokenizer=tokenizer, train_dataset=train_data,
        eval_dataset=eval_data, unit="rows", lora=config.lora,
        method_args=dict(
            max_length=config.max_length,
            packing=config.packing,
            assistant_only_loss=completion_only and fmt == "messages",
            completion_only_loss=completion_only if fmt == "prompt_completion" else None,
            dataset_num_proc=None,
        ),
    )
    return StageResult(save_policy(ctx, trainer, tokenizer, source, merge=config.merge), metrics)

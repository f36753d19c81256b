"""The `reward` stage: TRL's RewardTrainer (Bradley-Terry pairwise loss) on a sequence-classification model
initialised from the upstream policy. The artifact is a plain AutoModelForSequenceClassification folder (merged),
with the LoRA adapter beside it under adapter/."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from trl import RewardConfig, RewardTrainer

from pipeline.artifacts.policy import base_ref, point_adapter_at
from pipeline.contract import RewardModelOutput, StageContext, StageResult
from pipeline.data.loading import as_conversations, has_string_rows, preference_splits
from pipeline.models.loading import load_sequence_classifier, torch_dtype
from pipeline.models.reward_model import RewardModel
from pipeline.training.trainer import train_with_trl

from .reward_config import RewardStageConfig

log = logging.getLogger("pipeline")


def run(ctx: StageContext) -> StageResult:
    config: RewardStageConfig = ctx.config
    preferences = ctx.upstream_of("preferences")
    card = preferences.path / preferences.output.data_card if preferences is not None else None
    train_rows, eval_rows = preference_splits(config.data, card, ctx.seed)
    tokenizer = ctx.policy_source().tokenizer()
    if tokenizer.chat_template and has_string_rows(train_rows):
        # scored through the chat template later (pipeline.models.reward_model): train on the same rendering
        train_rows, eval_rows = as_conversations(train_rows), as_conversations(eval_rows)
    keep = ("prompt", "chosen", "rejected") + (("margin",) if config.use_margin else ())
    train_rows = [{k: r[k] for k in keep} for r in train_rows]
    eval_rows = [{k: r[k] for k in keep} for r in eval_rows]
    from datasets import Dataset

    start = ctx.start_folder()
    quantization = ctx.recipe.model.quantization
    model = load_sequence_classifier(start, ctx.recipe.model.dtype, quantization)
    model.config.pad_token_id = tokenizer.pad_token_id

    def keep_head_in_model_dtype(trainer) -> None:
        if quantization and not (config.train.precision in ("bf16", "fp16") or trainer.args.bf16):
            # TRL casts the trainable weights of a quantised model to bf16 (QLoRA's recipe); without bf16 autocast
            # the fully trained score head then gets float32 inputs it cannot multiply: keep them in the model's dtype.
            for param in trainer.model.parameters():
                if param.requires_grad:
                    param.data = param.data.to(torch_dtype(ctx.recipe.model.dtype))

    trainer, metrics = train_with_trl(
        ctx, RewardTrainer, RewardConfig, train=config.train, model=model, tokenizer=tokenizer,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None, evaluate_at_end=False, unit="pairs",
        # The score head is new: train and save it in full next to the adapter.
        lora=config.lora, lora_task="SEQ_CLS", modules_to_save=["score"],
        method_args=dict(max_length=config.max_length, center_rewards_coefficient=config.center_rewards_coefficient),
        prepare=keep_head_in_model_dtype,
    )
    if eval_rows:
        metrics.update({k: v for k, v in trainer.evaluate().items() if k != "eval_accuracy"})
        metrics.update(_heldout_metrics(ctx, RewardModel(trainer.model, tokenizer), eval_rows))
    _save(ctx, trainer, tokenizer, is_adapter=config.lora is not None, dense_start=start if quantization else None)
    adapter_base = None
    if config.lora is not None:
        adapter_base = base_ref(ctx, ctx.policy_source())
        if ctx.is_main:
            point_adapter_at(ctx.out_dir / "adapter" / "adapter_config.json", adapter_base.resolve(ctx.final_dir))
    return StageResult(RewardModelOutput("adapter" if config.lora else None, adapter_base), metrics)


def _heldout_metrics(ctx: StageContext, scorer: RewardModel, rows: list[dict]) -> dict:
    """Exact accuracy, margins and reward distribution on every held-out pair (TRL's eval averages per batch and
    leaves out pairs over max_length); the scores go to eval_scores.jsonl so a reload can be checked against them."""
    import statistics

    chosen = scorer.score([r["prompt"] for r in rows], [r["chosen"] for r in rows])
    rejected = scorer.score([r["prompt"] for r in rows], [r["rejected"] for r in rows])
    if ctx.is_main:
        with (ctx.out_dir / "eval_scores.jsonl").open("w") as handle:
            for row, c, r in zip(rows, chosen, rejected):
                handle.write(json.dumps({**row, "chosen_reward": c, "rejected_reward": r}, ensure_ascii=False) + "\n")
    margins = [c - r for c, r in zip(chosen, rejected)]
    return {
        "eval_pairs": len(rows),
        "eval_accuracy": sum(m > 0 for m in margins) / len(margins),
        "eval_margin_mean": statistics.fmean(margins),
        "eval_chosen_reward_mean": statistics.fmean(chosen),
        "eval_rejected_reward_mean": statistics.fmean(rejected),
        "eval_reward_std": statistics.pstdev(chosen + rejected),
    }


def _save(ctx: StageContext, trainer, tokenizer, is_adapter: bool, dense_start: str | None = None) -> None:
    if is_adapter:
        trainer.save_model(str(ctx.out_dir / "adapter"))
    if not ctx.is_main:
        return
    if dense_start:
        # QLoRA: the artifact is the adapter merged into the dense starting weights, not into their 4-bit copy
        from peft import PeftModel

        dense = load_sequence_classifier(dense_start, ctx.recipe.model.dtype)
        dense.config.pad_token_id = tokenizer.pad_token_id
        model = PeftModel.from_pretrained(dense, str(ctx.out_dir / "adapter")).merge_and_unload()
    else:
        model = trainer.model.merge_and_unload() if is_adapter else trainer.model
    model.save_pretrained(str(ctx.out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(ctx.out_dir))
    for pickle in Path(ctx.out_dir).rglob("training_args.bin"):
        pickle.unlink()

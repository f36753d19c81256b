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
from pipeline.data.loading import as_chat_rows
from pipeline.models.loading import load_sequence_classifier, torch_dtype
from pipeline.models.reward_model import RewardModel
from pipeline.training.pairwise import preference_pairs
from pipeline.training.trainer import train_with_trl

from .reward_config import RewardStageConfig

log = logging.getLogger("pipeline")


def run(ctx: StageContext) -> StageResult:
    config: RewardStageConfig = ctx.config
    pairs = preference_pairs(ctx, config)
    tokenizer = ctx.policy_source().tokenizer()
    # scored through the chat template later (pipeline.models.reward_model): train on the same rendering
    train_rows, eval_rows = as_chat_rows(tokenizer, *pairs)
    keep = ("prompt", "chosen", "rejected") + (("margin",) if config.use_margin else ())
    train_rows = [{k: r[k] for k in keep} for r in train_rows]
    eval_rows = [{k: r[k] for k in keep} for r in eval_rows]
    from datasets import Dataset

    start = ctx.start_folder()
    quantization = ctx.recipe.model.quantization
    model = load_sequence_classifier(start, ctx.recipe.model.run_dtype, quantization, heads=config.ensemble)
    model.config.pad_token_id = tokenizer.pad_token_id
    # TRL's RewardTrainer refuses a model of several outputs, though its pairwise loss is per output (the logits of
    # chosen and rejected are split along the batch, then compared output by output): an ensemble's head keeps its
    # width, and the config says so again once the trainer is built (prepare, below).
    model.config.num_labels = 1

    def prepare(trainer) -> None:
        model.config.num_labels = config.ensemble
        keep_head_in_model_dtype(trainer)

    def keep_head_in_model_dtype(trainer) -> None:
        if quantization and not (config.train.precision in ("bf16", "fp16") or trainer.args.bf16):
            # TRL casts the trainable weights of a quantised model to bf16 (QLoRA's recipe); without bf16 autocast
            # the fully trained score head then gets float32 inputs it cannot multiply: keep them in the model's dtype.
            for param in trainer.model.parameters():
                if param.requires_grad:
                    param.data = param.data.to(torch_dtype(ctx.recipe.model.run_dtype))

    trainer, metrics = train_with_trl(
        ctx, RewardTrainer, RewardConfig, train=config.train, model=model, tokenizer=tokenizer,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None, evaluate_at_end=False, unit="pairs",
        # The score head is new: train and save it in full next to the adapter.
        lora=config.lora, lora_task="SEQ_CLS", modules_to_save=["score"],
        method_args=dict(max_length=config.max_length, center_rewards_coefficient=config.center_rewards_coefficient),
        prepare=prepare,
    )
    if eval_rows:
        metrics.update(_eval_metrics(ctx, trainer, RewardModel(trainer.model, tokenizer), eval_rows))
    _save(ctx, trainer, tokenizer, is_adapter=config.lora is not None, dense_start=start if quantization else None)
    adapter_base = None
    if config.lora is not None:
        adapter_base = base_ref(ctx, ctx.policy_source())
        if ctx.is_main:
            point_adapter_at(ctx.out_dir / "adapter" / "adapter_config.json", adapter_base.resolve(ctx.final_dir))
    return StageResult(RewardModelOutput("adapter" if config.lora else None, adapter_base), metrics)


def _eval_metrics(ctx: StageContext, trainer, scorer: RewardModel, rows: list[dict]) -> dict:
    """The held-out metrics, from one scoring pass over every pair: TRL's evaluation figures (``trainer_eval_metrics``,
    eval_accuracy left out) and the exact ones (``_heldout_metrics``). Where TRL's evaluation would score other token
    ids (string rows, to which it appends EOS) or batch across processes, ``trainer.evaluate()`` gives its figures
    instead."""
    import time

    start = time.time()
    prompts = [r["prompt"] for r in rows]
    chosen_ids = scorer.token_ids(prompts, [r["chosen"] for r in rows])
    rejected_ids = scorer.token_ids(prompts, [r["rejected"] for r in rows])
    chosen, rejected = scorer.score_ids(chosen_ids), scorer.score_ids(rejected_ids)
    trl = trainer_eval_metrics(trainer, rows, chosen_ids, rejected_ids, chosen, rejected, start)
    if trl is None:
        trl = trainer.evaluate()
    trl.pop("eval_accuracy", None)  # batch-averaged: _heldout_metrics gives the exact one
    return {**trl, **_heldout_metrics(ctx, rows, chosen, rejected)}


def trainer_eval_metrics(trainer, rows: list[dict], chosen_ids: list[list[int]], rejected_ids: list[list[int]],
                         chosen: list[float], rejected: list[float], start: float) -> dict | None:
    """What ``trainer.evaluate()`` returns (and logs), computed from rewards already scored: None where TRL's
    evaluation does not score exactly these pairs and token ids in one process.

    TRL's evaluation keeps the pairs whose chosen and rejected ids both fit max_length, in order, in batches of
    eval_batch_size. Its loss is the mean over pairs of -log sigmoid(chosen - rejected [- margin]) [+ coef *
    (chosen + rejected)^2]; its accuracy, margin (chosen - rejected) and min, mean and max reward (of the batch's
    chosen and rejected rewards together) are per-batch figures averaged over the batches; eval_num_tokens is the
    number of training tokens; eval_runtime and the rates time this scoring pass."""
    import math

    from transformers.trainer_utils import speed_metrics

    args = trainer.args
    trained_tokens = getattr(trainer, "_total_train_tokens", None)  # what TRL reports as eval_num_tokens
    if args.world_size > 1 or args.max_length is None or trained_tokens is None:
        return None
    kept = [i for i in range(len(rows))
            if len(chosen_ids[i]) <= args.max_length and len(rejected_ids[i]) <= args.max_length]
    dataset = trainer.eval_dataset
    if not kept or ([(chosen_ids[i], rejected_ids[i]) for i in kept]
                    != list(zip(dataset["chosen_ids"], dataset["rejected_ids"]))):
        return None
    use_margin = "margin" in dataset.column_names
    pair_loss = [_softplus(rejected[i] - chosen[i] + (rows[i]["margin"] if use_margin else 0.0))
                 + (args.center_rewards_coefficient or 0.0) * (chosen[i] + rejected[i]) ** 2 for i in kept]
    size = args.eval_batch_size
    batches = [kept[b : b + size] for b in range(0, len(kept), size)]
    per_batch: dict[str, list[float]] = {key: [] for key in ("min_reward", "mean_reward", "max_reward", "accuracy",
                                                              "margin")}
    for batch in batches:
        rewards = [chosen[i] for i in batch] + [rejected[i] for i in batch]
        per_batch["min_reward"].append(min(rewards))
        per_batch["mean_reward"].append(math.fsum(rewards) / len(rewards))
        per_batch["max_reward"].append(max(rewards))
        per_batch["accuracy"].append(sum(chosen[i] > rejected[i] for i in batch) / len(batch))
        per_batch["margin"].append(math.fsum(chosen[i] - rejected[i] for i in batch) / len(batch))
    metrics = {"eval_loss": math.fsum(pair_loss) / len(kept),
               **speed_metrics("eval", start, num_samples=len(kept), num_steps=len(batches)),
               "eval_num_tokens": float(trained_tokens),
               **{f"eval_{key}": sum(values) / len(values) for key, values in per_batch.items()}}
    # as evaluate() does: the log, the trackers and the callbacks get them (trainer.log adds the epoch)
    trainer.log(metrics)
    trainer.control = trainer.callback_handler.on_evaluate(args, trainer.state, trainer.control, metrics)
    return metrics


def _softplus(x: float) -> float:
    """log(1 + e^x), which is -log sigmoid(-x), without overflow."""
    import math

    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def _heldout_metrics(ctx: StageContext, rows: list[dict], chosen: list[float], rejected: list[float]) -> dict:
    """Exact accuracy, margins and reward distribution on every held-out pair (TRL's eval averages per batch and
    leaves out pairs over max_length); the scores go to eval_scores.jsonl so a reload can be checked against them."""
    import statistics

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

        dense = load_sequence_classifier(dense_start, ctx.recipe.model.run_dtype, heads=trainer.model.config.num_labels)
        dense.config.pad_token_id = tokenizer.pad_token_id
        model = PeftModel.from_pretrained(dense, str(ctx.out_dir / "adapter")).merge_and_unload()
    else:
        model = trainer.model.merge_and_unload() if is_adapter else trainer.model
    model.save_pretrained(str(ctx.out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(ctx.out_dir))
    for pickle in Path(ctx.out_dir).rglob("training_args.bin"):
        pickle.unlink()

"""Setting up a PPO run: its models, its accelerator, its learning-rate schedule (the loop prepares them)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from pipeline.contract import StageContext
from pipeline.errors import PipelineError
from pipeline.models.loading import frozen_copy, load_sequence_classifier
from pipeline.training.distributed import fresh_accelerator, on_gpu, uses_deepspeed
from pipeline.training.trainer import lora_config, precision_flags, tensorboard_dir, tracker_run_name, tracking

from ..ppo_config import PPOStageConfig


@dataclass
class PPOModels:
    """The models of a PPO run, before accelerate prepares them."""

    policy: nn.Module
    """Trains: the upstream policy with a new LoRA adapter, or every weight."""
    value: nn.Module
    """Trains: the reward model with the value LoRA, or every weight."""
    reference: nn.Module | None
    """An explicit frozen copy of the starting policy, or None: the policy with its adapter disabled."""
    scorer: nn.Module | None
    """An explicit frozen copy of the reward model, or None: the value model with its adapter disabled."""
    source: object
    """The upstream policy's PolicySource (how it loads, and how the result is saved beside it)."""
    tokenizer: object
    reward_tokenizer: object
    pad_id: int


def load_models(ctx: StageContext, config: PPOStageConfig) -> PPOModels:
    """Load the policy, the reward model and the frozen copies the settings ask for, dropout off."""
    from peft import get_peft_model
    from transformers import AutoTokenizer
    from trl.trainer.utils import disable_dropout_in_model

    reward_path = ctx.upstream_of("reward_model").path
    source = ctx.policy_source()
    tokenizer = source.tokenizer()
    reward_tokenizer = AutoTokenizer.from_pretrained(reward_path)
    if reward_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise PipelineError(
            f"stage '{ctx.name}': the reward model ({reward_path}) and the policy ({source.path}) have different "
            "vocabularies; the value model reads the policy's tokens, so they must share one tokenizer")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    # Loaded whole (the runner drops any earlier stage's ZeRO-3 config first); DeepSpeed partitions the weights
    # when the Accelerator prepares the model.
    policy = source.load()
    # QLoRA: the reward/value backbone is quantised like the policy; only adapters train
    reward = load_sequence_classifier(reward_path, ctx.recipe.model.run_dtype, ctx.recipe.model.quantization,
                                      heads=None)
    reward.config.pad_token_id = pad_id
    # Dropout would make the first PPO ratio differ from 1 for no reason (TRL's PPO turns it off too).
    disable_dropout_in_model(policy)
    disable_dropout_in_model(reward)

    reference = frozen_copy(policy) if config.explicit_reference() else None
    if config.lora is not None:
        policy = get_peft_model(policy, lora_config(config.lora.model_copy(update={"dropout": 0.0}), model=policy))
    else:
        policy.requires_grad_(True)
    scorer = None
    if config.value_lora is not None:
        value = get_peft_model(reward, lora_config(config.value_lora.model_copy(update={"dropout": 0.0}),
                                                   "SEQ_CLS", ["score"], reward))
    else:
        scorer = frozen_copy(reward)
        value = reward.requires_grad_(True)
    _gradient_checkpointing(config, policy, value)
    return PPOModels(policy, value, reference, scorer, source, tokenizer, reward_tokenizer, pad_id)


def _gradient_checkpointing(config: PPOStageConfig, policy: nn.Module, value: nn.Module) -> None:
    enabled = config.train.gradient_checkpointing
    if enabled is None:
        enabled = on_gpu()
    if not enabled:
        return
    for model in (policy, value):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):  # LoRA: frozen embeddings would cut the graph
            model.enable_input_require_grads()


def make_accelerator(ctx: StageContext, config: PPOStageConfig):
    """The stage's Accelerator, with its trackers started and DeepSpeed's batch entries filled. Created after the
    models are loaded (see ``load_models``); any earlier stage's mixed-precision settings are dropped."""
    train = config.train
    flags = precision_flags(train.precision, ctx.recipe.model.run_dtype)
    report_to = list(train.report_to or [])
    if report_to:
        tracking(ctx, train)  # the trackers' own libraries read their folders from the environment
    accelerator = fresh_accelerator(
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        mixed_precision="bf16" if flags["bf16"] else "fp16" if flags["fp16"] else "no",
        log_with=report_to or None, project_dir=str(tensorboard_dir(ctx)) if report_to else None)
    if report_to:
        # one tracker run per stage variant, named like the TRL stages' (TensorBoard: the project folder itself)
        accelerator.init_trackers("." if "tensorboard" in report_to else tracker_run_name(ctx),
                                  config={"stage": ctx.name, "fingerprint": ctx.fingerprint})
    _fill_deepspeed_config(accelerator, config)
    if config.kl.guard is not None and uses_deepspeed(accelerator):
        raise PipelineError(
            f"stage '{ctx.name}': kl.guard undoes an update by restoring the trainable weights and optimizer "
            "state, which DeepSpeed partitions across processes; run this stage without DeepSpeed, or drop "
            "kl.guard")
    return accelerator


def _fill_deepspeed_config(accelerator, config: PPOStageConfig) -> None:
    """Fill the "auto" batch entries of a DeepSpeed config (accelerate fills them from a prepared dataloader, and
    PPO has none)."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    train = config.train
    plugin.deepspeed_config.update({
        "train_micro_batch_size_per_gpu": train.batch_size,
        "gradient_accumulation_steps": train.gradient_accumulation_steps,
        "train_batch_size": train.batch_size * train.gradient_accumulation_steps * accelerator.num_processes,
        "gradient_clipping": train.max_grad_norm,
    })


def make_scheduler(config: PPOStageConfig, optimizer, total_updates: int):
    """The learning-rate schedule over every optimizer update of the run. The loop steps it by hand once per update:
    accelerate's wrapper would step it once per process, assuming a sharded dataloader."""
    from transformers import get_scheduler

    return get_scheduler(config.train.lr_scheduler, optimizer,
                         num_warmup_steps=math.ceil(config.train.warmup_ratio * total_updates),
                         num_training_steps=total_updates)

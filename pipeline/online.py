"""What the online RL stages (`grpo`, `rloo`) share: their common config fields, the prompt dataset, the reward model
of the upstream reward stage, and the summary of what TRL logged.

Both stages sample ``num_generations`` completions per prompt from the current policy, score each whole completion
with the reward stage's model, and take a policy-gradient step with a baseline computed from the other completions of
the same prompt (no value model). torch, transformers and trl are imported inside the functions, so importing this
module for the config classes stays cheap (validating a recipe never imports them).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field, ValidationInfo, field_validator

from .schema import ExistingPath, LoraSettings, StageConfig, TrainSettings
from .training import world_size

SUMMARISED = ("reward", "reward_std", "kl", "entropy", "completions/mean_length", "completions/clipped_ratio",
              "frac_reward_zero_std", "step_time")
"""Per-step figures TRL logs that metrics.json summarises as <name>_first, <name>_last and <name>_mean."""


class OnlineStageConfig(StageConfig):
    """Fields shared by the online RL stages: prompts, adapter, optimisation, sampling and the KL coefficient."""

    prompts: ExistingPath
    """Data card of prompt-only rows (e.g. data_cards/movie_prompts.yaml); its train split is used, each prompt as
    a user message through the policy's chat template."""
    n_prompts: int | None = Field(None, ge=1)
    """Use only the first n_prompts prompts; default all."""
    lora: LoraSettings | None = LoraSettings()
    """Policy LoRA on the upstream policy; the KL reference is the same weights with the adapter disabled (no second
    copy). null trains every weight; the reference is then a frozen copy of the starting weights."""
    train: TrainSettings = TrainSettings(learning_rate=5e-5)
    """Optimisation settings. batch_size counts completions (not prompts) per forward pass; one optimizer step uses
    batch_size x gradient_accumulation_steps x processes completions, i.e. that many / num_generations prompts,
    sampled fresh from the current policy. max_steps counts optimizer steps (-1: `epochs` passes over the prompts)."""
    num_generations: int = Field(4, ge=2)
    """Completions sampled per prompt; each is scored against the others of its group. The global batch
    (train.batch_size x train.gradient_accumulation_steps x processes) must be a multiple of it. TRL's defaults
    differ per trainer (GRPO 8, RLOO 2); one value here keeps a comparison of the two fair."""
    max_completion_length: int = Field(64, ge=1)
    """Most tokens generated per completion (like sampling.max_new_tokens of the other stages); generation also
    stops at the end-of-sequence token."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature; the log-probabilities of the loss use the same temperature."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p (1 keeps all)."""
    top_k: int = Field(0, ge=0)
    """Keep only the k most likely tokens when sampling; 0 turns this off."""
    beta: float = Field(0.05, ge=0)
    """KL coefficient to the frozen reference (the starting policy). 0 drops the reference entirely (no KL term and
    no `kl` in the logs). Set here for both kinds because TRL's defaults differ (GRPO 0, RLOO 0.05)."""
    num_iterations: int = Field(1, ge=1)
    """Optimisation passes over each batch of sampled completions (mu in the GRPO paper); above 1 the clipped
    importance ratio to the sampling policy matters."""
    epsilon: float = Field(0.2, gt=0)
    """Clipping range of the importance ratio (as in PPO)."""
    mask_truncated_completions: bool = False
    """Leave completions that hit max_completion_length without ending out of the loss (as in DAPO)."""
    merge: bool = False
    """Also write merged full weights under merged/."""

    produces: ClassVar[str] = "policy"
    accepts: ClassVar[dict[str, bool]] = {"policy": True, "reward_model": True}

    @field_validator("num_generations")
    @classmethod
    def _whole_groups(cls, num_generations: int, info: ValidationInfo) -> int:
        train = info.data.get("train")
        if train is None:  # train itself was invalid; that is reported on its own
            return num_generations
        processes = world_size()
        batch = train.batch_size * train.gradient_accumulation_steps * processes
        if batch % num_generations:
            shown = (f"{train.batch_size} x {train.gradient_accumulation_steps}"
                     + (f" x {processes} processes" if processes > 1 else "") + f" = {batch}")
            raise ValueError(
                f"train.batch_size x train.gradient_accumulation_steps ({shown}) completions per optimizer step "
                f"must be a multiple of num_generations ({num_generations}), so that each step holds whole groups "
                f"of completions of the same prompt; change train.batch_size, train.gradient_accumulation_steps "
                f"or num_generations")
        return num_generations

    def input_files(self) -> list[Path]:
        return [self.prompts]

    def sampling_kwargs(self) -> dict:
        """The keyword arguments of GRPOConfig / RLOOConfig these fields set."""
        return dict(
            num_generations=self.num_generations,
            max_completion_length=self.max_completion_length,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            beta=self.beta,
            num_iterations=self.num_iterations,
            epsilon=self.epsilon,
            mask_truncated_completions=self.mask_truncated_completions,
            use_vllm=False,  # generation with transformers on the training processes (no vLLM on CPU)
            log_completions=False,
        )


def prompt_dataset(config: OnlineStageConfig):
    """The train split of the prompt card as TRL conversational prompts (one user message each)."""
    from datasets import Dataset

    from .cards import card_splits, load_card

    card = load_card(config.prompts)
    prompts = [row["prompt"] for row in card_splits(card, str(config.prompts))["train"]]
    prompts = prompts[: config.n_prompts] if config.n_prompts else prompts
    return Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts])


def reward_model(ctx):
    """The upstream reward stage's model and tokenizer, loaded from its folder (never from a hub name)."""
    from .models import load_sequence_classifier, load_tokenizer

    folder = str(ctx.upstream_of("reward_model").path)
    model = load_sequence_classifier(folder, ctx.recipe.model.dtype)
    return model.eval().requires_grad_(False), load_tokenizer(folder)


def start_policy(ctx, config: OnlineStageConfig):
    """The upstream policy (or base model) as a plain causal LM, every weight trainable for full fine-tuning.

    With full fine-tuning and a KL term, TRL builds the frozen reference itself by loading the policy's
    ``name_or_path`` again; a policy merged from an upstream adapter would name its base model there, so the starting
    weights are written to a folder first and loaded from it (once; reused on resume)."""
    from transformers import AutoModelForCausalLM

    from .models import torch_dtype

    source = ctx.policy_source()
    if config.lora is not None:
        return source.load()
    if config.beta > 0 and source.is_artifact:
        folder = ctx.work_dir / "start"
        if ctx.is_main and not (folder / "config.json").exists():
            source.load().save_pretrained(folder)
        ctx.barrier()
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype(ctx.recipe.model.dtype),
                                                     trust_remote_code=ctx.recipe.model.trust_remote_code)
    else:
        model = source.load()
    # An upstream adapter merged by peft comes back with every weight frozen; full fine-tuning trains them all.
    return model.requires_grad_(True)


def summarise(history: list[dict]) -> dict:
    """First, last and mean of each SUMMARISED figure over the logged training steps (step_time: seconds per step)."""
    rows = [row for row in history if "reward" in row]
    summary: dict = {}
    for key in SUMMARISED:
        values = [row[key] for row in rows if row.get(key) is not None]
        if values:
            name = key.replace("completions/", "completion_")
            summary.update({f"{name}_first": values[0], f"{name}_last": values[-1],
                            f"{name}_mean": sum(values) / len(values)})
    return summary


def train_online(ctx, config: OnlineStageConfig, config_class, trainer_class, **method_args) -> dict:
    """Run TRL's ``trainer_class`` (GRPOTrainer or RLOOTrainer) for an online stage and save the policy; returns the
    stage's result. ``method_args`` are the method's own config fields (e.g. GRPO's loss_type)."""
    from .artifacts import save_policy
    from .training import load_callbacks, lora_config, train_and_measure, trainer_kwargs

    train_data = prompt_dataset(config)
    source = ctx.policy_source()
    tokenizer, model = source.tokenizer(), start_policy(ctx, config)
    scorer, scorer_tokenizer = reward_model(ctx)
    args = config_class(
        **trainer_kwargs(config.train, ctx.work_dir, ctx.seed, has_eval=False),
        **config.sampling_kwargs(),
        **method_args,
    )
    trainer = trainer_class(
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

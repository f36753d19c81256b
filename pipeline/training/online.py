"""What the online RL stages (`grpo`, `rloo`) share: the prompt dataset, the reward model of the upstream reward
stage, the starting policy, TRL's trainer run, and the summary of what TRL logged.

Both stages sample ``num_generations`` completions per prompt from the current policy, score each whole completion
with the reward stage's model, and take a policy-gradient step with a baseline computed from the other completions of
the same prompt (no value model). Their config fields are in ``online_config``.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..evaluation.metrics import gold_peak
from .online_config import OnlineStageConfig

SUMMARISED = ("reward", "gold", "reward_std", "kl", "beta", "entropy", "completions/mean_length",
              "completions/clipped_ratio", "frac_reward_zero_std", "step_time")
"""Per-step figures TRL logs that metrics.json summarises as <name>_first, <name>_last and <name>_mean."""


def prompt_dataset(config: OnlineStageConfig):
    """The train split of the prompt card as TRL conversational prompts (one user message each)."""
    from datasets import Dataset

    from ..data.loading import card_prompts

    prompts = card_prompts(config.prompts, "train", config.n_prompts)
    return Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts])


def reward_model(ctx):
    """The upstream reward stage's model and tokenizer, loaded from its folder (never from a hub name)."""
    from ..models.loading import load_sequence_classifier, load_tokenizer

    upstream = ctx.upstream_of("reward_model")
    folder = str(upstream.path)
    model = load_sequence_classifier(folder, ctx.recipe.model.run_dtype, heads=None)
    if model.config.num_labels != 1:
        from ..errors import PipelineError

        raise PipelineError(f"stage '{ctx.name}': the reward model {folder} is an ensemble of "
                            f"{model.config.num_labels} heads, and TRL's online trainers read the first output only; "
                            "train it with ensemble: 1, or optimise the ensemble with ppo")
    # TRL names the reward's log keys after the model's name (rewards/<name>/mean): the stage's, not its folder's
    model.config._name_or_path = upstream.manifest.get("stage", upstream.path.name)
    return model.eval().requires_grad_(False), load_tokenizer(folder)


class JudgeReward:
    """A rollout judge as a TRL reward function: given weight 0 it leaves the policy's reward alone, and TRL scores
    every step's completions with it and logs their mean as ``rewards/<key>/mean``."""

    def __init__(self, key: str, judge):
        self.key, self.judge = key, judge
        self.__name__ = key  # TRL's name for the function in its log keys

    def __call__(self, prompts, completions, **_) -> list[float]:
        return [float(s) for s in self.judge.score([_text(p) for p in prompts], [_text(c) for c in completions])]


def _text(value) -> str:
    """A TRL prompt or completion as plain text: a conversation's last message, or the string itself."""
    return value[-1]["content"] if isinstance(value, list) else value


def judge_rewards(ctx, config: OnlineStageConfig) -> list[JudgeReward]:
    """The recipe's rollout judges (gold and panel) as weight-0 reward functions, when the stage logs them."""
    from ..evaluation.judges import rollout_judges

    return [JudgeReward(key, judge) for key, judge in rollout_judges(ctx.recipe.evaluate)] \
        if config.judge_rollouts else []


def judge_log_keys(judges: list[JudgeReward]):
    """A callback that logs each judge's step mean under its own key (``gold``, ``judge/<spec>``), as the ppo stage
    does, beside TRL's ``rewards/<key>/mean``: in the step's row of the trainer's history and in what the callbacks
    after it see (the live log). Must come before them."""
    from transformers import TrainerCallback

    class JudgeLogKeys(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs:
                return
            for judge in judges:
                value = logs.get(f"rewards/{judge.key}/mean")
                if value is not None:
                    logs[judge.key] = value
                    if state.log_history:
                        state.log_history[-1][judge.key] = value

    return JudgeLogKeys()


def start_policy(ctx, config: OnlineStageConfig):
    """The upstream policy (or base model) as a plain causal LM, every weight trainable for full fine-tuning.

    With full fine-tuning and a KL term, TRL builds the frozen reference itself by loading the policy's
    ``name_or_path`` again; a policy merged from an upstream adapter would name its base model there, so the starting
    weights are loaded from a plain folder of them (``StageContext.dense_start``, written once)."""
    from ..models.loading import load_causal_lm

    source = ctx.policy_source()
    if config.lora is not None:
        return source.load()
    if config.beta > 0 and source.is_artifact:
        model = load_causal_lm(ctx.dense_start(), ctx.recipe.model.run_dtype, ctx.recipe.model.trust_remote_code)
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


BETA_STATE = "beta_controller.json"
"""Written into each trainer checkpoint: the beta controller's state, so a resumed run continues with its beta."""


def beta_controlled(trainer_class, config: OnlineStageConfig):
    """``trainer_class`` itself when beta is fixed; else a subclass whose ``log`` feeds each logged training KL to
    the PI controller and sets the beta the next steps use (TRL reads ``self.beta`` at every loss / reward), and
    whose checkpoints carry the controller's state."""
    control = config.beta_control
    if control is None:
        return trainer_class
    from ..rl.ppo_math import kl_controller

    class BetaControlled(trainer_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.beta_controller = kl_controller(config.beta, control.target, "pi", kp=control.kp, ki=control.ki)

        def log(self, logs: dict, start_time: float | None = None) -> None:
            training = self.model.training and not any(key.startswith("eval_") for key in logs)
            if training:
                logs["beta"] = self.beta  # the beta the logged steps used
            super().log(logs, start_time)  # fills in TRL's averaged metrics, kl among them
            kl = logs.get("kl")
            if training and isinstance(kl, (int, float)):
                self.beta_controller.update(float(kl), 1)
                self.beta = self.beta_controller.value

        def _save_checkpoint(self, model, trial):
            super()._save_checkpoint(model, trial)
            from ..store.atomic import write_json

            folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
            if self.args.should_save and folder.is_dir():
                write_json(folder / BETA_STATE, self.beta_controller.state_dict())

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            state = Path(resume_from_checkpoint) / BETA_STATE
            if state.is_file():
                self.beta_controller.load_state_dict(json.loads(state.read_text()))
                self.beta = self.beta_controller.value

    BetaControlled.__name__ = BetaControlled.__qualname__ = f"BetaControlled{trainer_class.__name__}"
    return BetaControlled


def train_online(ctx, config: OnlineStageConfig, config_class, trainer_class, **method_args):
    """Run TRL's ``trainer_class`` (GRPOTrainer or RLOOTrainer) for an online stage and save the policy; returns the
    stage's result. ``method_args`` are the method's own config fields (e.g. GRPO's loss_type)."""
    from ..artifacts.outputs import StageResult
    from ..artifacts.policy import save_policy
    from .trainer import train_with_trl

    train_data = prompt_dataset(config)
    source = ctx.policy_source()
    tokenizer, model = source.tokenizer(), start_policy(ctx, config)
    scorer, scorer_tokenizer = reward_model(ctx)
    judges = judge_rewards(ctx, config)
    trainer, metrics = train_with_trl(
        ctx, beta_controlled(trainer_class, config), config_class, train=config.train, model=model, tokenizer=tokenizer,
        train_dataset=train_data, unit="prompts",
        # With LoRA the reference is the same weights with the adapter disabled: one copy in memory.
        lora=config.lora,
        method_args={**config.sampling_kwargs(), **method_args,
                     **({"reward_weights": [1.0] + [0.0] * len(judges)} if judges else {})},
        # The reward model reads prompt + completion through its own tokenizer's chat template, as it was trained.
        trainer_args={"reward_funcs": [scorer, *judges],
                      "reward_processing_classes": [scorer_tokenizer] + [None] * len(judges)},
        callbacks=[judge_log_keys(judges)] if judges else [],
    )
    metrics.update(summarise(trainer.state.log_history))
    metrics.update(gold_peak(trainer.state.log_history))
    return StageResult(save_policy(ctx, trainer, tokenizer, source, merge=config.merge), metrics)

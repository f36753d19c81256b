"""Config of the `ppo` stage: RLHF with PPO against a learned reward model and a frozen reference (our own
implementation on accelerate; TRL removed its PPOTrainer in 1.13)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from pipeline.config.schema import (
    ExistingPath,
    FrozenReferencePolicy,
    LoraSettings,
    MemoryProfile,
    StageConfig,
    Strict,
    TrainSettings,
)
from pipeline.evaluation.settings import SamplingSettings

OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adamw_bnb_8bit", "adamw_8bit", "sgd")


class KLSettings(Strict):
    """The per-token KL penalty that keeps the policy near the frozen reference."""

    coef: float = Field(0.05, ge=0)
    """KL coefficient (beta): each response token's reward is -coef x its KL estimate. With `target`, the
    starting value of the adaptive controller."""
    estimator: Literal["k1", "k2", "k3"] = "k1"
    """Per-token KL estimator in the penalty: k1 = log p - log q (InstructGPT's), k2 = (log p - log q)^2 / 2,
    k3 = (q/p - 1) - log(q/p) (never negative). The reported `kl` is always the k1 sum, the unbiased estimate."""
    target: float | None = Field(None, gt=0)
    """Target KL per response (nats); set it to adapt coef with the `controller`. None keeps coef fixed."""
    controller: Literal["proportional", "pi"] = "proportional"
    """How coef follows the target. proportional: Ziegler et al.'s controller (coef moves at most 20% x
    samples/horizon a step: slow, the KL can overshoot the target far). pi: a proportional-integral controller on
    log coef (gains kp, ki) that holds the KL near the target once it has first come within 20% below it (coef
    stays at its initial value until then)."""
    horizon: int = Field(10000, ge=1)
    """proportional controller: horizon, in samples; larger moves coef more slowly."""
    kp: float = Field(1.0, ge=0)
    """pi controller: proportional gain; log coef moves by kp x the relative error (KL / target - 1, clipped to
    [-1, 1]) of this step."""
    ki: float = Field(0.5, ge=0)
    """pi controller: integral gain; log coef moves by ki x the sum of the relative errors so far."""
    guard: float | None = Field(None, gt=1)
    """With a target: hold the policy's KL to the reference inside the band [target / guard, guard x target]. Each
    optimizer update of a PPO step is checked once it has run, on the step's rollout (the KL predicted by
    importance weighting); one that carried the KL above the band or further above than the rollout measured it
    (or, once the KL has first reached the band, from inside it to below it) is undone for the policy (its weights
    and their optimizer state restored; the value model's half of the update stands) and the step's remaining
    updates are dropped. A controller acts on the KL the next rollout measures, after the policy has moved; the
    guard acts inside the step (the policy's sudden jumps toward what the reward model likes are faster than any
    controller of the coefficient), and the controller's coefficient decides how much reward the updates that stay
    in the band can still gain. Costs one extra forward pass of a minibatch a step. None: every update is kept."""
    rollback_after: int | None = Field(2, ge=1)
    """With a guard: when this many rollouts in a row measure the KL above the band, restore the policy (weights and
    optimizer state) to the last one whose rollout measured it at or below the band's top, and skip the step's
    update. The guard's per-update prediction can miss an overshoot, and above the band it refuses every update
    that would raise the predicted KL further, which can be all of them (kl_guard.py); this is the way back. 2: one
    reading above the band may be the rollout's noise. None: never roll back."""

    @model_validator(mode="after")
    def _controller_settings_used(self):
        unused = {"proportional": ("kp", "ki"), "pi": ("horizon",)}[self.controller]
        if self.target is None:
            unused = ("controller", "horizon", "kp", "ki", "guard", "rollback_after")
        elif self.guard is None and "rollback_after" in self.model_fields_set and self.rollback_after is not None:
            raise ValueError("rollback_after: it returns the policy to kl.guard's band, and no guard is set")
        for key in unused:
            if key in self.model_fields_set:
                why = f"the {self.controller} controller does not use it"
                if self.target is None:
                    why = "it is a multiple of kl.target, and no target is set" \
                        if key in ("guard", "rollback_after") else "no target is set (coef stays fixed)"
                raise ValueError(f"{key}: {why}")
        return self


class PPOStageConfig(FrozenReferencePolicy, StageConfig):
    """PPO in the style of InstructGPT / Ziegler et al.: the policy samples responses to prompts, the reward model
    scores them, a per-token KL penalty to the frozen reference is subtracted, and clipped PPO updates the policy and
    a value model (initialised from the reward model) on GAE advantages."""

    kind: Literal["ppo"] = "ppo"
    prompts: ExistingPath
    """Data card of prompt-only rows (e.g. data_cards/movie_prompts.yaml); its train split is cycled through."""
    n_prompts: int | None = Field(None, ge=1)
    """Use only the first n_prompts prompts; default all."""
    lora: LoraSettings | None = LoraSettings()
    """Policy LoRA on the upstream policy; the reference is the same weights with the adapter disabled (no second
    copy). null trains every weight and keeps an explicit frozen copy as reference."""
    value_lora: LoraSettings | None = LoraSettings()
    """Value-model LoRA on the reward model's backbone (value head initialised from the reward head); the reward is
    the same weights with the adapter disabled. null trains a full copy of the reward model as the value model."""
    train: TrainSettings = TrainSettings(learning_rate=1e-4, max_steps=100, batch_size=8, lr_scheduler="constant",
                                         save_steps=25)
    """Optimisation. max_steps counts PPO steps (one rollout batch each, -1 = `epochs` passes over the prompts);
    batch_size is the micro-batch of one forward/backward pass and batch_size x gradient_accumulation_steps the
    minibatch of one optimizer step; logging_steps/save_steps count PPO steps."""
    rollout_batch_size: int = Field(64, ge=1)
    """Prompts sampled per PPO step on each process; must be a multiple of the minibatch
    (train.batch_size x train.gradient_accumulation_steps)."""
    ppo_epochs: int = Field(4, ge=1)
    """Passes of PPO updates over each rollout batch (each in shuffled minibatches)."""
    sampling: SamplingSettings = SamplingSettings()
    """How responses are sampled (max_new_tokens, temperature, ...). Log-probabilities use the same temperature, so
    the ratio is exact when top_p is 1 and top_k is 0 (the default)."""
    kl: KLSettings = KLSettings()
    """KL penalty to the frozen reference."""
    gamma: float = Field(1.0, ge=0, le=1)
    """Discount factor of GAE."""
    lam: float = Field(0.95, ge=0, le=1)
    """Lambda of GAE (bias-variance trade-off of the advantage)."""
    cliprange: float = Field(0.2, gt=0)
    """Policy ratio clipping epsilon."""
    cliprange_value: float = Field(0.2, gt=0)
    """Value prediction clipping around the rollout values."""
    vf_coef: float = Field(0.1, ge=0)
    """Weight of the value loss in the total loss."""
    entropy_coef: float = Field(0.0, ge=0)
    """Weight of an entropy bonus (0: entropy is only logged)."""
    score_norm: Literal["none", "running", "batch"] = "none"
    """Normalise reward-model scores before use: running (divide by the running std of all scores so far, as in
    Ziegler et al.), batch (centre and scale within each rollout batch), or none."""
    score_clip: float | None = Field(None, gt=0)
    """Clip (normalised) scores to [-score_clip, score_clip]."""
    whiten_rewards: bool = False
    """Whiten the per-token rewards (KL penalty + score) of each rollout batch before GAE."""
    missing_eos_penalty: float | None = Field(None, ge=0)
    """Subtract this from the score of a response that hit max_new_tokens without ending (no EOS)."""
    repetition_penalty: float | None = Field(None, ge=0)
    """Reward shaping against the commonest reward gaming: subtract this from the score of a response in which one
    content word (4+ letters) occurs 3 or more times, the test behind the evaluation's repetition share
    (pipeline/evaluation/metrics.py). Changes what PPO optimises: say so when reporting its scores."""
    ensemble_penalty: float = Field(0.0, ge=0)
    """With an ensemble reward model (the reward stage's ``ensemble`` > 1): optimise its heads' mean less this times
    their standard deviation, so that responses the heads disagree on (where the reward model is least sure, and
    gaming pays) score lower (Coste et al. 2023, "uncertainty-weighted optimisation"). score logs the mean,
    score_std the disagreement."""
    judge_rollouts: bool = True
    """Score every step's rollouts with the recipe's gold judge (``evaluate.judge``, logged as ``gold`` beside the
    reward model's ``score``) and its panel (``judge/<spec>``); reward-model judges are left out. With the KL this
    is the over-optimisation curve: where gold stops rising while the reward model's score still climbs. Only
    logged, never trained on."""
    eval_every: int | None = Field(None, ge=1)
    """Every this many steps, and after the last, sample ``eval_n`` of the recipe's held-out evaluation prompts (its
    ``evaluate:`` section: prompts, gold judge, sampling) from the policy as it stands and log eval_gold (with
    eval_gold_ci95), eval_kl (to the reference) and eval_repetition_share: the over-optimisation curve on prompts
    training never saw. Each costs an evaluation of eval_n prompts; None: only the evaluation node after training."""
    eval_n: int = Field(64, ge=1)
    """Held-out prompts per ``eval_every`` evaluation (the first ones of the evaluation card)."""
    reference: Literal["auto", "copy"] = "auto"
    """auto: with LoRA the reference is the starting weights with the adapter disabled; copy: an explicit frozen copy
    (twice the weight memory)."""
    share_trunk: bool = True
    """Run the decoder layers the policy, its reference and the value model have in common once per rollout, and
    keep the frozen layers' output for the PPO epochs (exact: layers count as shared only where their weights are
    equal; off by itself where nothing is shared, e.g. all-layer LoRA or full fine-tuning)."""
    sample_every: int = Field(10, ge=1)
    """Every this many PPO steps, record sample generations (prompt, response, score, KL) in samples.jsonl and log a
    few."""
    merge: bool = False
    """Also write merged full weights under merged/."""

    produces: ClassVar[str] = "policy"
    accepts: ClassVar[dict[str, bool]] = {"policy": True, "reward_model": True}
    ignored_settings: ClassVar[tuple[str, ...]] = ("train.callbacks", "train.eval_steps")
    """The loop is ours, not a transformers Trainer: no trainer callbacks, and no eval set (the gold evaluation is
    the evaluation)."""

    @model_validator(mode="after")
    def _batches(self) -> "PPOStageConfig":
        minibatch = self.train.batch_size * self.train.gradient_accumulation_steps
        if self.rollout_batch_size % minibatch:
            raise ValueError(
                f"rollout_batch_size ({self.rollout_batch_size}) must be a multiple of train.batch_size x "
                f"train.gradient_accumulation_steps ({self.train.batch_size} x "
                f"{self.train.gradient_accumulation_steps} = {minibatch})")
        if self.train.optim not in OPTIMIZERS:
            raise ValueError(f"train.optim: the ppo stage supports {', '.join(OPTIMIZERS)}; got '{self.train.optim}'")
        return self

    def data_inputs(self) -> list[tuple[str, object, str]]:
        return [("prompts", self.prompts, "prompt")]

    def trained_models(self) -> dict[str, LoraSettings | None]:
        return {"lora": self.lora, "value_lora": self.value_lora}

    time_fit: ClassVar[tuple[float, float] | None] = (0.60, 5.0)

    def work_flops(self, shape, upstream: dict) -> float | None:
        from pipeline.models import duration, flops

        if duration.training_steps(self.train) is None:
            return None
        reward = upstream.get(self.from_[1]) if len(self.from_) > 1 else None
        models = (shape, self.rollout_batch_size, duration.PROMPT_TOKENS, self.sampling.max_new_tokens,
                  flops.Lora.of(shape, self.lora), flops.Lora.of(shape, self.value_lora))
        guard = self.train.batch_size if self.kl.guard is not None else 0
        step = flops.ppo_training_shared(*models, flops.Lora.of(shape, getattr(reward, "lora", None)),
                                         self.ppo_epochs, guard) if self.share_trunk \
            else flops.ppo_training(*models, self.ppo_epochs, guard)
        return self.train.max_steps * sum(step.values())

    def memory_profile(self) -> MemoryProfile:
        # the reward model's backbone doubles as the value model: a second copy of the weights; an explicit
        # reference (full fine-tuning, or `reference: copy`) is a third
        return MemoryProfile(self.train, self.lora, self.sampling.max_new_tokens + 128,
                             3.0 if self.explicit_reference() else 2.0)


CONFIG = PPOStageConfig

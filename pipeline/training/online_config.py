"""The config fields the online RL stages (`grpo`, `rloo`) share (pydantic only: cheap to import)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, model_validator

from ..config.schema import ExistingPath, LoraSettings, MemoryProfile, StageConfig, Strict, TrainSettings


class BetaControl(Strict):
    """Adapt beta each logged step so the KL TRL logs (`kl`: the mean per-token KL estimate to the reference, k3 in
    GRPO, k1 in RLOO) holds a target, with the PI controller of the ppo stage (pipeline/rl/ppo_math.py): beta stays
    at its starting value until the KL first comes within 20% below the target, then log beta follows the relative
    error."""

    target: float = Field(gt=0)
    """Target of the logged `kl`, in nats per completion token (not per completion, as in the ppo stage)."""
    kp: float = Field(1.0, ge=0)
    """Proportional gain on the relative error (kl / target - 1, clipped to [-1, 1])."""
    ki: float = Field(0.5, ge=0)
    """Integral gain on the sum of the relative errors so far."""


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
    beta_control: BetaControl | None = None
    """Move beta so the logged KL holds a target ({target, kp, ki}); null keeps beta fixed. beta is where it
    starts, so it must be above 0. The beta in use is logged as `beta` at every logging step."""
    num_iterations: int = Field(1, ge=1)
    """Optimisation passes over each batch of sampled completions (mu in the GRPO paper); above 1 the clipped
    importance ratio to the sampling policy matters."""
    epsilon: float = Field(0.2, gt=0)
    """Clipping range of the importance ratio (as in PPO)."""
    mask_truncated_completions: bool = False
    """Leave completions that hit max_completion_length without ending out of the loss (as in DAPO)."""
    judge_rollouts: bool = True
    """Score every step's completions with the recipe's gold judge (``evaluate.judge``, logged as ``gold`` beside
    TRL's ``reward``, the reward model's) and its panel (``judge/<spec>``), as TRL reward functions of weight 0: only
    logged, never trained on; reward-model judges are left out. With the KL this is the over-optimisation curve
    (``gold_peak``, ``gold_peak_step`` and ``kl_at_gold_peak`` in metrics.json)."""
    merge: bool = False
    """Also write merged full weights under merged/."""

    produces: ClassVar[str] = "policy"
    accepts: ClassVar[dict[str, bool]] = {"policy": True, "reward_model": True}

    ignored_settings: ClassVar[tuple[str, ...]] = ("train.eval_steps",)  # no eval set: the gold evaluation does that

    @model_validator(mode="after")
    def _controlled_beta_starts_above_zero(self):
        if self.beta_control is not None and self.beta == 0:
            raise ValueError("beta_control: beta is 0, which drops the reference model (no KL to control); "
                             "set beta to the starting coefficient, e.g. 0.05")
        return self

    def launch_problems(self, processes: int) -> list[tuple[str, str]]:
        train = self.train
        batch = train.batch_size * train.gradient_accumulation_steps * processes
        if batch % self.num_generations == 0:
            return []
        shown = (f"{train.batch_size} x {train.gradient_accumulation_steps}"
                 + (f" x {processes} processes" if processes > 1 else "") + f" = {batch}")
        return [("num_generations",
                 f"train.batch_size x train.gradient_accumulation_steps ({shown}) completions per optimizer step "
                 f"must be a multiple of num_generations ({self.num_generations}), so that each step holds whole "
                 f"groups of completions of the same prompt; change train.batch_size, "
                 f"train.gradient_accumulation_steps or num_generations")]

    def trained_models(self) -> dict[str, LoraSettings | None]:
        return {"lora": self.lora}

    def writes_merged(self) -> bool:
        return self.merge

    time_fit: ClassVar[tuple[float, float] | None] = (0.60, 3.0)  # not measured: PPO's, the closest kind

    def work_flops(self, shape, upstream: dict) -> float | None:
        from ..models import duration, flops

        steps = duration.training_steps(self.train)
        if steps is None:
            return None
        rows, new = steps[1], self.max_completion_length
        lora = flops.Lora.of(shape, self.lora)
        tokens, keys = rows * (duration.PROMPT_TOKENS + new), duration.PROMPT_TOKENS + new
        step = duration.sampled(shape, rows, new, lora) \
            + self.num_iterations * sum(flops.lm_training(shape, tokens, keys, lora, rows * new).values()) \
            + (flops.lm_forward(shape, tokens, keys, rows * new) if self.beta > 0 else 0.0)
        return steps[0] * step

    def memory_profile(self) -> MemoryProfile:
        return MemoryProfile(self.train, self.lora, self.max_completion_length + 128)

    def data_inputs(self) -> list[tuple[str, object, str]]:
        return [("prompts", self.prompts, "prompt")]

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

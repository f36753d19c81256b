"""Held-out evaluation along PPO training (``eval_every``): every N steps, the recipe's evaluation prompts sampled
from the policy as it stands, scored by the gold judge, with the KL to the reference and the repetition share. The
rollouts' own gold (``judge_rollouts``) shows the same curve on training prompts; this one is on prompts training
never saw, with confidence intervals."""

from __future__ import annotations

from torch import nn

from pipeline.contract import StageContext
from pipeline.data.loading import card_prompts
from pipeline.errors import PipelineError
from pipeline.evaluation.evaluate import evaluate
from pipeline.evaluation.generation import all_gather_objects
from pipeline.evaluation.judges import is_reward_judge

from ..ppo_config import PPOStageConfig


class AdapterOff(nn.Module):
    """A peft model with its adapter disabled for every forward: the reference a LoRA policy is trained against."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def get_base_model(self):  # so the evaluation's log-prob pass sees the forward's logits_to_keep
        return self.model.get_base_model()

    def forward(self, **inputs):
        with self.model.disable_adapter():
            return self.model(**inputs)


class HeldOutEvaluation:
    """What ``eval_every`` evaluates and when."""

    def __init__(self, ctx: StageContext, config: PPOStageConfig):
        section = ctx.recipe.evaluate
        if section is None:
            raise PipelineError(f"stage '{ctx.name}': eval_every evaluates on the recipe's evaluate: section (its "
                                "prompts, judge and sampling), and this recipe has none")
        if is_reward_judge(section.judge):
            raise PipelineError(f"stage '{ctx.name}': eval_every scores with the recipe's gold judge, and "
                                f"'{section.judge}' is a reward model; use a judge that is not the one optimised")
        self.every = config.eval_every
        self.settings = section.model_copy(update={"n": config.eval_n, "judges": []})
        self.prompts = card_prompts(section.prompts, "eval", config.eval_n)

    def due(self, step: int, last_step: int) -> bool:
        return step % self.every == 0 or step == last_step

    def __call__(self, policy: nn.Module, reference: nn.Module | None, tokenizer, rank: int, world: int) -> dict:
        """eval_gold (its ci95), eval_kl and eval_repetition_share of the policy now, on every process."""
        metrics, _ = evaluate(policy, reference if reference is not None else AdapterOff(policy), tokenizer,
                              self.prompts, self.settings, rank=rank, world=world)
        if metrics is not None:
            metrics = {"eval_gold": metrics["gold_mean"], "eval_gold_ci95": metrics["gold_ci95"],
                       "eval_kl": metrics["kl_mean"], "eval_kl_ci95": metrics["kl_ci95"],
                       "eval_repetition_share": metrics["repetition_share"]}
        return all_gather_objects(metrics, world)[0]  # the main process's, everywhere

"""The PPO loop: one run of the stage on one process, as named steps on typed state.

One PPO step (``ppo_step``):
1. ``make_experience``: ``sample`` responses to this process's share of the step's prompts from the current policy;
   ``score`` them without gradients (the policy's log-probs, the frozen reference's: the same weights with the LoRA
   adapter disabled, the value model's per-token values, and the reward model's score of each whole response: the
   value model's weights with its adapter disabled); ``shape_scores``; ``advantages`` (per-token rewards = -kl_coef x
   KL estimate, plus the shaped score on the last token; GAE).
2. ``update``: ppo_epochs passes over the experience in shuffled minibatches, each a ``minibatch_step`` (clipped
   policy loss + vf_coef x clipped value loss); with kl.guard (``kl_guard.py``) an update that carries the KL out of
   its band is undone and the step ends there.
3. the adaptive KL controller (if any) moves kl_coef toward the target KL; ``step_metrics`` are reduced over the
   processes in one collective and logged; every save_steps a resumable checkpoint is written.
The arithmetic lives in pipeline/rl/ppo_math.py, where it is tested against hand-computed values.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from typing import NamedTuple

import torch

from pipeline.artifacts.policy import save_policy_model
from pipeline.contract import PolicyOutput, StageContext
from pipeline.data.loading import card_prompts
from pipeline.errors import PipelineError, TrainingDiverged
from pipeline.evaluation.generation import Completion, generate
from pipeline.evaluation.judges import rollout_judges
from pipeline.evaluation.metrics import gold_peak, repeats_itself
from pipeline.models.reward_model import RewardModel, reward_token_ids
from pipeline.rl import ppo_math
from pipeline.training.distributed import uncount_accumulation_step, uses_deepspeed
from pipeline.training.trainer import append_live_log, live_log_resumed_at

from ..ppo_config import PPOStageConfig
from .checkpoint import load_checkpoint, save_checkpoint
from .experience import Experience, ScoredRollout, penalised_scores
from .held_out import HeldOutEvaluation
from .kl_guard import KLGuard
from .models import PolicyAndValue, make_optimizer, policy_logits, token_logprobs
from .rollout import Rollout, prompt_schedule
from .setup import load_models, make_accelerator, make_scheduler
from .trunk import describe as describe_trunk
from .trunk import plan_trunk

log = logging.getLogger("pipeline")

SAMPLES_FILE = "samples.jsonl"


class Minibatch(NamedTuple):
    """The current policy's and value model's outputs on some rows of an experience (M rows, W <= T columns)."""

    index: torch.Tensor
    """[M] the rows."""
    logits: torch.Tensor
    """[M, W, vocab] the policy's logits at the response positions."""
    values: torch.Tensor
    """[M, W]"""
    logprobs: torch.Tensor
    """[M, W] the policy's log-probs of the sampled tokens."""
    mask: torch.Tensor
    """[M, W] 1.0 on real response tokens."""

    @property
    def width(self) -> int:
        return self.logprobs.shape[1]


class PPORun:
    """State of one PPO stage run on one process."""

    def __init__(self, ctx: StageContext):
        self.ctx = ctx
        self.config: PPOStageConfig = ctx.config
        config = self.config
        self.prompts = card_prompts(config.prompts, "train", config.n_prompts)
        models = load_models(ctx, config)
        self.source, self.tokenizer, self.pad_id = models.source, models.tokenizer, models.pad_id
        self.reward_tokenizer = models.reward_tokenizer
        self.reward_heads = (models.scorer if models.scorer is not None else models.value).config.num_labels
        if config.ensemble_penalty and self.reward_heads == 1:
            raise PipelineError(f"stage '{ctx.name}': ensemble_penalty penalises the disagreement of an ensemble "
                                "reward model's heads, and this reward model has one; train it with ensemble: 4 "
                                "(or more), or drop ensemble_penalty")
        self.reference, self.scorer_model = models.reference, models.scorer
        self.accelerator = make_accelerator(ctx, config)
        self.world = self.accelerator.num_processes
        self.rank = self.accelerator.process_index

        trunk = plan_trunk(models.policy, models.value, self.reference, config.share_trunk)
        if ctx.is_main:
            log.info("[%s] %s", ctx.name, describe_trunk(trunk))
        model = PolicyAndValue(models.policy, models.value, trunk)
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.policy_parameters = [p for p in model.policy.parameters() if p.requires_grad]
        optimizer = make_optimizer(config, self.parameters)
        self.updates_per_step = config.ppo_epochs * (config.rollout_batch_size // self._minibatch)
        self.total_steps = self._total_steps()
        self.scheduler = make_scheduler(config, optimizer, self.total_steps * self.updates_per_step)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        for frozen in (self.reference, self.scorer_model):
            if frozen is not None:
                frozen.to(self.accelerator.device)

        kl = config.kl
        self.kl_controller = ppo_math.kl_controller(kl.coef, kl.target, kl.controller, kl.horizon, kl.kp, kl.ki)
        self.guard = KLGuard(kl.target, kl.guard, self.policy_parameters, self.optimizer, self.scheduler,
                             kl.rollback_after) if kl.guard is not None else None
        self.score_moments = ppo_math.RunningMoments()
        self.judges = rollout_judges(ctx.recipe.evaluate) if config.judge_rollouts else []
        self.held_out = HeldOutEvaluation(ctx, config) if config.eval_every is not None else None
        self.step = 0
        self.history: list[dict] = []
        self.samples: list[dict] = []
        self.first_rollout: tuple[list[Completion], torch.Tensor] | None = None

    @property
    def _minibatch(self) -> int:
        return self.config.train.batch_size * self.config.train.gradient_accumulation_steps

    def _total_steps(self) -> int:
        train = self.config.train
        if train.max_steps > 0:
            return train.max_steps
        per_step = self.config.rollout_batch_size * self.world
        return max(1, math.ceil(train.epochs * len(self.prompts) / per_step))

    # -- 1. experience ---------------------------------------------------------------------------------------------

    def make_experience(self) -> Experience:
        """Sample, score, shape the scores and compute the advantages of this step's rollout."""
        started = time.perf_counter()
        prompts, completions = self.sample()
        generate_time = time.perf_counter() - started
        scored = self.score(prompts, completions)
        if self.first_rollout is None:
            rows = self.config.train.batch_size
            self.first_rollout = (completions[:rows], scored.ref_logprobs[:rows].clone())
        # with an ensemble reward model: its mean less ensemble_penalty x its heads' disagreement (Coste et al. 2023)
        scores = self.shape_scores(scored.raw_scores - self.config.ensemble_penalty * scored.score_std, completions)
        penalty, advantages, returns = self.advantages(scored, scores)
        mask = scored.batch.response_mask.float()
        kl_per_response = ((scored.logprobs - scored.ref_logprobs) * mask).sum(-1)
        return Experience(**vars(scored), prompts=prompts, completions=completions, scores=scores, penalty=penalty,
                          advantages=advantages, returns=returns, kl=self._mean(kl_per_response.mean()),
                          kl_per_response=kl_per_response, generate_time_s=generate_time)

    def sample(self) -> tuple[list[str], list[Completion]]:
        """Responses to this process's share of the step's prompts, from the policy as it stands."""
        from trl.models.utils import unwrap_model_for_generation

        config = self.config
        per_step = config.rollout_batch_size * self.world
        indices = prompt_schedule(len(self.prompts), self.step, per_step, self.ctx.seed)
        mine = indices[self.rank * config.rollout_batch_size : (self.rank + 1) * config.rollout_batch_size]
        prompts = [self.prompts[i] for i in mine]
        seed = self.ctx.seed + 100_003 * (self.step + 1) + 7_919 * self.rank
        with unwrap_model_for_generation(self.model, self.accelerator) as unwrapped:
            completions = generate(unwrapped.policy, self.tokenizer, prompts, config.sampling, seed=seed,
                                   progress=False)
        return prompts, completions

    @torch.no_grad()
    def score(self, prompts: list[str], completions: list[Completion]) -> ScoredRollout:
        """Log-probs (policy and reference), values and reward-model scores of a rollout, in micro-batches."""
        from trl.models.utils import unwrap_model_for_generation

        config = self.config
        batch = Rollout.pack(completions, self.pad_id, self.accelerator.device)
        logprobs, ref_logprobs, values, rewards = [], [], [], []
        cache: dict[str, list] = {"policy": [], "value": []}
        micro = config.train.batch_size
        temperature = config.sampling.temperature
        with unwrap_model_for_generation(self.model, self.accelerator) as unwrapped, self.accelerator.autocast():
            unwrapped.eval()
            # With the trunk shared, the reward model is the value model's trunk with its adapter off: each rollout
            # is scored in the same pass, extended by the tokens the reward model's rendering adds after it.
            suffixes = self._reward_suffixes(prompts, completions) \
                if unwrapped.trunk.on and self.scorer_model is None else None
            for start in range(0, len(completions), micro):
                part = Rollout(*(t[start : start + micro] for t in (
                    batch.input_ids, batch.attention_mask, batch.position_ids, batch.response_ids,
                    batch.response_mask)))
                width = part.response_ids.shape[1]
                if unwrapped.trunk.on:  # one pass through the layers the models share (stages/ppo/trunk.py)
                    if suffixes is not None:
                        wide = part.with_suffixes(suffixes[start : start + micro], self.pad_id)
                        out = unwrapped.score(wide.input_ids, wide.attention_mask, wide.position_ids, width,
                                              wide.width, wide.last)
                        rewards.append(out["reward"])
                    else:
                        out = unwrapped.score(part.input_ids, part.attention_mask, part.position_ids, width)
                    logprobs.append(token_logprobs(out["logits"], part.response_ids, temperature))
                    ref_logprobs.append(token_logprobs(out["reference"], part.response_ids, temperature))
                    values.append(out["values"])
                    cache["policy"].append(out["policy"])
                    cache["value"].append(out["value"])
                    continue
                logits, value = unwrapped(part.input_ids, part.attention_mask, part.position_ids, width)
                logprobs.append(token_logprobs(logits, part.response_ids, temperature))
                values.append(value)
                ref_logprobs.append(self._reference_logprobs(unwrapped.policy, part))
            heads = torch.cat(rewards) if rewards else \
                torch.full((len(completions), self.reward_heads), float("nan"), device=self.accelerator.device)
            apart = torch.isnan(heads[:, 0]).nonzero().squeeze(-1).tolist()
            if apart:  # rows the shared pass could not score: a separate pass on the reward model's own tokens
                heads[apart] = torch.tensor(
                    self._reward_scores(unwrapped.value, [prompts[i] for i in apart], [completions[i] for i in apart]),
                    device=heads.device, dtype=heads.dtype)
            unwrapped.train()
        if self.first_rollout is None and suffixes is not None and self.ctx.is_main:
            log.info("[%s] the reward model scores %d of %d rollouts in the shared pass (%d render differently "
                     "from how they were sampled: a separate pass)", self.ctx.name, len(completions) - len(apart),
                     len(completions), len(apart))
        mask = batch.response_mask.float()
        return ScoredRollout(batch, torch.cat(logprobs) * mask, torch.cat(ref_logprobs) * mask,
                             torch.cat(values) * mask, heads.mean(-1),
                             heads.std(-1) if heads.shape[1] > 1 else torch.zeros_like(heads[:, 0]),
                             {k: torch.cat(v) for k, v in cache.items()} if cache["policy"] else None)

    def _reward_suffixes(self, prompts: list[str], completions: list[Completion]) -> list[list[int] | None]:
        """For each rollout, the tokens the reward model reads after it: the reward stage's rendering of (prompt,
        response) is the sampled tokens followed by these (typically the chat template's end of turn), or None
        where it is not (a response whose text tokenises differently from how it was sampled, or a rendering cut at
        the length limit): that row is scored by a separate pass on its own rendering."""
        rendered = reward_token_ids(self.reward_tokenizer, prompts, [c.completion for c in completions])
        suffixes: list[list[int] | None] = []
        for ids, c in zip(rendered, completions):
            sampled = c.prompt_ids + c.completion_ids
            suffixes.append(ids[len(sampled):] if len(ids) >= len(sampled) and ids[: len(sampled)] == sampled
                            else None)
        return suffixes

    def _reference_logprobs(self, policy, part: Rollout) -> torch.Tensor:
        width = part.response_ids.shape[1]
        if self.reference is not None:
            logits = policy_logits(self.reference, part, width)
        else:
            with policy.disable_adapter():
                logits = policy_logits(policy, part, width)
        return token_logprobs(logits, part.response_ids, self.config.sampling.temperature)

    def _reward_scores(self, value_model, prompts: list[str], completions: list[Completion]) -> list[list[float]]:
        """The reward model's outputs (one, or an ensemble's heads) for each (prompt, response), tokenised exactly
        as the reward stage trained."""
        texts = [c.completion for c in completions]
        # a separate reward model, or the value model with its adapter off (the reward model's own weights)
        model = self.scorer_model if self.scorer_model is not None else value_model
        with contextlib.nullcontext() if self.scorer_model is not None else value_model.disable_adapter():
            scorer = RewardModel(model, self.reward_tokenizer, self.config.train.batch_size)
            return scorer.head_scores(scorer.token_ids(prompts, texts))

    def shape_scores(self, raw: torch.Tensor, completions: list[Completion]) -> torch.Tensor:
        """The scores the advantages see: penalised, normalised (running or per batch, over all processes), clipped."""
        config = self.config
        scores = penalised_scores(raw, completions, config)
        if config.score_norm == "running":
            self.score_moments.update(self.accelerator.gather(scores).cpu())
            scores = scores / self.score_moments.scale
        elif config.score_norm == "batch":
            everyone = self.accelerator.gather(scores)
            scores = (scores - everyone.mean()) / everyone.std().clamp(min=1e-8)
        if config.score_clip is not None:
            scores = scores.clamp(-config.score_clip, config.score_clip)
        return scores

    def advantages(self, scored: ScoredRollout, scores: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(per-token KL penalty, whitened GAE advantages, returns) of a scored rollout."""
        config = self.config
        mask = scored.batch.response_mask.float()
        penalty = ppo_math.kl_penalty(scored.logprobs, scored.ref_logprobs, config.kl.estimator) * mask
        rewards = ppo_math.token_rewards(scores, penalty, self.kl_controller.value, mask)
        if config.whiten_rewards:
            rewards = ppo_math.masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = ppo_math.gae(rewards, scored.values, mask, config.gamma, config.lam)
        return penalty, ppo_math.masked_whiten(advantages, mask), returns

    # -- 2. update -------------------------------------------------------------------------------------------------

    def update(self, exp: Experience) -> dict:
        """ppo_epochs passes over the experience in shuffled minibatches; returns the mean of each training
        statistic, the number of optimizer updates kept and, with kl.guard, the KL predicted after the last one kept.

        kl.guard checks every update once it has run: where the next optimizer step begins (so no half-accumulated
        gradient is dropped) on that step's first micro-batch, and after the last update on an extra forward pass of
        one micro-batch. An update that carried the KL out of the band is undone and the step ends. When the guard
        rolls the policy back to the last one inside the band (kl.rollback_after) the step trains on nothing."""
        config, guard = self.config, self.guard
        if guard is not None and not guard.start_step(exp.kl):
            return {"updates": 0, "rolled_back": 1, "kl_predicted": guard.accepted}
        micro, ga = config.train.batch_size, config.train.gradient_accumulation_steps
        device = exp.batch.input_ids.device
        generator = torch.Generator().manual_seed(self.ctx.seed + 31 * self.step + self.rank)
        totals: dict[str, float] = {}
        count = updates = 0
        stopped = False
        self.model.train()
        for _ in range(config.ppo_epochs):
            if stopped:
                break
            order = torch.randperm(exp.rows, generator=generator)
            for start in range(0, exp.rows, micro):
                index = order[start : start + micro].to(device)
                starts_update = count % ga == 0
                with self.accelerator.accumulate(self.model):
                    out = self.forward(exp, index)
                    if guard is not None and starts_update and guard.has_update_to_check:
                        if not guard.keeps(self.predicted_kl(exp, out)):
                            updates -= 1
                            stopped = True
                            uncount_accumulation_step(self.accelerator)
                            break
                    if guard is not None and starts_update:
                        guard.snapshot()
                    stats = self.minibatch_step(exp, out)
                if self.accelerator.sync_gradients:
                    self.scheduler.step()
                    updates += 1
                for key, value in stats.items():
                    totals[key] = totals.get(key, 0.0) + value
                count += 1
        if guard is not None and not stopped and guard.has_update_to_check:  # the last update, on its first rows
            with torch.no_grad():
                out = self.forward(exp, order[:micro].to(device))
            if not guard.keeps(self.predicted_kl(exp, out)):
                updates -= 1
        stats = {**{key: value / count for key, value in totals.items()}, "updates": updates}
        if guard is not None:
            stats["kl_predicted"] = guard.accepted
        return stats

    def forward(self, exp: Experience, index: torch.Tensor) -> Minibatch:
        """The policy's and value model's outputs on rows ``index`` as the models stand now (the frozen layers'
        output comes from the experience's trunk cache where sharing keeps one)."""
        part = exp.batch.select(index)
        width = part.response_ids.shape[1]
        cached = None
        if exp.trunk_cache is not None:
            first, cut, _ = exp.batch.columns(index)
            cached = {k: v[index][:, first:cut] for k, v in exp.trunk_cache.items()}
        logits, values = self.model(part.input_ids, part.attention_mask, part.position_ids, width, cached)
        return Minibatch(index, logits, values, token_logprobs(logits, part.response_ids,
                                                               self.config.sampling.temperature),
                         part.response_mask.float())

    def minibatch_step(self, exp: Experience, out: Minibatch) -> dict[str, float]:
        """Loss, backward pass and (at the end of an accumulation cycle) optimizer step on one micro-batch."""
        config = self.config
        index, width, mask = out.index, out.width, out.mask
        pg_loss, pg_stats = ppo_math.policy_loss(
            out.logprobs, exp.logprobs[index, :width], exp.advantages[index, :width], mask, config.cliprange)
        vf_loss, vf_stats = ppo_math.value_loss(
            out.values, exp.values[index, :width], exp.returns[index, :width], mask, config.cliprange_value)
        # the entropy is only a statistic unless it is in the loss: no graph through it then
        logits = out.logits if config.entropy_coef != 0 else out.logits.detach()
        entropy = ppo_math.masked_mean(ppo_math.entropy_from_logits(logits / config.sampling.temperature), mask)
        loss = pg_loss + config.vf_coef * vf_loss - config.entropy_coef * entropy
        if not torch.isfinite(loss):
            raise self._diverged(f"the loss is {loss.item()} (policy {pg_loss.item()}, value {vf_loss.item()})")
        self.accelerator.backward(loss)
        if self.accelerator.sync_gradients and config.train.max_grad_norm > 0:
            norm = self.accelerator.clip_grad_norm_(self.parameters, config.train.max_grad_norm)
            if norm is not None and not torch.isfinite(torch.as_tensor(norm)):
                raise self._diverged(f"the gradient norm is {float(norm)}")
        self.optimizer.step()
        self.optimizer.zero_grad()
        return {"pg_loss": pg_loss.item(), "vf_loss": vf_loss.item(), "entropy": entropy.item(),
                **{k: v.item() for k, v in {**pg_stats, **vf_stats}.items()}}

    def predicted_kl(self, exp: Experience, out: Minibatch) -> float:
        """The mean KL to the reference the policy has now, predicted from rows ``out.index`` (their KL as sampled
        plus its importance-weighted drift since); the same on every process."""
        index, width = out.index, out.width
        drift = ppo_math.kl_drift(out.logprobs.detach(), exp.logprobs[index, :width],
                                  exp.ref_logprobs[index, :width], out.mask)
        return exp.kl + self._mean(drift.mean())

    def _diverged(self, what: str) -> TrainingDiverged:
        return TrainingDiverged(f"stage '{self.ctx.name}': training diverged at PPO step {self.step + 1}: {what}. "
                                f"Nothing was saved; the last good checkpoint (if any) is kept in {self.ctx.work_dir}. "
                                "Lower the learning rate, or check the reward model")

    # -- 3. one step, its metrics ----------------------------------------------------------------------------------

    def ppo_step(self) -> dict:
        config = self.config
        started = time.perf_counter()
        exp = self.make_experience()
        kl_coef = self.kl_controller.value
        train_stats = self.update(exp)
        self.kl_controller.update(exp.kl, config.rollout_batch_size * self.world)
        self.step += 1
        metrics = self.step_metrics(exp, train_stats, kl_coef, time.perf_counter() - started)
        if self.rank == 0 and (self.step == 1 or self.step % config.sample_every == 0 or self.step == self.total_steps):
            for prompt, c, score, kl in list(zip(exp.prompts, exp.completions, exp.raw_scores.tolist(),
                                                 exp.kl_per_response.tolist()))[:8]:
                self.samples.append({"step": self.step, "prompt": prompt, "response": c.completion,
                                     "score": score, "kl": kl, "eos": c.eos})
            log_samples(self.ctx.name, self.step, self.samples[-3:])
        return metrics

    def step_metrics(self, exp: Experience, train_stats: dict, kl_coef: float, elapsed: float) -> dict:
        """The step's logged quantities: each process's means, averaged over the processes in one collective."""
        mask, completions = exp.mask, exp.completions
        penalty_sum = exp.penalty.sum(-1)
        local = {
            "score": exp.raw_scores.mean(),
            "score_shaped": exp.scores.mean(),
            **({"score_std": exp.score_std.mean()} if self.reward_heads > 1 else {}),
            "kl_penalty": penalty_sum.mean(),
            "rlhf_reward": (exp.scores - kl_coef * penalty_sum).mean(),
            **train_stats,
            "explained_variance": ppo_math.explained_variance(exp.values, exp.returns, mask),
            "response_length": mask.sum(-1).mean(),
            "eos_fraction": sum(c.eos for c in completions) / len(completions),
            "repetition_share": sum(repeats_itself(c.completion) for c in completions) / len(completions),
            "tokens": mask.sum(),
            **self.judge_scores(exp),
        }
        means = self._means(local)
        tokens = means.pop("tokens")
        judged = {key: means.pop(key) for key, _ in self.judges}
        return {"step": self.step, "score": means.pop("score"), **judged,
                **({"score_std": means.pop("score_std")} if "score_std" in means else {}),
                "score_shaped": means.pop("score_shaped"),
                "kl": exp.kl, "kl_penalty": means.pop("kl_penalty"), "rlhf_reward": means.pop("rlhf_reward"),
                "kl_coef": kl_coef, **means, "lr": self.scheduler.get_last_lr()[0], "step_time_s": elapsed,
                "generate_time_s": exp.generate_time_s, "generated_tokens_per_s": tokens * self.world / elapsed}

    def evaluate_held_out(self) -> dict:
        """The held-out evaluation of ``eval_every`` (held_out.py) of the policy as it stands."""
        from trl.models.utils import unwrap_model_for_generation

        with unwrap_model_for_generation(self.model, self.accelerator) as unwrapped:
            return self.held_out(unwrapped.policy, self.reference, self.tokenizer, self.rank, self.world)

    def judge_scores(self, exp: Experience) -> dict[str, float]:
        """The mean score of this process's rollouts under each rollout judge (the recipe's gold judge and panel)."""
        texts = [c.completion for c in exp.completions]
        return {key: math.fsum(judge.score(exp.prompts, texts)) / len(texts) for key, judge in self.judges}

    def _means(self, values: dict) -> dict[str, float]:
        """Each per-process scalar of ``values`` averaged over all processes, in one collective."""
        device = self.accelerator.device
        local = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=device).reshape(())
                             for v in values.values()])
        return dict(zip(values, self.accelerator.gather(local[None]).mean(0).tolist()))

    def _mean(self, value: float | torch.Tensor) -> float:
        """The mean of one per-process scalar over all processes (a collective: every process calls it)."""
        return self._means({"value": value})["value"]

    # -- checkpoints -----------------------------------------------------------------------------------------------

    def _state(self) -> dict:
        return {"step": self.step, "kl_controller": self.kl_controller.state_dict(),
                "kl_guard": self.guard.state_dict() if self.guard is not None else None,
                "score_moments": self.score_moments.state_dict(), "history": self.history, "samples": self.samples,
                "scheduler": self.scheduler.state_dict()}

    def _resume(self) -> None:
        found = load_checkpoint(self.accelerator, self.model, self.optimizer, self.ctx.work_dir, self.ctx.name)
        if found is None:
            return
        state, tensors = found
        self.step = state["step"]
        if self.accelerator.is_main_process:
            live_log_resumed_at(self.ctx, self.step)
        self.kl_controller.load_state_dict(state["kl_controller"])
        if self.guard is not None:
            self.guard.load_state_dict(state["kl_guard"])
            self.guard.load_tensors(tensors)
        self.score_moments.load_state_dict(state["score_moments"])
        self.history, self.samples = state["history"], state["samples"]
        self.scheduler.load_state_dict(state["scheduler"])

    # -- the loop --------------------------------------------------------------------------------------------------

    def train(self) -> dict:
        from tqdm.auto import tqdm

        config = self.config
        self._resume()
        started = time.perf_counter()
        first_step = self.step
        bar = tqdm(total=self.total_steps, initial=self.step, desc=f"{self.ctx.name}: ppo", unit="step",
                   disable=not self.accelerator.is_main_process)
        while self.step < self.total_steps:
            metrics = self.ppo_step()
            if self.held_out is not None and self.held_out.due(self.step, self.total_steps):
                metrics.update(self.evaluate_held_out())
            if self.step == 1 or self.step % config.train.logging_steps == 0 or self.step == self.total_steps \
                    or "eval_gold" in metrics:
                self.history.append(metrics)
                if self.accelerator.is_main_process:
                    append_live_log(self.ctx, metrics)
                if config.train.report_to:
                    self.accelerator.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                                         step=self.step)
            bar.set_postfix(score=f"{metrics['score']:.3f}", kl=f"{metrics['kl']:.2f}",
                            **({"gold": f"{metrics['gold']:.3f}"} if "gold" in metrics else {}))
            bar.update(1)
            if self.step % config.train.save_steps == 0 and self.step < self.total_steps:
                save_checkpoint(self.accelerator, self.model, self.optimizer, self.ctx.work_dir, self.step,
                                self._state(), self.guard.tensors() if self.guard is not None else None)
        bar.close()
        if config.train.report_to:
            # not end_training(): it also destroys the process group, which this stage's last gathers and the stages
            # after it still need
            for tracker in self.accelerator.trackers:
                tracker.finish()
        steps_run = self.step - first_step
        elapsed = time.perf_counter() - started
        return self._final_metrics(steps_run, elapsed)

    def _final_metrics(self, steps_run: int, elapsed: float) -> dict:
        last = self.history[-min(len(self.history), 3):] if self.history else []
        metrics = {"global_step": self.step, "ppo_steps_run": steps_run,
                   "train_prompts": len(self.prompts),
                   "train_runtime": elapsed,
                   "seconds_per_step": elapsed / steps_run if steps_run else None,
                   "kl_coef_final": self.kl_controller.value}
        if self.history:
            metrics["score_first"] = self.history[0]["score"]
            for key in ("score", "kl", "rlhf_reward", "entropy", "response_length", "gold"):
                values = [h[key] for h in last if key in h]  # a rolled-back step trained on nothing: no entropy
                if values:
                    metrics[f"{key}_last"] = sum(values) / len(values)
            metrics.update(gold_peak(self.history))
            held_out = [h for h in self.history if "eval_gold" in h]
            if held_out:
                peak = max(held_out, key=lambda h: h["eval_gold"])
                metrics.update(eval_gold_peak=peak["eval_gold"], eval_gold_peak_step=peak["step"],
                               eval_kl_at_gold_peak=peak["eval_kl"])
        if self.guard is not None:
            metrics["kl_rollbacks"] = self.guard.rollbacks
        metrics["reference_drift"] = self._reference_drift()
        metrics["rollout_prompts_per_step"] = self.config.rollout_batch_size * self.world
        metrics["world_size"] = self.world
        metrics["distributed_type"] = str(self.accelerator.distributed_type.value)
        if self.world > 1 and not uses_deepspeed(self.accelerator):
            metrics["replica_max_diff"] = self._replica_difference()
        return metrics

    def _replica_difference(self) -> float:
        """Largest difference between the processes' copies of the trained weights (data-parallel training keeps
        them identical; anything else means the ranks trained apart)."""
        flat = torch.cat([p.detach().float().flatten() for p in self.parameters]).to(self.accelerator.device)
        everyone = self.accelerator.gather(flat[None])
        return (everyone - everyone[0]).abs().max().item()

    def _reference_drift(self) -> float | None:
        """Largest change in the reference's log-probs of the first rollout between then and now: the reference is
        frozen, so this must be 0 (reported, and warned about otherwise). Collective: every rank must call it."""
        if self.first_rollout is None:
            return None
        from trl.models.utils import unwrap_model_for_generation

        completions, before = self.first_rollout
        with torch.no_grad(), unwrap_model_for_generation(self.model, self.accelerator) as unwrapped:
            unwrapped.eval()
            batch = Rollout.pack(completions, self.pad_id, self.accelerator.device)
            after = self._reference_logprobs(unwrapped.policy, batch) * batch.response_mask
        width = min(before.shape[1], after.shape[1])
        drift = max(self.accelerator.gather(
            (before[:, :width] - after[:, :width]).abs().max().reshape(1).to(self.accelerator.device)).tolist())
        if drift > 1e-4:
            log.warning("[%s] the reference moved during training (max log-prob change %.2e)", self.ctx.name, drift)
        return drift

    def save(self) -> PolicyOutput:
        from trl.models.utils import unwrap_model_for_generation

        ctx = self.ctx
        if ctx.is_main:
            ctx.write_log_history(self.history)
            with (ctx.out_dir / SAMPLES_FILE).open("w") as handle:
                for row in self.samples:
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        # Under ZeRO-3 every rank holds a shard of each weight: gather them for saving.
        with unwrap_model_for_generation(self.model, self.accelerator) as unwrapped:
            return save_policy_model(ctx, unwrapped.policy, self.tokenizer, self.source, merge=self.config.merge)


def log_samples(stage: str, step: int, rows: list[dict]) -> None:
    for row in rows:
        prompt = row["prompt"] if isinstance(row["prompt"], str) else json.dumps(row["prompt"])
        log.info("[%s] step %d sample | score %+.3f kl %.2f | %s -> %s", stage, step, row["score"], row["kl"],
                 prompt[:60].replace("\n", " "), row["response"][:100].replace("\n", " "))

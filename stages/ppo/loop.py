"""The PPO loop: one run of the stage on one process (setup, rollout, scoring, advantages, updates, logging).

One PPO step:
1. rollout: each process samples responses to its share of the step's prompts from the current policy;
2. scoring (no gradients): the policy's log-probs, the frozen reference's (the same weights with the LoRA adapter
   disabled), the value model's per-token values, and the reward model's score of each whole response (the value
   model's weights with its adapter disabled);
3. per-token rewards = -kl_coef x KL estimate, plus the (normalised) score on the last token; GAE advantages;
4. ppo_epochs passes over the rollout in shuffled minibatches: clipped policy loss + vf_coef x clipped value loss
   (with kl.guard, an update predicted to carry the KL out of the band is undone and the step ends there);
5. the adaptive KL controller (if any) moves kl_coef toward the target KL; metrics are logged; every save_steps a
   resumable checkpoint is written.
The arithmetic lives in pipeline/rl/ppo_math.py, where it is tested against hand-computed values.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time

import torch

from pipeline.artifacts.policy import save_policy_model
from pipeline.contract import PolicyOutput, StageContext
from pipeline.data.loading import card_prompts
from pipeline.errors import PipelineError, TrainingDiverged
from pipeline.evaluation.generation import Completion, generate
from pipeline.evaluation.metrics import repeats_itself
from pipeline.models.loading import load_sequence_classifier
from pipeline.models.reward_model import RewardModel
from pipeline.rl import ppo_math
from pipeline.training.distributed import fresh_accelerator, on_gpu, uses_deepspeed
from pipeline.training.trainer import append_live_log, live_log_resumed_at, lora_config, precision_flags, tracking

from ..ppo_config import PPOStageConfig
from .checkpoint import load_checkpoint, save_checkpoint
from .models import PolicyAndValue, frozen_copy, make_optimizer, policy_logits, token_logprobs
from .rollout import Rollout, prompt_schedule
from .trunk import describe as describe_trunk
from .trunk import plan_trunk

log = logging.getLogger("pipeline")

SAMPLES_FILE = "samples.jsonl"


def penalised_scores(raw: torch.Tensor, completions: list[Completion], config: PPOStageConfig) -> torch.Tensor:
    """The reward model's scores less the configured penalties: missing_eos_penalty for a response that never
    ended, repetition_penalty for one that repeats a content word (documented reward shaping)."""
    scores = raw.clone()
    if config.missing_eos_penalty is not None:
        ended = torch.tensor([c.eos for c in completions], device=scores.device)
        scores = torch.where(ended, scores, scores - config.missing_eos_penalty)
    if config.repetition_penalty is not None:
        repeats = torch.tensor([repeats_itself(c.completion) for c in completions], device=scores.device)
        scores = torch.where(repeats, scores - config.repetition_penalty, scores)
    return scores


class PPORun:
    """State of one PPO stage run on one process."""

    def __init__(self, ctx: StageContext):
        from transformers import AutoTokenizer

        self.ctx = ctx
        self.config: PPOStageConfig = ctx.config
        config = self.config
        self.prompts = self._load_prompts()
        reward_path = ctx.upstream_of("reward_model").path
        source = ctx.policy_source()
        self.source = source
        self.tokenizer = source.tokenizer()
        reward_tokenizer = AutoTokenizer.from_pretrained(reward_path)
        if reward_tokenizer.get_vocab() != self.tokenizer.get_vocab():
            raise PipelineError(
                f"stage '{ctx.name}': the reward model ({reward_path}) and the policy ({source.path}) have different "
                "vocabularies; the value model reads the policy's tokens, so they must share one tokenizer")
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None \
            else self.tokenizer.eos_token_id

        from trl.trainer.utils import disable_dropout_in_model

        # Loaded whole (the runner drops any earlier stage's ZeRO-3 config first); DeepSpeed partitions the weights
        # when the Accelerator prepares the model.
        policy = source.load()
        # QLoRA: the reward/value backbone is quantised like the policy; only adapters train
        reward = load_sequence_classifier(reward_path, ctx.recipe.model.dtype, ctx.recipe.model.quantization)
        reward.config.pad_token_id = self.pad_id
        # Dropout would make the first PPO ratio differ from 1 for no reason (TRL's PPO turns it off too).
        disable_dropout_in_model(policy)
        disable_dropout_in_model(reward)

        self.reference = None
        if config.lora is None or config.reference == "copy":
            self.reference = frozen_copy(policy)
        if config.lora is not None:
            from peft import get_peft_model

            policy = get_peft_model(policy, lora_config(config.lora.model_copy(update={"dropout": 0.0}), model=policy))
        else:
            policy.requires_grad_(True)

        self.scorer_model = None
        if config.value_lora is not None:
            from peft import get_peft_model

            value = get_peft_model(reward, lora_config(config.value_lora.model_copy(update={"dropout": 0.0}),
                                                       "SEQ_CLS", ["score"], reward))
        else:
            self.scorer_model = frozen_copy(reward)
            value = reward.requires_grad_(True)
        self.reward_tokenizer = reward_tokenizer
        self._gradient_checkpointing(policy, value)

        flags = precision_flags(config.train.precision)
        # Created after the models are loaded (see above); any earlier stage's mixed-precision settings are dropped.
        trackers = tracking(ctx, config.train)
        self.accelerator = fresh_accelerator(
            gradient_accumulation_steps=config.train.gradient_accumulation_steps,
            mixed_precision="bf16" if flags["bf16"] else "fp16" if flags["fp16"] else "no",
            log_with=trackers["report_to"] if config.train.report_to else None,
            project_dir=os.environ.get("TENSORBOARD_LOGGING_DIR") if config.train.report_to else None)
        if config.train.report_to:
            # one tracker run per stage variant, named like the TRL stages' (TensorBoard: the same folder)
            self.accelerator.init_trackers(trackers["run_name"] if "tensorboard" not in config.train.report_to
                                           else ".", config={"stage": ctx.name, "fingerprint": ctx.fingerprint})
        self._fill_deepspeed_config()
        if config.kl.guard is not None and uses_deepspeed(self.accelerator):
            raise PipelineError(
                f"stage '{ctx.name}': kl.guard undoes an update by restoring the trainable weights and optimizer "
                "state, which DeepSpeed partitions across processes; run this stage without DeepSpeed, or drop "
                "kl.guard")
        self.world = self.accelerator.num_processes
        self.rank = self.accelerator.process_index

        trunk = plan_trunk(policy, value, self.reference, config.share_trunk)
        if ctx.is_main:
            log.info("[%s] %s", ctx.name, describe_trunk(trunk))
        model = PolicyAndValue(policy, value, trunk)
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.policy_parameters = [p for p in model.policy.parameters() if p.requires_grad]
        optimizer = make_optimizer(config, self.parameters)
        self.updates_per_step = config.ppo_epochs * (config.rollout_batch_size // self._minibatch)
        self.total_steps = self._total_steps()
        from transformers import get_scheduler

        self.scheduler = get_scheduler(config.train.lr_scheduler, optimizer,
                                       num_warmup_steps=math.ceil(config.train.warmup_ratio * self.total_steps
                                                                  * self.updates_per_step),
                                       num_training_steps=self.total_steps * self.updates_per_step)
        # The scheduler is stepped by hand once per optimizer update: accelerate's wrapper would step it once per
        # process, assuming a sharded dataloader.
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        if self.reference is not None:
            self.reference.to(self.accelerator.device)
        if self.scorer_model is not None:
            self.scorer_model.to(self.accelerator.device)

        kl = config.kl
        self.kl_controller = ppo_math.kl_controller(kl.coef, kl.target, kl.controller, kl.horizon, kl.kp, kl.ki)
        self.kl_band_reached = False
        """kl.guard: whether a rollout's KL has reached the band yet (until then nothing below it is held back)."""
        self.score_moments = ppo_math.RunningMoments()
        self.step = 0
        self.history: list[dict] = []
        self.samples: list[dict] = []
        self.first_rollout: tuple[list[Completion], torch.Tensor] | None = None

    # -- setup helpers ---------------------------------------------------------------------------------------------

    def _fill_deepspeed_config(self) -> None:
        """Fill the "auto" batch entries of a DeepSpeed config (accelerate fills them from a prepared dataloader, and
        PPO has none)."""
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        if plugin is None:
            return
        train = self.config.train
        plugin.deepspeed_config.update({
            "train_micro_batch_size_per_gpu": train.batch_size,
            "gradient_accumulation_steps": train.gradient_accumulation_steps,
            "train_batch_size": train.batch_size * train.gradient_accumulation_steps * self.accelerator.num_processes,
            "gradient_clipping": train.max_grad_norm,
        })

    @property
    def _minibatch(self) -> int:
        return self.config.train.batch_size * self.config.train.gradient_accumulation_steps

    def _load_prompts(self) -> list[str]:
        return card_prompts(self.config.prompts, "train", self.config.n_prompts)

    def _total_steps(self) -> int:
        train = self.config.train
        if train.max_steps > 0:
            return train.max_steps
        per_step = self.config.rollout_batch_size * self.world
        return max(1, math.ceil(train.epochs * len(self.prompts) / per_step))

    def _gradient_checkpointing(self, policy, value) -> None:
        enabled = self.config.train.gradient_checkpointing
        if enabled is None:
            enabled = on_gpu()
        if not enabled:
            return
        for model in (policy, value):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if hasattr(model, "enable_input_require_grads"):  # LoRA: frozen embeddings would cut the graph
                model.enable_input_require_grads()

    # -- one PPO step ----------------------------------------------------------------------------------------------

    def _rollout(self) -> tuple[list[str], list[Completion]]:
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
    def _score_rollout(self, prompts: list[str], completions: list[Completion]) -> dict:
        """Log-probs (policy and reference), values and scores of a rollout, computed without gradients in
        micro-batches."""
        from trl.models.utils import unwrap_model_for_generation

        config = self.config
        batch = Rollout.pack(completions, self.pad_id, self.accelerator.device)
        logprobs, ref_logprobs, values = [], [], []
        cache: dict[str, list] = {"policy": [], "value": []}
        micro = config.train.batch_size
        temperature = config.sampling.temperature
        with unwrap_model_for_generation(self.model, self.accelerator) as unwrapped, self.accelerator.autocast():
            unwrapped.eval()
            for start in range(0, len(completions), micro):
                part = Rollout(*(t[start : start + micro] for t in (
                    batch.input_ids, batch.attention_mask, batch.position_ids, batch.response_ids,
                    batch.response_mask)))
                width = part.response_ids.shape[1]
                if unwrapped.trunk.on:  # one pass through the layers the models share (stages/ppo/trunk.py)
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
            scores = torch.tensor(self._scores(unwrapped.value, prompts, completions),
                                  device=self.accelerator.device)
            unwrapped.train()
        mask = batch.response_mask.float()
        return {"batch": batch, "logprobs": torch.cat(logprobs) * mask, "ref_logprobs": torch.cat(ref_logprobs) * mask,
                "values": torch.cat(values) * mask, "scores": scores,
                "cache": {k: torch.cat(v) for k, v in cache.items()} if cache["policy"] else None}

    def _reference_logprobs(self, policy, part: Rollout) -> torch.Tensor:
        width = part.response_ids.shape[1]
        if self.reference is not None:
            logits = policy_logits(self.reference, part, width)
        else:
            with policy.disable_adapter():
                logits = policy_logits(policy, part, width)
        return token_logprobs(logits, part.response_ids, self.config.sampling.temperature)

    def _scores(self, value_model, prompts: list[str], completions: list[Completion]) -> list[float]:
        """The reward model's score of each (prompt, response), tokenised exactly as the reward stage trained."""
        texts = [c.completion for c in completions]
        if self.scorer_model is not None:
            return RewardModel(self.scorer_model, self.reward_tokenizer, self.config.train.batch_size).score(prompts, texts)
        with value_model.disable_adapter():
            return RewardModel(value_model, self.reward_tokenizer, self.config.train.batch_size).score(prompts, texts)

    def _shape_scores(self, raw: torch.Tensor, completions: list[Completion]) -> torch.Tensor:
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

    def _advantages(self, rollout: dict, scores: torch.Tensor) -> dict:
        config = self.config
        mask = rollout["batch"].response_mask.float()
        penalty = ppo_math.kl_penalty(rollout["logprobs"], rollout["ref_logprobs"], config.kl.estimator) * mask
        rewards = ppo_math.token_rewards(scores, penalty, self.kl_controller.value, mask)
        if config.whiten_rewards:
            rewards = ppo_math.masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = ppo_math.gae(rewards, rollout["values"], mask, config.gamma, config.lam)
        advantages = ppo_math.masked_whiten(advantages, mask)
        return {"advantages": advantages, "returns": returns, "penalty": penalty}

    def _minibatch_logprobs(self, rollout: dict, index: torch.Tensor):
        """The policy's logits, values and log-probs of the rollout rows ``index`` as the model stands now (the
        frozen layers' output comes from the rollout's cache where trunk sharing keeps one)."""
        batch: Rollout = rollout["batch"]
        part = batch.select(index)
        width = part.response_ids.shape[1]
        cached = None
        if rollout["cache"] is not None:  # the frozen layers' output for these rows, as scored
            first, cut, _ = batch.columns(index)
            cached = {k: v[index][:, first:cut] for k, v in rollout["cache"].items()}
        logits, values = self.model(part.input_ids, part.attention_mask, part.position_ids, width, cached)
        return logits, values, token_logprobs(logits, part.response_ids, self.config.sampling.temperature), part

    def _predicted_kl(self, rollout: dict, rollout_kl: float, logprobs: torch.Tensor, index: torch.Tensor,
                      mask: torch.Tensor) -> float:
        """The mean KL to the reference the policy has now, predicted from the rollout rows ``index`` (their KL
        as sampled plus its importance-weighted drift since); the same on every process."""
        width = logprobs.shape[1]
        drift = ppo_math.kl_drift(logprobs.detach(), rollout["logprobs"][index, :width],
                                  rollout["ref_logprobs"][index, :width], mask)
        return rollout_kl + self._mean(drift.mean())

    def _snapshot(self) -> list[tuple]:
        """The policy's trainable weights and their optimizer state before an update, so that kl.guard can undo the
        policy's half of it. The value model's half stands: it does not move the KL, and a value model frozen
        with the policy would keep the advantages that made the refused update (a run could then refuse every
        update from there on, as one on rlhf.yaml did for its last 14 steps)."""
        state = self.optimizer.state  # accelerate's wrapper passes the torch optimizer's through
        return [(p, p.detach().clone(), copy.deepcopy(state.get(p, {}))) for p in self.policy_parameters]

    def _keeps_update(self, rollout: dict, rollout_kl: float, logprobs: torch.Tensor, index: torch.Tensor,
                      mask: torch.Tensor, snapshot: list[tuple]) -> float | None:
        """kl.guard's check of the last update, from the policy's log-probs of rows ``index`` since: the KL it
        led to, or None after undoing it (the policy's weights and their optimizer state as in ``snapshot``) because
        it left the band."""
        kl = self.config.kl
        predicted = self._predicted_kl(rollout, rollout_kl, logprobs, index, mask)
        if not ppo_math.leaves_band(predicted, rollout_kl, kl.target, kl.guard, self.kl_band_reached):
            return predicted
        state = self.optimizer.state
        with torch.no_grad():
            for parameter, weights, saved in snapshot:
                parameter.copy_(weights)
                state[parameter] = saved
        return None

    def _train_on(self, rollout: dict, targets: dict, rollout_kl: float) -> dict:
        """ppo_epochs passes over the rollout in shuffled minibatches; returns the mean of each training statistic,
        the number of optimizer updates kept and, with kl.guard, the KL predicted after the last one kept.

        kl.guard checks every update once it has run: at the start of the next optimizer step (and, after the
        last, on an extra forward pass of one minibatch) the policy's KL is predicted on the rollout; an update
        that carried it out of the band (``ppo_math.leaves_band``) is undone and the step's remaining updates are
        dropped.
        The check sits where an optimizer step begins, so no half-accumulated gradient is dropped."""
        config = self.config
        kl = config.kl
        guard = kl.guard is not None
        if guard and rollout_kl >= kl.target / kl.guard:
            self.kl_band_reached = True
        ga = config.train.gradient_accumulation_steps
        batch: Rollout = rollout["batch"]
        rows = batch.input_ids.shape[0]
        generator = torch.Generator().manual_seed(self.ctx.seed + 31 * self.step + self.rank)
        totals: dict[str, float] = {}
        count = updates = 0
        accepted = rollout_kl
        snapshot = None
        stopped = False
        self.model.train()
        for _ in range(config.ppo_epochs):
            if stopped:
                break
            order = torch.randperm(rows, generator=generator)
            for start in range(0, rows, config.train.batch_size):
                index = order[start : start + config.train.batch_size].to(batch.input_ids.device)
                checked = guard and count % ga == 0
                with self.accelerator.accumulate(self.model):
                    logits, values, logprobs, part = self._minibatch_logprobs(rollout, index)
                    width = part.response_ids.shape[1]
                    mask = part.response_mask.float()
                    if checked and snapshot is not None:
                        predicted = self._keeps_update(rollout, rollout_kl, logprobs, index, mask, snapshot)
                        if predicted is None:
                            updates -= 1
                            stopped = True
                            # accumulate() counted this micro-batch on entry: uncount it, so that the next step's
                            # accumulation cycles start in phase
                            self.accelerator.step -= 1
                            break
                        accepted = predicted
                    if checked:
                        snapshot = self._snapshot()
                    pg_loss, pg_stats = ppo_math.policy_loss(
                        logprobs, rollout["logprobs"][index, :width], targets["advantages"][index, :width], mask,
                        config.cliprange)
                    vf_loss, vf_stats = ppo_math.value_loss(
                        values, rollout["values"][index, :width], targets["returns"][index, :width], mask,
                        config.cliprange_value)
                    entropy = ppo_math.masked_mean(ppo_math.entropy_from_logits(logits.detach() / config.sampling.temperature), mask) \
                        if config.entropy_coef == 0 else \
                        ppo_math.masked_mean(ppo_math.entropy_from_logits(logits / config.sampling.temperature), mask)
                    loss = pg_loss + config.vf_coef * vf_loss - config.entropy_coef * entropy
                    if not torch.isfinite(loss):
                        raise self._diverged(f"the loss is {loss.item()} (policy {pg_loss.item()}, value "
                                             f"{vf_loss.item()})")
                    self.accelerator.backward(loss)
                    if self.accelerator.sync_gradients and config.train.max_grad_norm > 0:
                        norm = self.accelerator.clip_grad_norm_(self.parameters, config.train.max_grad_norm)
                        if norm is not None and not torch.isfinite(torch.as_tensor(norm)):
                            raise self._diverged(f"the gradient norm is {float(norm)}")
                    self.optimizer.step()
                    self.optimizer.zero_grad()
                if self.accelerator.sync_gradients:
                    self.scheduler.step()
                    updates += 1
                stats = {"pg_loss": pg_loss.item(), "vf_loss": vf_loss.item(), "entropy": entropy.item(),
                         **{k: v.item() for k, v in {**pg_stats, **vf_stats}.items()}}
                for key, value in stats.items():
                    totals[key] = totals.get(key, 0.0) + value
                count += 1
        if guard and not stopped and snapshot is not None:  # the step's last update, checked on its first rows
            index = order[: config.train.batch_size].to(batch.input_ids.device)
            with torch.no_grad():
                _, _, logprobs, part = self._minibatch_logprobs(rollout, index)
            predicted = self._keeps_update(rollout, rollout_kl, logprobs, index, part.response_mask.float(), snapshot)
            if predicted is None:
                updates -= 1
            else:
                accepted = predicted
        stats = {**{key: value / count for key, value in totals.items()}, "updates": updates}
        if guard:
            stats["kl_predicted"] = accepted
        return stats

    def _diverged(self, what: str) -> TrainingDiverged:
        return TrainingDiverged(f"stage '{self.ctx.name}': training diverged at PPO step {self.step + 1}: {what}. "
                                f"Nothing was saved; the last good checkpoint (if any) is kept in {self.ctx.work_dir}. "
                                "Lower the learning rate, or check the reward model")

    def _mean(self, value: float | torch.Tensor) -> float:
        """Mean of a per-process scalar over all processes."""
        tensor = torch.as_tensor(value, dtype=torch.float32, device=self.accelerator.device).reshape(1)
        return self.accelerator.gather(tensor).mean().item()

    def ppo_step(self) -> dict:
        config = self.config
        started = time.perf_counter()
        prompts, completions = self._rollout()
        generated = time.perf_counter()
        rollout = self._score_rollout(prompts, completions)
        if self.first_rollout is None:
            self.first_rollout = (completions[: config.train.batch_size],
                                  rollout["ref_logprobs"][: config.train.batch_size].clone())
        raw_scores = rollout["scores"]
        scores = self._shape_scores(raw_scores, completions)
        targets = self._advantages(rollout, scores)
        mask = rollout["batch"].response_mask.float()
        kl_sum = ((rollout["logprobs"] - rollout["ref_logprobs"]) * mask).sum(-1)
        penalty_sum = targets["penalty"].sum(-1)
        kl_coef = self.kl_controller.value
        mean_kl = self._mean(kl_sum.mean())
        train_stats = self._train_on(rollout, targets, mean_kl)
        self.kl_controller.update(mean_kl, config.rollout_batch_size * self.world)
        self.step += 1
        tokens = mask.sum()
        elapsed = time.perf_counter() - started
        metrics = {
            "step": self.step,
            "score": self._mean(raw_scores.mean()),
            "score_shaped": self._mean(scores.mean()),
            "kl": mean_kl,
            "kl_penalty": self._mean(penalty_sum.mean()),
            "rlhf_reward": self._mean((scores - kl_coef * penalty_sum).mean()),
            "kl_coef": kl_coef,
            **{key: self._mean(value) for key, value in train_stats.items()},
            "explained_variance": self._mean(ppo_math.explained_variance(rollout["values"], targets["returns"], mask)),
            "response_length": self._mean(mask.sum(-1).mean()),
            "eos_fraction": self._mean(sum(c.eos for c in completions) / len(completions)),
            "repetition_share": self._mean(sum(repeats_itself(c.completion) for c in completions) / len(completions)),
            "lr": self.scheduler.get_last_lr()[0],
            "step_time_s": elapsed,
            "generate_time_s": generated - started,
            "generated_tokens_per_s": self._mean(tokens) * self.world / elapsed,
        }
        if self.rank == 0 and (self.step == 1 or self.step % config.sample_every == 0 or self.step == self.total_steps):
            for prompt, c, score, kl in list(zip(prompts, completions, raw_scores.tolist(), kl_sum.tolist()))[:8]:
                self.samples.append({"step": self.step, "prompt": prompt, "response": c.completion,
                                     "score": score, "kl": kl, "eos": c.eos})
            log_samples(self.ctx.name, self.step, self.samples[-3:])
        return metrics

    # -- checkpoints -----------------------------------------------------------------------------------------------

    def _state(self) -> dict:
        return {"step": self.step, "kl_controller": self.kl_controller.state_dict(),
                "kl_band_reached": self.kl_band_reached,
                "score_moments": self.score_moments.state_dict(), "history": self.history, "samples": self.samples,
                "scheduler": self.scheduler.state_dict()}

    def _resume(self) -> None:
        state = load_checkpoint(self.accelerator, self.model, self.optimizer, self.ctx.work_dir, self.ctx.name)
        if state is None:
            return
        self.step = state["step"]
        if self.accelerator.is_main_process:
            live_log_resumed_at(self.ctx, self.step)
        self.kl_controller.load_state_dict(state["kl_controller"])
        self.kl_band_reached = state.get("kl_band_reached", False)
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
            if self.step == 1 or self.step % config.train.logging_steps == 0 or self.step == self.total_steps:
                self.history.append(metrics)
                if self.accelerator.is_main_process:
                    append_live_log(self.ctx, metrics)
                if config.train.report_to:
                    self.accelerator.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                                         step=self.step)
            bar.set_postfix(score=f"{metrics['score']:.3f}", kl=f"{metrics['kl']:.2f}")
            bar.update(1)
            if self.step % config.train.save_steps == 0 and self.step < self.total_steps:
                save_checkpoint(self.accelerator, self.model, self.optimizer, self.ctx.work_dir, self.step, self._state())
        bar.close()
        if config.train.report_to:
            self.accelerator.end_training()
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
            for key in ("score", "kl", "rlhf_reward", "entropy", "response_length"):
                metrics[f"{key}_last"] = sum(h[key] for h in last) / len(last)
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

"""PPO with trl==1.12.0's `trl.experimental.ppo.PPOTrainer` (the last TRL release that has it), for bench/ppo_vs_trl.py.

Runs only in the separate virtualenv that bench/ppo_vs_trl.py builds (never imported by the pipeline; trl 1.12 is no
dependency of this project). It imports nothing from the pipeline: its inputs are plain folders and a jsonl file.

    <venv>/bin/python bench/_trl112_ppo_driver.py INPUTS.json OUTPUT.json

INPUTS.json: {"policy": merged SFT folder, "reward": reward-model folder, "prompts": jsonl of {"prompt", "rendered"},
"output_dir", "seed", "steps", "rollout_batch_size", "minibatch", "ppo_epochs", "response_length", "temperature",
"kl_coef", "learning_rate", "score_mode": "trl" | "pipeline"}.

score_mode "trl" (default) runs TRL as shipped and only observes:
- the reward model's score of every rollout is also computed the way the pipeline's ppo stage computes its `score`
  (decoded response re-rendered through the chat template, read at the last token), so both reward curves use the
  same scoring. TRL itself trains on (and logs as `objective/scores`) the reward read at the last response token of
  the raw prompt + response sequence, a position where the reward model was never trained to read a reward (it was
  trained on chat-rendered conversations, which end with "<|im_end|>\n"). The time of this extra scoring is measured
  and subtracted from the step times;
- response tokens (up to and including the EOS) are counted per step, for throughput;
- the time of TRL's own gc.collect() calls (two per PPO step) is recorded.
score_mode "pipeline" changes one thing: TRL trains on the pipeline's scoring (its own is not computed), which
separates the PPO algorithm from the choice of where the reward model is read.
"""

from __future__ import annotations

import gc
import json
import sys
import tempfile
import time

import torch


def main() -> None:
    inputs = json.loads(open(sys.argv[1]).read())
    output_path = sys.argv[2]
    t_import = time.perf_counter()
    import trl
    import trl.experimental.ppo.ppo_trainer as ppo_module
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        TrainerCallback,
        set_seed,
    )
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    import_s = time.perf_counter() - t_import
    seed = int(inputs["seed"])
    set_seed(seed)

    tokenizer = AutoTokenizer.from_pretrained(inputs["policy"])
    tokenizer.padding_side = "left"  # TRL's PPO needs left-padded queries (responses start at one column)
    pad_id = tokenizer.pad_token_id
    if pad_id is None or pad_id == tokenizer.eos_token_id:
        raise SystemExit("TRL's PPO derives attention masks from pad_token_id: it must exist and differ from EOS")

    rows = [json.loads(line) for line in open(inputs["prompts"]) if line.strip()]
    # The same rendered prompts the pipeline samples from (chat template, generation prompt); a rendered template
    # already holds its special tokens.
    encoded = [tokenizer(r["rendered"], add_special_tokens=False)["input_ids"] for r in rows]
    raw_prompt = {tuple(ids): r["prompt"] for ids, r in zip(encoded, rows)}
    dataset = Dataset.from_dict({"input_ids": encoded})

    policy = AutoModelForCausalLM.from_pretrained(inputs["policy"], dtype=torch.float32)
    ref_policy = AutoModelForCausalLM.from_pretrained(inputs["policy"], dtype=torch.float32)
    reward_model = AutoModelForSequenceClassification.from_pretrained(inputs["reward"], num_labels=1,
                                                                      dtype=torch.float32)
    value_model = AutoModelForSequenceClassification.from_pretrained(inputs["reward"], num_labels=1,
                                                                     dtype=torch.float32)
    for model in (reward_model, value_model):
        model.config.pad_token_id = pad_id

    rollouts, minibatch, steps = int(inputs["rollout_batch_size"]), int(inputs["minibatch"]), int(inputs["steps"])
    # local batch = per_device_train_batch_size x gradient_accumulation_steps = rollouts per step; it is split into
    # num_mini_batches minibatches, each one optimizer step (with gradient_accumulation_steps=1; larger values make
    # accelerate step once per gradient_accumulation_steps minibatches).
    out_dir = inputs.get("output_dir") or tempfile.mkdtemp(prefix="trl112-ppo-")
    args = PPOConfig(
        output_dir=out_dir, seed=seed, data_seed=seed, report_to="none", use_cpu=True, bf16=False, fp16=False,
        gradient_checkpointing=False, save_strategy="no", logging_steps=1, disable_tqdm=True,
        dataloader_num_workers=0, optim="adamw_torch", weight_decay=0.0, lr_scheduler_type="constant",
        learning_rate=float(inputs["learning_rate"]),
        per_device_train_batch_size=rollouts, gradient_accumulation_steps=1,
        num_mini_batches=rollouts // minibatch, num_ppo_epochs=int(inputs["ppo_epochs"]),
        total_episodes=steps * rollouts, local_rollout_forward_batch_size=rollouts,
        response_length=int(inputs["response_length"]), temperature=float(inputs["temperature"]),
        kl_coef=float(inputs["kl_coef"]), kl_estimator="k1", whiten_rewards=False, missing_eos_penalty=None,
        stop_token="eos", num_sample_generations=0,
        cliprange=0.2, cliprange_value=0.2, vf_coef=0.1, gamma=1.0, lam=0.95,
    )

    # -- observation (and, with score_mode "pipeline", the one substitution) -------------------------------------
    score_mode = inputs.get("score_mode", "trl")
    if score_mode not in ("trl", "pipeline"):
        raise SystemExit(f"score_mode: trl or pipeline, not {score_mode!r}")
    original_get_reward = ppo_module.get_reward
    observed = {"scores": [], "tokens": 0, "extra_s": 0.0, "gc_s": 0.0}

    @torch.no_grad()
    def pipeline_scores(queries: torch.Tensor, responses: torch.Tensor) -> list[float]:
        """As pipeline.reward_model.RewardModel.score: the (prompt, decoded response) conversation through the chat
        template, right-padded, the reward read at the last non-pad token."""
        ids = []
        for query, response in zip(queries.tolist(), responses.tolist()):
            prompt = raw_prompt[tuple(t for t in query if t != pad_id)]
            completion = tokenizer.decode([t for t in response if t != pad_id], skip_special_tokens=True)
            ids.append(tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}],
                tokenize=True, return_dict=False))
        width = max(len(r) for r in ids)
        input_ids = torch.tensor([r + [pad_id] * (width - len(r)) for r in ids])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in ids])
        was_training = reward_model.training
        reward_model.eval()
        logits = reward_model(input_ids=input_ids, attention_mask=mask).logits
        reward_model.train(was_training)
        return logits[:, 0].float().tolist()

    def observing_get_reward(model, query_responses, pad_token_id, context_length):
        if model is not reward_model:  # the value model's call
            return original_get_reward(model, query_responses, pad_token_id, context_length)
        responses = query_responses[:, context_length:]
        observed["tokens"] += int((responses != pad_token_id).sum().item())
        if score_mode == "pipeline":  # TRL trains on the pipeline's scoring; its cost is part of the step
            scores = pipeline_scores(query_responses[:, :context_length], responses)
            observed["scores"] += scores
            return None, torch.tensor(scores, dtype=torch.float32, device=query_responses.device), None
        result = original_get_reward(model, query_responses, pad_token_id, context_length)
        started = time.perf_counter()  # observation only: not counted in the step time
        observed["scores"] += pipeline_scores(query_responses[:, :context_length], responses)
        observed["extra_s"] += time.perf_counter() - started
        return result

    ppo_module.get_reward = observing_get_reward

    class TimedGC:
        """The trainer's `gc` module, with gc.collect timed (TRL 1.12 calls it twice per PPO step)."""

        def __getattr__(self, name):
            return getattr(gc, name)

        def collect(self, *a, **k):
            started = time.perf_counter()
            try:
                return gc.collect(*a, **k)
            finally:
                observed["gc_s"] += time.perf_counter() - started

    ppo_module.gc = TimedGC()

    history: list[dict] = []

    class Record(TrainerCallback):
        def __init__(self):
            self.last = None
            self.logs: dict = {}

        def on_train_begin(self, args, state, control, **kwargs):
            self.last = time.perf_counter()
            observed.update(scores=[], tokens=0, extra_s=0.0, gc_s=0.0)

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.logs = dict(logs or {})

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            wall = now - self.last
            scores = observed["scores"]
            history.append({
                "step": state.global_step,
                "trl_score": self.logs.get("objective/scores"),
                "score": sum(scores) / len(scores) if scores else None,
                "kl": self.logs.get("objective/kl"),
                "entropy": self.logs.get("objective/entropy"),
                "rlhf_reward": self.logs.get("objective/rlhf_reward"),
                "num_eos_tokens": self.logs.get("val/num_eos_tokens"),
                "rollouts": len(scores),
                "response_tokens": observed["tokens"],
                "response_length": observed["tokens"] / len(scores) if scores else None,
                "step_time_s": wall - observed["extra_s"],
                "observer_time_s": observed["extra_s"],
                "gc_time_s": observed["gc_s"],
            })
            observed.update(scores=[], tokens=0, extra_s=0.0, gc_s=0.0)
            self.last = time.perf_counter()

    t_setup = time.perf_counter()
    trainer = PPOTrainer(args=args, processing_class=tokenizer, model=policy, ref_model=ref_policy,
                         reward_model=reward_model, train_dataset=dataset, value_model=value_model,
                         callbacks=[Record()])
    inner_steps = {"n": 0}
    inner = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    inner.register_step_post_hook(lambda *_: inner_steps.__setitem__("n", inner_steps["n"] + 1))
    setup_s = time.perf_counter() - t_setup
    t_train = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t_train
    with open(output_path, "w") as handle:
        json.dump({"trl_version": trl.__version__, "torch": torch.__version__,
                   "torch_threads": torch.get_num_threads(), "import_s": import_s, "setup_s": setup_s,
                   "train_s": train_s, "score_mode": score_mode, "optimizer_steps": inner_steps["n"],
                   "optimizer_steps_per_ppo_step": inner_steps["n"] / max(1, len(history)),
                   "history": history}, handle, indent=1)


if __name__ == "__main__":
    main()

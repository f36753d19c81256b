"""How far each training stage of a recipe is from this machine's matmul rate: the FLOPs a step asks for, by model
part (pipeline/models/flops.py), beside the step time the recipe's own artifacts logged.

    .venv/bin/python bench/step_cost.py                        # recipes/rlhf.yaml and its runs/rlhf artifacts
    .venv/bin/python bench/step_cost.py --recipe recipes/rlhf.yaml --runs runs/rlhf

1. Measures this CPU's dense matmul rate in fp32 and bf16 (2048^3, best of 5, OMP_NUM_THREADS threads).
2. For sft, reward, dpo and ppo reads the stage's metrics.json and log_history: seconds per optimizer step (training
   time less the evaluations), tokens per step (TRL's num_tokens; PPO: the rendered prompts' mean length plus
   max_new_tokens, the width every rollout is padded to) and the sequence length attention runs over.
3. Prints GFLOP per step by part, the achieved GFLOP/s and its fraction of the fp32 and bf16 rates; for PPO also
   sampling and the rest of the step apart, and what the step would cost without trunk sharing.

The FLOPs count real (unpadded) tokens for sft, reward and dpo: work on padding is counted as waste, not as work.
Read the step times from a run on an otherwise idle machine, and say which CPU it was.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from front_door import cpu_name  # bench/ is on the path when a bench script runs
from stage_matrix import matmul_flops

from pipeline.artifacts.artifact import LOG_HISTORY

ROOT = Path(__file__).resolve().parent.parent


def matmul_rate(dtype: str, threads: int, trials: int = 5) -> float:
    """The best of several runs of stage_matrix.py's 2048^3 matmul probe: the rate a clean run of this CPU reaches
    (one run's figure varied by a third from run to run on a shared machine)."""
    return max(matmul_flops(dtype, threads, processes=1, seconds=0.6) for _ in range(trials))


def history(folder: Path) -> list[dict]:
    return json.loads((folder / LOG_HISTORY).read_text())


def trainer_step(folder: Path) -> tuple[float, float, int]:
    """(seconds per optimizer step without evaluations, real tokens per step, steps) of a TRL stage; checkpoint saves
    and the first step's warm-up are in the step time."""
    metrics, rows = json.loads((folder / "metrics.json").read_text()), history(folder)
    steps = metrics["global_step"]
    end = next((i for i, r in enumerate(rows) if "train_runtime" in r or "train_loss" in r), len(rows))
    evaluating = sum(r.get("eval_runtime", 0.0) for r in rows[:end])  # an evaluation after training is not in it
    trained = [r for r in rows if "num_tokens" in r and "loss" in r]
    tokens = trained[-1]["num_tokens"] / trained[-1]["step"]
    return (metrics["train_runtime"] - evaluating) / steps, tokens, steps


def lora_shape(lora, layers: int) -> tuple[int, int]:
    """(rank, adapted layers) of a stage's LoRA settings."""
    if lora is None:
        raise SystemExit("step_cost.py models LoRA stages; this stage trains every weight")
    if lora.target_modules != "all-linear":
        raise SystemExit("step_cost.py models LoRA on every linear layer (target_modules: all-linear)")
    return lora.r, len(lora.layers) if lora.layers else layers


def prompt_length(config, folder: Path) -> float:
    from transformers import AutoTokenizer

    from pipeline.data.loading import card_prompts
    from pipeline.evaluation.generation import render_prompts

    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompts = card_prompts(config.prompts, "train", config.n_prompts)
    rendered = render_prompts(tokenizer, prompts)
    return sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in rendered) / len(rendered)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "rlhf.yaml"))
    parser.add_argument("--runs", default=None, help="the recipe's output folder (default: the recipe's own)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoConfig

    from pipeline.graph.plan import make_plan
    from pipeline.models import flops
    from pipeline.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    plan = make_plan(recipe, args.runs)
    runs = plan.out_dir
    shape = flops.Shape.of(AutoConfig.from_pretrained(plan.base_model_path))
    threads = torch.get_num_threads()
    rates = {"fp32": matmul_rate("float32", threads), "bf16": matmul_rate("bfloat16", threads)}
    print(f"CPU: {cpu_name()}; {threads} threads; matmul 2048^3: fp32 {rates['fp32'] / 1e9:.1f} "
          f"GFLOP/s, bf16 {rates['bf16'] / 1e9:.1f} GFLOP/s")
    print(f"model: {shape}\nartifacts: {runs}\n")
    rows = []
    for name, config in recipe.stages.items():
        folder = runs / name
        if config.kind not in ("sft", "reward", "dpo", "ppo") or not (folder / "metrics.json").is_file():
            continue
        if config.kind == "ppo":
            rank, policy_layers = lora_shape(config.lora, shape.layers)
            _, value_layers = lora_shape(config.value_lora, shape.layers)
            reward_stage = recipe.stages[config.from_[1]]
            _, reward_layers = lora_shape(reward_stage.lora, shape.layers)
            logged = history(folder)[1:]  # the first step also pays for loading
            seconds = sum(r["step_time_s"] for r in logged) / len(logged)
            sampling_s = sum(r["generate_time_s"] for r in logged) / len(logged)
            prompt = prompt_length(config, runs / config.from_[0])
            response = config.sampling.max_new_tokens
            policy, value, reward = (flops.Lora.top(shape, layers, rank)
                                     for layers in (policy_layers, value_layers, reward_layers))
            models = (shape, config.rollout_batch_size, prompt, response, policy, value)
            guard_rows = config.train.batch_size if config.kl.guard is not None else 0
            unshared = flops.ppo_training(*models, config.ppo_epochs, guard_rows)
            cost = flops.ppo_training_shared(*models, reward, config.ppo_epochs, guard_rows) if config.share_trunk \
                else unshared
            tokens = config.rollout_batch_size * (prompt + response)
        else:
            rank, trained = lora_shape(config.lora, shape.layers)
            seconds, tokens, _ = trainer_step(folder)
            sequences = config.train.batch_size * (1 if config.kind == "sft" else 2)
            keys = tokens / sequences
            step = {"sft": flops.lm_training, "reward": flops.score_training, "dpo": flops.dpo_training}[config.kind]
            extra = {"reference_precomputed": config.precompute_ref_log_probs,
                     "reference_reuse": config.share_trunk} if config.kind == "dpo" else {}
            cost = step(shape, tokens, keys, flops.Lora.top(shape, trained, rank), **extra)
            sampling_s = unshared = None
        total = sum(cost.values())
        rows.append({"stage": name, "kind": config.kind, "tokens_per_step": tokens, "seconds_per_step": seconds,
                     "gflop_per_step": total / 1e9, "parts_gflop": {k: v / 1e9 for k, v in cost.items()},
                     "gflop_per_s": total / seconds / 1e9,
                     **{f"fraction_of_{k}": total / seconds / rate for k, rate in rates.items()}})
        print(f"{name} ({config.kind}): {tokens:,.0f} tokens a step, {total / 1e9:,.1f} GFLOP a step in "
              f"{seconds:.2f} s = {total / seconds / 1e9:.1f} GFLOP/s ({total / seconds / rates['fp32']:.0%} of fp32, "
              f"{total / seconds / rates['bf16']:.0%} of bf16)")
        for part, value in cost.items():
            print(f"    {part:<22} {value / 1e9:9.1f} GFLOP ({value / total:.0%})")
        if sampling_s is not None:
            sampled = cost["sampling: prefill"] + cost["sampling: decode"]
            rest_s = seconds - sampling_s
            print(f"    sampling: {sampled / 1e9:.1f} GFLOP in {sampling_s:.2f} s = {sampled / sampling_s / 1e9:.1f} "
                  f"GFLOP/s; the rest: {(total - sampled) / 1e9:.1f} GFLOP in {rest_s:.2f} s = "
                  f"{(total - sampled) / rest_s / 1e9:.1f} GFLOP/s")
            unshared_total = sum(unshared.values())
            print(f"    without trunk sharing: {unshared_total / 1e9:.1f} GFLOP a step ({unshared_total / total:.2f}x; "
                  f"outside sampling {(unshared_total - sampled) / (total - sampled):.2f}x)")
            rows[-1].update(sampling_seconds=sampling_s, sampling_gflop=sampled / 1e9,
                            unshared_gflop_per_step=unshared_total / 1e9)
    print(json.dumps({"cpu": cpu_name(), "matmul_gflop_per_s": {k: v / 1e9 for k, v in rates.items()},
                      "stages": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

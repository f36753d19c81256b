"""Our ppo stage against the reference implementation, PPO from trl==1.12.0 (the last TRL with a PPOTrainer), on the
same tiny setup, prompts, hyperparameters and seeds: reward-vs-step curve and throughput.

For each seed:
1. our pipeline builds the tiny setup (`recipes/tiny.yaml --only sft --only preferences --only reward`, seed N): the
   SFT policy (a LoRA adapter, exported merged for TRL), and the reward model (a plain sequence-classification folder);
2. our ppo stage runs on it with the tiny recipe's settings (full fine-tuning, value model = reward model + LoRA,
   32 rollouts per step, 4 PPO epochs in minibatches of 16, 12 new tokens, temperature 1, KL coef 0.05, lr 3e-3);
3. `trl.experimental.ppo.PPOTrainer` of trl 1.12.0 runs in a separate virtualenv (built once under
   ~/.cache/alignment-pipeline/bench/trl-1.12 with the same torch/transformers/peft/accelerate/datasets as .venv;
   never a dependency of the project) through bench/_trl112_ppo_driver.py, on the same policy, reward model (also
   the value model's initialisation), rendered prompts and hyperparameters (per_device_train_batch_size 32,
   num_mini_batches 2, num_ppo_epochs 4, response_length 12, stop_token eos, constant lr, no missing-EOS penalty).
Controls (--controls): ours with TRL's value setup and no gradient clipping (value_lora null, max_grad_norm 0), and
TRL trained on our scoring of the rollouts (see below).

"score" is the reward model's score of the step's 32 rollouts, computed for both sides as our ppo stage computes it
(prompt + decoded response through the chat template, read at the last token: what the reward stage trained on).
TRL trains on, and logs as `objective/scores` (the "TRL native" column), the reward read at the last response token
of the raw sequence instead. "KL" is the summed per-token log p - log q of the rollouts against the reference, at
rollout time. Seconds per step exclude model loading and saving; tokens/s counts response tokens (EOS included) per
second of PPO step. All processes run with OMP_NUM_THREADS=1 unless the environment sets it.

    .venv/bin/python bench/ppo_vs_trl.py [--seeds 42 43 44] [--steps 20] [--controls] [--work DIR] [--venv DIR]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VENV = Path.home() / ".cache" / "alignment-pipeline" / "bench" / "trl-1.12"
DEFAULT_WORK = Path.home() / ".cache" / "alignment-pipeline" / "bench" / "ppo_vs_trl"
TRL_VERSION = "1.12.0"
SAME_AS_VENV = ("transformers", "peft", "accelerate", "datasets")
# The tiny recipe's ppo settings (recipes/tiny.yaml), passed to TRL.
SETTINGS = {"rollout_batch_size": 32, "minibatch": 16, "ppo_epochs": 4, "response_length": 12, "temperature": 1.0,
            "kl_coef": 0.05, "learning_rate": 3e-3}


def environment() -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "TRL_EXPERIMENTAL_SILENCE": "1"}
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run(command: list[str], what: str) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=environment())
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
    return result


# ---------------------------------------------------------------------------------------------------------------
# The reference's virtualenv


def ensure_trl_venv(venv: Path) -> tuple[Path, str]:
    """A virtualenv with trl==1.12.0 (reused when it already has it); returns its python and its package versions."""
    python = venv / "bin" / "python"
    probe = "import trl, transformers, peft, accelerate, datasets, torch; " \
            "print(trl.__version__, transformers.__version__, " \
            "peft.__version__, accelerate.__version__, datasets.__version__, torch.__version__)"

    def installed() -> str | None:
        if not python.exists():
            return None
        result = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
        return result.stdout.strip() if result.returncode == 0 and result.stdout.startswith(TRL_VERSION + " ") else None

    found = installed()
    if found:
        return python, found
    print(f"building {venv} (trl=={TRL_VERSION}) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt"), f"trl=={TRL_VERSION}"]
    pins = [f"{name}=={version(name)}" for name in SAME_AS_VENV]
    result = subprocess.run(pip + pins, capture_output=True, text=True)
    if result.returncode != 0:  # trl 1.12 refuses one of our versions: take the newest it accepts
        print(f"trl=={TRL_VERSION} does not accept {' '.join(pins)}; installing the newest it accepts\n"
              f"{result.stderr[-1500:]}", flush=True)
        subprocess.run(pip + list(SAME_AS_VENV), check=True)
    found = installed()
    if not found:
        raise RuntimeError(f"{venv}: trl=={TRL_VERSION} did not install")
    return python, found


# ---------------------------------------------------------------------------------------------------------------
# The setup, built by our pipeline


def build_setup(work: Path, seed: int) -> Path:
    """sft -> preferences -> reward of the tiny recipe with this seed (cached stages are skipped by the pipeline), plus
    the inputs TRL needs: the SFT policy merged into a plain folder and the rendered prompts."""
    setup = work / f"setup-seed{seed}"
    run([sys.executable, "-m", "pipeline", "run", "recipes/tiny.yaml", "--only", "sft", "--only", "preferences",
         "--only", "reward", "--set", f"output_dir={setup}", "--set", "evaluate=null", "--set", f"seed={seed}"],
        f"tiny setup (seed {seed})")
    export = """
import json, sys
from pathlib import Path
from transformers import AutoTokenizer
from pipeline.artifacts.policy import load_policy
from pipeline.data.cards import card_splits, load_card
from pipeline.evaluation.generation import render_prompts
setup, card = Path(sys.argv[1]), sys.argv[2]
tokenizer = AutoTokenizer.from_pretrained(setup / "sft")
load_policy(setup / "sft").save_pretrained(setup / "trl-inputs" / "policy")
tokenizer.save_pretrained(setup / "trl-inputs" / "policy")
prompts = [row["prompt"] for row in card_splits(load_card(card), card)["train"]]
with open(setup / "trl-inputs" / "prompts.jsonl", "w") as handle:
    for prompt, rendered in zip(prompts, render_prompts(tokenizer, prompts)):
        handle.write(json.dumps({"prompt": prompt, "rendered": rendered}) + "\\n")
"""
    run([sys.executable, "-c", export, str(setup), "data_cards/tiny_prompts.yaml"], "exporting the merged SFT policy")
    return setup


# ---------------------------------------------------------------------------------------------------------------
# The two sides


def run_ours(setup: Path, work: Path, seed: int, steps: int, name: str, extra: list[str]) -> dict:
    out = work / f"{name}-seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(setup, out, ignore=shutil.ignore_patterns("ppo", "trl-inputs"))
    started = time.perf_counter()
    run([sys.executable, "-m", "pipeline", "run", "recipes/tiny.yaml", "--only", "ppo", "--set", f"output_dir={out}",
         "--set", "evaluate=null", "--set", f"seed={seed}", "--set", "stages.ppo.train.logging_steps=1",
         "--set", f"stages.ppo.train.max_steps={steps}", *extra], f"our ppo ({name}, seed {seed})")
    wall = time.perf_counter() - started
    history = json.loads((out / "ppo" / "log_history.json").read_text())
    metrics = json.loads((out / "ppo" / "metrics.json").read_text())
    if len(history) != steps:
        raise RuntimeError(f"{out}: expected {steps} logged steps, found {len(history)}")
    rows = [{"score": h["score"], "kl": h["kl"], "step_time_s": h["step_time_s"],
             "tokens": h["response_length"] * SETTINGS["rollout_batch_size"]} for h in history]
    return {"rows": rows, "command_s": wall, "train_runtime_s": metrics["train_runtime"]}


def run_trl(python: Path, setup: Path, work: Path, seed: int, steps: int, score_mode: str) -> dict:
    out = work / f"trl-{score_mode}-seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    inputs = {"policy": str(setup / "trl-inputs" / "policy"), "reward": str(setup / "reward"),
              "prompts": str(setup / "trl-inputs" / "prompts.jsonl"), "output_dir": str(out / "trainer"),
              "seed": seed, "steps": steps, "score_mode": score_mode, **SETTINGS}
    (out / "inputs.json").write_text(json.dumps(inputs, indent=1))
    started = time.perf_counter()
    run([str(python), str(ROOT / "bench" / "_trl112_ppo_driver.py"), str(out / "inputs.json"),
         str(out / "result.json")],
        f"trl {TRL_VERSION} ppo (seed {seed})")
    wall = time.perf_counter() - started
    result = json.loads((out / "result.json").read_text())
    if len(result["history"]) != steps or result["optimizer_steps_per_ppo_step"] != 8:
        raise RuntimeError(f"{out}: {len(result['history'])} steps, {result['optimizer_steps_per_ppo_step']} optimizer "
                           "steps per PPO step (expected 8: 4 epochs x 2 minibatches)")
    rows = [{"score": h["score"], "trl_score": h["trl_score"], "kl": h["kl"], "step_time_s": h["step_time_s"],
             "gc_s": h["gc_time_s"], "tokens": h["response_tokens"]} for h in result["history"]]
    return {"rows": rows, "command_s": wall, "train_runtime_s": result["train_s"]}


# ---------------------------------------------------------------------------------------------------------------
# Figures


def summary(run_result: dict) -> dict:
    rows = run_result["rows"]
    mean = statistics.fmean
    times = [r["step_time_s"] for r in rows]
    figures = {"steps": len(rows), "first5": mean(r["score"] for r in rows[:5]),
               "last5": mean(r["score"] for r in rows[-5:]), "final_kl": rows[-1]["kl"],
               "s_per_step": mean(times), "median_s": statistics.median(times),
               "tok_s": sum(r["tokens"] for r in rows) / sum(times)}
    if "trl_score" in rows[0]:
        figures["native_first5"] = mean(r["trl_score"] for r in rows[:5])
        figures["native_last5"] = mean(r["trl_score"] for r in rows[-5:])
        figures["gc_s_per_step"] = mean(r["gc_s"] for r in rows)
        figures["s_per_step_no_gc"] = mean(r["step_time_s"] - r["gc_s"] for r in rows)
        figures["tok_s_no_gc"] = sum(r["tokens"] for r in rows) / sum(r["step_time_s"] - r["gc_s"] for r in rows)
    return figures


def average(figures: list[dict]) -> dict:
    return {key: statistics.fmean(f[key] for f in figures) for key in figures[0]}


def table(results: dict[str, list[dict]], seeds: list[int]) -> str:
    lines = ["| run | seeds | steps | score, first 5 steps | score, last 5 steps | gain | final KL | s/step (median) "
             "| rollout tokens/s | TRL native score, first 5 / last 5 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, figures in results.items():
        if not figures:
            continue
        for label, f in [(", ".join(map(str, seeds)) + " (mean)", average(figures))] + \
                        ([(str(s), g) for s, g in zip(seeds, figures)] if len(figures) > 1 else []):
            native = f"{f['native_first5']:+.3f} / {f['native_last5']:+.3f}" if "native_first5" in f else "-"
            lines.append(f"| {name} | {label} | {f['steps']:.0f} | {f['first5']:+.3f} | {f['last5']:+.3f} | "
                         f"{f['last5'] - f['first5']:+.3f} | {f['final_kl']:.2f} | {f['s_per_step']:.3f} "
                         f"({f['median_s']:.3f}) | {f['tok_s']:.0f} | {native} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--controls", action="store_true",
                        help="also run ours with TRL's value setup and no clipping, and TRL trained on our scoring")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="setups and runs (kept for inspection)")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="the trl 1.12 virtualenv (built if missing)")
    args = parser.parse_args()
    started = time.perf_counter()
    python, versions = ensure_trl_venv(args.venv)
    print(f"reference venv {args.venv}: trl, transformers, peft, accelerate, datasets, torch = {versions}", flush=True)
    args.work.mkdir(parents=True, exist_ok=True)
    names = {"ours": "ours (tiny recipe)", "trl": f"TRL {TRL_VERSION}"}
    if args.controls:
        names.update({"ours_trl_like": "ours, value_lora null, max_grad_norm 0",
                      "trl_our_scoring": f"TRL {TRL_VERSION} trained on our scoring"})
    results: dict[str, list[dict]] = {key: [] for key in names}
    errors: list[str] = []
    for seed in args.seeds:  # interleaved, so a busy moment on the shared machine hits every side alike
        setup = build_setup(args.work, seed)
        print(f"seed {seed}: setup ready", flush=True)
        results["ours"].append(summary(run_ours(setup, args.work, seed, args.steps, "ours", [])))
        try:
            results["trl"].append(summary(run_trl(python, setup, args.work, seed, args.steps, "trl")))
        except RuntimeError as error:
            errors.append(str(error))
            print(error, flush=True)
        if args.controls:
            results["ours_trl_like"].append(summary(run_ours(
                setup, args.work, seed, args.steps, "ours_trl_like",
                ["--set", "stages.ppo.value_lora=null", "--set", "stages.ppo.train.max_grad_norm=0"])))
            try:
                results["trl_our_scoring"].append(summary(run_trl(python, setup, args.work, seed, args.steps,
                                                                  "pipeline")))
            except RuntimeError as error:
                errors.append(str(error))
                print(error, flush=True)
        print(f"seed {seed}: " + ", ".join(f"{key} last-5 score {r[-1]['last5']:+.3f}, {r[-1]['s_per_step']:.3f} s/step"
                                           for key, r in results.items() if r), flush=True)
    print()
    print(f"PPO on the tiny setup: {args.steps} steps x 32 rollouts, 4 epochs x 2 minibatches of 16, 12 new tokens; "
          f"{os.cpu_count()}-core CPU, OMP_NUM_THREADS={environment()['OMP_NUM_THREADS']}, "
          f"{datetime.date.today().isoformat()}")
    print(table({names[k]: v for k, v in results.items()}, args.seeds))
    for key in ("trl", "trl_our_scoring"):
        if results.get(key):
            f = average(results[key])
            print(f"{names[key]}: {f['gc_s_per_step']:.3f} s of each step is gc.collect() (TRL 1.12 calls it twice "
                  f"per step); without it {f['s_per_step_no_gc']:.3f} s/step, {f['tok_s_no_gc']:.0f} tokens/s")
    ours, reference = results["ours"], results["trl"]
    if ours and reference:
        a, b = average(ours), average(reference)
        print(f"reward curve: ours last-5 {a['last5']:+.3f} vs TRL {b['last5']:+.3f} "
              f"({'at least as good' if a['last5'] >= b['last5'] else 'WORSE'}); "
              f"throughput: ours {a['tok_s']:.0f} vs TRL {b['tok_s']:.0f} tokens/s "
              f"({'at least equal' if a['tok_s'] >= b['tok_s'] else 'LOWER'})")
    for error in errors:
        print("ERROR:", error.splitlines()[0])
    print(f"bench took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()

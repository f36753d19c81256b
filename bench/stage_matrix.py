"""Per-stage peak memory, throughput and model-FLOPs utilisation (MFU) of the training stages, across settings.

For each model (the tiny Llama of recipes/tiny.yaml, SmolLM2-135M-Instruct of recipes/rlhf.yaml), each training stage
(sft, reward, dpo, ppo; grpo and rloo for the tiny model, from recipes/online.yaml) and each setting below, this runs
``python -m pipeline run RECIPE --only STAGE`` (or ``accelerate launch --config_file launch/... -m pipeline run ...``)
in a fresh process tree and reads the stage's metrics.json, log_history.json and manifest.json.

    .venv/bin/python bench/stage_matrix.py                           # tiny model, every stage and setting
    .venv/bin/python bench/stage_matrix.py --models smollm2 --stages sft,dpo --settings recipe,bf16,full
    .venv/bin/python bench/stage_matrix.py --models tiny --markdown /tmp/table.md --json /tmp/cells.json
    .venv/bin/python bench/stage_matrix.py --table-from a.json b.json      # the table of earlier runs, merged

Run it on an otherwise idle machine: with another job on the cores, multi-threaded CPU training slows down many
times over (the "other CPU" column shows whether that happened).

Settings (a cell is skipped where a setting does not apply or repeats the recipe's own cell):
  recipe  the recipe's stage as written (its own LoRA / full choice), fp32, 1 process
  bf16    model.dtype=bfloat16 and stages.X.train.precision=bf16 (upstream artifacts rebuilt in bf16: the model
          dtype is part of every fingerprint)
  lora    stages.X.lora set (tiny: r 8, alpha 16; PPO also value_lora) where the recipe trains in full
  full    stages.X.lora=null (PPO also value_lora=null): every weight trained
  qlora   model.quantization=4bit: nf4 weights + LoRA. Every stage loads its starting weights quantised (the base
          model, or the upstream policy's merged weights), so the upstream artifacts of these cells are built as QLoRA
          too, and every stage the recipe trains in full (tiny: reward, the PPO policy, grpo, rloo) gets an adapter:
          the recipe check refuses full fine-tuning of quantised weights. Skipped for grpo and rloo (the same cell
          as "lora", quantised)
  ddp     2 CPU processes, launch/cpu_2proc.yaml (DDP over gloo), 1 thread each
  zero2   2 CPU processes, launch/cpu_2proc_zero2.yaml (DeepSpeed ZeRO-2 over gloo), 1 thread each
  zero3   2 CPU processes, launch/cpu_2proc_zero3.yaml (DeepSpeed ZeRO-3 over gloo), 1 thread each

Upstream artifacts (sft, preferences, reward) are built once per model and dtype in
``<out>/<model>/upstream-<fp32|bf16>`` (SmolLM2: with cut-down steps and 32 preference prompts) and symlinked into
each cell's own output folder ``<out>/<model>/cells/<stage>-<setting>``; nothing is written under runs/. Every cell
runs its stage with logging_steps=1 (so the last logged cumulative token count is the final one) and no intermediate
checkpoint; gold evaluation is off (evaluate=null).

Measurements
  peak RSS (tree)    highest sum of the resident memory of the launched process and all its descendants, sampled every
                     0.1 s with psutil (for 2-process cells: the launcher plus both ranks)
  largest process    the exact peak RSS of the largest single process of the tree (ru_maxrss from wait4(), as
                     bench/peak_rss.py reads it in-process)
  s/step, examples/s train_runtime / steps and train_samples_per_second of the trainer (HF/TRL stages), counted over
                     every step including the first, summed over processes; an example is a row (sft), a pair
                     (reward, dpo) or a completion (grpo, rloo). PPO: seconds_per_step and rollout prompts per second
                     (rollout_prompts_per_step / seconds_per_step, all processes)
  tokens/s           tokens processed / train_runtime. HF/TRL stages: the last logged cumulative ``num_tokens``
                     (TRL counts the non-padding tokens of every training batch, summed over processes: SFT sequences,
                     both sequences of a reward/DPO pair, prompt + completion for GRPO/RLOO). PPO: per step, rollouts
                     x (mean prompt length + that step's mean response length); prompt lengths are those of the
                     stage's prompt card rendered through the policy's chat template, averaged over the prompts used.
  gen tok/s          PPO only: the stage's own generated_tokens_per_s (response tokens per second of PPO step), mean
                     over steps
  other CPU          cores used by processes outside the cell while it ran (system CPU time minus the tree's own,
                     over wall time): above ~0.2 the cell shared the machine and its times are inflated. Before each
                     cell the bench waits (--wait-quiet) for the machine to be idle.
  MFU                model FLOPs of the run / train_runtime / this machine's matmul FLOP/s, measured at the start of
                     the bench with the cell's precision, thread count and process count (2048 x 2048 torch.matmul
                     loop, ~2 s; 2-process cells: two 1-thread processes at once, their rates summed)

Model FLOPs: pipeline/models/flops.py's count of the matmuls, the one model bench/step_cost.py and bench/gpu_bench.py
use too (as torch.utils.flop_counter.FlopCounterMode counts them; a unit test checks it exactly on a tiny Llama for
full fine-tuning and for LoRA on any layers and projections). Attention is counted over the mean sequence length (TRL's
num_tokens over the sequences trained: steps x batch_size x gradient_accumulation_steps x processes, both sequences of
a pair), the output head included (with tied embeddings the head's matmul is real work even though its weight is the
embedding), on the positions whose logits are computed (all of them in the TRL trainers; response tokens only in PPO
and in generation, completion tokens in GRPO/RLOO training). The backward is what autograd runs: full fine-tuning dX
and dW of every weight; LoRA from the lowest adapted layer up, the adapters' weight gradients and no frozen weight's.
  sft, reward        one training pass (forward and backward) over TRL's num_tokens
  dpo                the policy's training pass + one reference forward (adapter disabled, or the frozen copy when full)
  ppo, per step      T = rollouts x (prompt + that step's mean response): sampling (prefill and decode with a KV
                     cache), scoring forwards (policy, reference, value model, reward model), ppo_epochs x (policy
                     training + value training on T); every model through every layer (trunk sharing, where the stage
                     uses it, saves work this count keeps: it counts what the models ask for, as before)
  grpo, rloo         sampling of the completions + reference forward (beta > 0) + reward model forward + policy
                     training on T (T = TRL's num_tokens, completion tokens from completions/mean_length)
Until the bench used flops.py it had its own formula: full fine-tuning 3 x (2 x N x T), LoRA 2 x N x T + 2 x N_bwd x T
+ 6 x trainable x T (N: the linear layers' weights; N_bwd: those at or above the lowest adapted layer), generation as
one forward: attention products left out (under 2% of the matmul work for SmolLM2 at these lengths, about 10% for the
tiny model) and the LoRA backward approximated (within 0.3% on SmolLM2). The tables of docs/PERFORMANCE.md measured
on 2026-11-24/25 were computed with it. flops.py counts about 2-3% more on SmolLM2 at these lengths and 6-11% more on
the tiny model (mostly attention), so a rerun reads that much higher an MFU at the same speed.
QLoRA counts the same FLOPs as LoRA against the fp32 peak (bitsandbytes dequantises to the compute dtype, float32).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import yaml

from pipeline.models import flops

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
DEFAULT_OUT = Path.home() / ".cache" / "alignment-pipeline" / "bench" / "stage_matrix"
CORES = os.cpu_count() or 1

SETTINGS = ("recipe", "bf16", "lora", "full", "qlora", "ddp", "zero2", "zero3")
LAUNCH = {"ddp": "launch/cpu_2proc.yaml", "zero2": "launch/cpu_2proc_zero2.yaml",
          "zero3": "launch/cpu_2proc_zero3.yaml"}
UPSTREAM = ("sft", "preferences", "reward")

MODELS = {
    "tiny": {
        "recipe": "recipes/tiny.yaml",
        "online_recipe": "recipes/online.yaml",   # grpo and rloo; its sft/preferences/reward blocks equal tiny.yaml's
        "stages": ("sft", "reward", "dpo", "ppo", "grpo", "rloo"),
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "max_steps": {},                            # the recipe's own (seconds per stage)
        "upstream_overrides": [],
        "timeout": 300,
    },
    "smollm2": {
        "recipe": "recipes/rlhf.yaml",
        "online_recipe": None,
        "stages": ("sft", "reward", "dpo", "ppo"),
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
        "max_steps": {"sft": 4, "reward": 4, "dpo": 3, "ppo": 2},
        # Upstream artifacts only feed the measured stages: a few steps and 32 prompts x 4 samples are enough (and keep
        # the reward/DPO end-of-stage evaluation on the held-out pairs short).
        "upstream_overrides": ["stages.sft.train.max_steps=4", "stages.preferences.n_prompts=32",
                               "stages.reward.train.max_steps=4"],
        "timeout": 420,
    },
}


# ---------------------------------------------------------------------------------------------------------------
# Process-tree measurement


def _tree_rss(root) -> int:
    import psutil

    total = 0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_measured(cmd: list[str], env: dict, log_path: Path, timeout: float) -> dict:
    """Run ``cmd`` in its own process group; wall time, exit code, sampled peak RSS of the tree, exact peak RSS of its
    largest process (wait4's ru_maxrss covers the child and every descendant it waited for)."""
    import psutil

    log_path.parent.mkdir(parents=True, exist_ok=True)
    cpu_before = psutil.cpu_times()
    started = time.perf_counter()
    with log_path.open("w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        root = psutil.Process(proc.pid)
        peak, timed_out, status, usage = 0, False, None, None
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, _tree_rss(root))
            if time.perf_counter() - started > timeout:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.1)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    cpu_after = psutil.cpu_times()
    busy = sum(getattr(cpu_after, k) - getattr(cpu_before, k) for k in ("user", "nice", "system", "irq", "softirq"))
    ours = usage.ru_utime + usage.ru_stime
    return {"rc": proc.returncode, "timed_out": timed_out, "command_s": wall,
            "peak_tree_mib": peak / 2**20, "peak_proc_mib": usage.ru_maxrss / 1024,
            "cpu_s": ours, "other_cpu_cores": max(0.0, busy - ours) / wall}


def wait_quiet(max_wait: float, threshold: float = 0.3) -> float:
    """Wait (up to max_wait seconds) until the rest of the machine uses under ``threshold`` cores; returns the cores
    in use when it stopped waiting."""
    import psutil

    deadline = time.perf_counter() + max_wait
    while True:
        busy = psutil.cpu_percent(interval=2.0) / 100 * CORES
        if busy < threshold or time.perf_counter() > deadline:
            return busy
        time.sleep(10)


# ---------------------------------------------------------------------------------------------------------------
# Machine matmul FLOP/s

MATMUL = """
import sys, time, torch
threads, dtype, seconds = int(sys.argv[1]), getattr(torch, sys.argv[2]), float(sys.argv[3])
torch.set_num_threads(threads)
n = 2048
a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
for _ in range(2):
    a @ b
count, start = 0, time.perf_counter()
while time.perf_counter() - start < seconds:
    a @ b
    count += 1
print(2 * n**3 * count / (time.perf_counter() - start))
"""


def matmul_flops(dtype: str, threads: int, processes: int, seconds: float = 2.0) -> float:
    """FLOP/s of a 2048 x 2048 matmul loop: ``processes`` fresh processes at once, ``threads`` threads each, summed."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    procs = [subprocess.Popen([PYTHON, "-c", MATMUL, str(threads), dtype, str(seconds)], env=env,
                              stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    return sum(float(p.communicate()[0].strip()) for p in procs)


# ---------------------------------------------------------------------------------------------------------------
# Model FLOPs


def model_shape(model_path: str) -> flops.Shape:
    """The shape pipeline/models/flops.py counts a model's FLOPs from, read from its config."""
    from transformers import AutoConfig

    return flops.Shape.of(AutoConfig.from_pretrained(model_path))


def sequences_trained(config: dict, steps: int, world: int, per_example: int = 1) -> int:
    """Sequences a TRL stage trained on (``per_example``: 2 for the chosen and rejected of a pair): the mean length,
    TRL's num_tokens over this, is the key length attention is counted over."""
    train = config.get("train", {})
    return steps * train.get("batch_size", 8) * train.get("gradient_accumulation_steps", 1) * world * per_example


def trained_tokens(history: list[dict]) -> float | None:
    """TRL's last logged cumulative num_tokens (every process's non-padding tokens), None where it logged none."""
    return next((h["num_tokens"] for h in reversed(history) if "num_tokens" in h), None)


def run_flops(stage: str, shape: flops.Shape, config: dict, metrics: dict, history: list[dict], world: int,
              prompt_len: float | None = None) -> float | None:
    """Model FLOPs of a finished run of a training stage (the module docstring says what is counted), from its stage
    config (the recipe's, or the manifest's), metrics.json and log_history.json with a line for every step; PPO also
    needs the mean rendered prompt length. None where TRL logged no token count."""
    lora = flops.Lora.of(shape, config.get("lora", {}))  # absent: the stage's default LoRA; null: full fine-tuning
    if stage == "ppo":
        value_lora = flops.Lora.of(shape, config.get("value_lora", {}))
        rollouts, epochs = metrics["rollout_prompts_per_step"], config.get("ppo_epochs", 4)
        return sum(sum(flops.ppo_training(shape, rollouts, prompt_len, h["response_length"], lora, value_lora,
                                          epochs).values()) for h in history)
    tokens, steps = trained_tokens(history), metrics["global_step"]
    if tokens is None:
        return None
    keys = tokens / sequences_trained(config, steps, world, 2 if stage in ("reward", "dpo") else 1)
    if stage == "sft":
        return sum(flops.lm_training(shape, tokens, keys, lora).values())
    if stage == "reward":
        return sum(flops.score_training(shape, tokens, keys, lora).values())
    if stage == "dpo":  # the reference forward counted on every pair trained, precomputed or not
        return sum(flops.dpo_training(shape, tokens, keys, lora).values())
    # grpo, rloo: the sequences are the completions, each with its prompt
    per_step = sequences_trained(config, 1, world)
    completions = steps * per_step
    completion = sum(h["completions/mean_length"] * per_step for h in history if "completions/mean_length" in h)
    reference = 1 if config.get("beta", 0.05) > 0 else 0
    return (sum(flops.sampling(shape, completions, (tokens - completion) / completions, completion / completions,
                               lora).values())
            + reference * flops.lm_forward(shape, tokens, keys, positions=completion)
            + flops.score_forward(shape, tokens, keys)
            + sum(flops.lm_training(shape, tokens, keys, lora, positions=completion).values()))


# ---------------------------------------------------------------------------------------------------------------
# Cells


@dataclass
class Cell:
    model: str
    stage: str
    setting: str
    recipe: str
    overrides: list[str]
    processes: int
    threads: int
    precision: str
    training: str                            # "LoRA", "full", "QLoRA", "policy full, value LoRA", ...
    chain: str                               # upstream chain: fp32, bf16 or qlora
    result: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.stage}-{self.setting}"


def _stage_config(recipe: str, stage: str, overrides: list[str]) -> dict:
    from pipeline.recipe.overrides import apply_override

    raw = yaml.safe_load((ROOT / recipe).read_text())
    for override in overrides:
        problem = apply_override(raw, override)
        if problem is not None:
            raise SystemExit(f"{recipe}: {problem}")
    return raw["stages"][stage]


def model_override(recipe: str, **changes) -> str:
    """A ``--set model=...`` override changing model fields (the recipe may give the model as a plain string)."""
    model = yaml.safe_load((ROOT / recipe).read_text())["model"]
    model = {"source": model} if isinstance(model, str) else dict(model)
    return "model=" + json.dumps({**model, **changes})


def qlora_overrides(recipe: str, lora: dict) -> list[str]:
    """``model.quantization=4bit`` plus an adapter for every stage (and PPO value model) the recipe trains in full:
    the recipe check refuses full fine-tuning of quantised weights, and every stage, upstream ones included, loads
    its starting weights quantised."""
    raw = yaml.safe_load((ROOT / recipe).read_text())["stages"]
    extra = [model_override(recipe, quantization="4bit")]
    for name, other in raw.items():
        for key in ("lora", "value_lora"):
            if key in other and other[key] is None:
                extra.append(f"stages.{name}.{key}={json.dumps(lora)}")
    return extra


def _training_kind(stage: str, config: dict, quantized: bool) -> str:
    policy = "full" if config.get("lora", {}) is None else ("QLoRA" if quantized else "LoRA")
    if stage == "ppo":
        value = "full" if config.get("value_lora", {}) is None else ("QLoRA" if quantized else "LoRA")
        return policy if policy == value else f"policy {policy}, value {value}"
    if stage == "reward" and policy != "full":
        return f"{policy} (+ score head)"
    return policy


def make_cells(model: str, stages: list[str], settings: list[str], threads_1: int, threads_2: int,
               steps: dict[str, int]) -> list[Cell]:
    spec = MODELS[model]
    cells = []
    for stage in stages:
        if stage not in spec["stages"]:
            continue
        recipe = spec["online_recipe"] if stage in ("grpo", "rloo") else spec["recipe"]
        base = _stage_config(recipe, stage, [])
        prefix = f"stages.{stage}"
        common = ["evaluate=null", f"{prefix}.train.logging_steps=1", f"{prefix}.train.save_steps=100000",
                  *([f"{prefix}.train.max_steps={steps[stage]}"] if stage in steps else [])]
        # Every cell carries the upstream overrides (later ones win), so the upstream fingerprints match.
        common = spec["upstream_overrides"] + common
        recipe_lora = base.get("lora", "default") is not None
        for setting in settings:
            extra, processes, threads, precision, chain = [], 1, threads_1, "fp32", "fp32"
            if setting == "bf16":
                extra = [model_override(recipe, dtype="bfloat16"), f"{prefix}.train.precision=bf16"]
                precision, chain = "bf16", "bf16"
            elif setting == "lora":
                value_full = stage == "ppo" and base.get("value_lora", {}) is None
                if recipe_lora and not value_full:
                    continue  # the recipe cell is the LoRA cell
                extra = [f"{prefix}.lora={json.dumps(spec['lora'])}"]
                if stage == "ppo":
                    extra.append(f"{prefix}.value_lora={json.dumps(spec['lora'])}")
            elif setting == "full":
                value_lora = stage == "ppo" and base.get("value_lora", {}) is not None
                if not recipe_lora and not value_lora:
                    continue  # the recipe cell is the full cell
                extra = [f"{prefix}.lora=null"] + ([f"{prefix}.value_lora=null"] if stage == "ppo" else [])
            elif setting == "qlora":
                if not recipe_lora and stage not in ("reward", "ppo"):
                    continue  # a stage the recipe trains in full would only repeat the "lora" cell, quantised
                extra = qlora_overrides(recipe, spec["lora"])
                precision, chain = "fp32", "qlora"
            elif setting in LAUNCH:
                processes, threads = 2, threads_2
            overrides = common + extra
            config = _stage_config(recipe, stage, overrides)
            training = _training_kind(stage, config, setting == "qlora")
            cells.append(Cell(model, stage, setting, recipe, overrides, processes, threads, precision, training, chain))
    return cells


def _env(threads: int) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads), "TRL_EXPERIMENTAL_SILENCE": "1"}


def build_upstream(model: str, chain: str, out: Path, threads: int) -> tuple[Path, dict]:
    """sft, preferences and reward artifacts of this model and dtype chain, built once (a cached run is a no-op)."""
    spec = MODELS[model]
    folder = out / model / f"upstream-{chain}"
    overrides = ["evaluate=null", *spec["upstream_overrides"]] + \
        ([model_override(spec["recipe"], dtype="bfloat16")] if chain == "bf16" else []) + \
        (qlora_overrides(spec["recipe"], spec["lora"]) if chain == "qlora" else [])
    cmd = [PYTHON, "-m", "pipeline", "run", spec["recipe"], "--output-dir", str(folder),
           *[a for s in UPSTREAM for a in ("--only", s)], *[a for o in overrides for a in ("--set", o)]]
    log = out / model / "logs" / f"upstream-{chain}.log"
    run = run_measured(cmd, _env(threads), log, 1800)
    if run["rc"] != 0:
        run["error"] = f"building the {chain} upstream artifacts failed: {_last_error(log)}"
    return folder, run


def _last_error(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    for marker in ("Error", "error:", "Exception", "Traceback", "terminate called", "Killed"):
        hits = [line for line in lines if marker in line and not line.startswith("$ ")]
        if hits:
            return hits[-1][:300]
    return lines[-1][:300] if lines else "no output"


def run_cell(cell: Cell, upstream: Path, out: Path, timeout: float, busy_before: float) -> None:
    folder = out / cell.model / "cells" / cell.name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    config = _stage_config(cell.recipe, cell.stage, cell.overrides)
    for up in config.get("from", []) if isinstance(config.get("from"), list) else [config.get("from")]:
        if up:
            (folder / up).symlink_to(upstream / up, target_is_directory=True)
    args = ["-m", "pipeline", "run", cell.recipe, "--output-dir", str(folder), "--only", cell.stage,
            *[a for o in cell.overrides for a in ("--set", o)]]
    if cell.processes > 1:
        cmd = [ACCELERATE, "launch", "--config_file", LAUNCH[cell.setting], "--num_cpu_threads_per_process",
               str(cell.threads), *args]
    else:
        cmd = [PYTHON, *args]
    log = out / cell.model / "logs" / f"{cell.name}.log"
    result = run_measured(cmd, _env(cell.threads), log, timeout)
    result["busy_before_cores"] = busy_before
    result["command"] = " ".join(cmd)
    artifact = folder / cell.stage
    if result["rc"] == 0 and (artifact / "metrics.json").exists():
        result["metrics"] = json.loads((artifact / "metrics.json").read_text())
        result["manifest"] = {k: v for k, v in json.loads((artifact / "manifest.json").read_text()).items()
                              if k in ("wall_time_s", "import_time_s", "world_size", "distributed_type")}
        history = artifact / "log_history.json"
        result["history"] = json.loads(history.read_text()) if history.exists() else []
    else:
        result["error"] = ("timed out after %d s" % timeout) if result["timed_out"] else _last_error(log)
        if result["rc"] == 0:
            result["error"] = "exited 0 but wrote no metrics.json"
    cell.result = result
    # The cell's artifact is not needed afterwards; SmolLM2 ones are hundreds of MB each.
    if cell.model != "tiny":
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# Figures


def prompt_lengths(stage_config: dict, tokenizer_path: str) -> float:
    """Mean token length of the stage's training prompts rendered through the chat template (as PPO samples them)."""
    from pipeline.data.cards import card_splits, load_card
    from pipeline.evaluation.generation import render_prompts
    from pipeline.models.loading import load_tokenizer

    card_path = ROOT / stage_config["prompts"]
    prompts = [row["prompt"] for row in card_splits(load_card(card_path), str(stage_config["prompts"]))["train"]]
    if stage_config.get("n_prompts"):
        prompts = prompts[: stage_config["n_prompts"]]
    tokenizer = load_tokenizer(tokenizer_path)
    rendered = render_prompts(tokenizer, prompts)
    special = not getattr(tokenizer, "chat_template", None)
    return statistics.fmean(len(tokenizer(text, add_special_tokens=special)["input_ids"]) for text in rendered)


def figures(cell: Cell, shape: flops.Shape, peaks: dict, prompt_len: float | None) -> dict:
    """Steps, s/step, examples/s, tokens/s, model FLOPs and MFU of a finished cell."""
    r = cell.result
    metrics, history = r["metrics"], r.get("history", [])
    config = _stage_config(cell.recipe, cell.stage, cell.overrides)
    peak = peaks[(cell.precision, cell.threads, cell.processes)]
    out: dict = {"wall_s": r["manifest"]["wall_time_s"], "runtime_s": metrics.get("train_runtime")}
    if cell.stage == "ppo":
        rollouts = metrics["rollout_prompts_per_step"]
        tokens = sum(rollouts * (prompt_len + h["response_length"]) for h in history)
        out.update(steps=metrics["ppo_steps_run"], s_per_step=metrics["seconds_per_step"],
                   examples_per_s=rollouts / metrics["seconds_per_step"],
                   tokens=tokens, tokens_per_s=tokens / metrics["train_runtime"],
                   gen_tokens_per_s=statistics.fmean(h["generated_tokens_per_s"] for h in history))
    else:
        steps = metrics["global_step"]
        tokens = trained_tokens(history)
        runtime = metrics["train_runtime"]
        out.update(steps=steps, s_per_step=runtime / steps, examples_per_s=metrics.get("train_samples_per_second"),
                   tokens=tokens, tokens_per_s=tokens / runtime if tokens else None)
    flop_count = run_flops(cell.stage, shape, config, metrics, history, r["manifest"].get("world_size", 1), prompt_len)
    out["flops"] = flop_count
    out["achieved_flops"] = flop_count / out["runtime_s"] if flop_count else None
    out["peak_flops"] = peak
    out["mfu"] = out["achieved_flops"] / peak if flop_count else None
    return out


def _fmt(value, digits=1, unit=""):
    if value is None:
        return "-"
    if isinstance(value, float) and value >= 1000:
        return f"{value:,.0f}{unit}"
    return f"{value:.{digits}f}{unit}"


def _mfu(value) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.2f}%" if value >= 0.001 else f"{100 * value:.3f}%"


def markdown(cells: list[Cell]) -> str:
    header = ("| model | stage | setting | trains | prec. | procs x threads | steps | s/step | examples/s | tokens/s "
              "| PPO gen tok/s | peak RSS tree MiB | largest proc MiB | model GFLOP/s | MFU | stage wall s "
              "| other CPU |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for cell in cells:
        r = cell.result
        head = (f"| {cell.model} | {cell.stage} | {cell.setting} | {cell.training} | {cell.precision} | "
                f"{cell.processes} x {cell.threads} |")
        if not r:
            lines.append(head + " not run |" + " |" * 11)
            continue
        if "error" in r:
            lines.append(head + f" **failed** (exit {r['rc']}): {r['error'].replace('|', '/')} | - | - | - | - | - "
                                f"| {_fmt(r['peak_tree_mib'], 0)} | {_fmt(r['peak_proc_mib'], 0)} | - | - | - | "
                                f"{r['other_cpu_cores']:.2f} |")
            continue
        f = r["figures"]
        lines.append(
            head + f" {f['steps']} | {_fmt(f['s_per_step'], 3)} | {_fmt(f['examples_per_s'], 1)} | "
            f"{_fmt(f['tokens_per_s'], 0)} | {_fmt(f.get('gen_tokens_per_s'), 0)} | {_fmt(r['peak_tree_mib'], 0)} | "
            f"{_fmt(r['peak_proc_mib'], 0)} | {_fmt(f['achieved_flops'] / 1e9 if f['achieved_flops'] else None, 2)} | "
            f"{_mfu(f['mfu'])} | {_fmt(f['wall_s'], 1)} | {r['other_cpu_cores']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny", help="comma-separated: tiny, smollm2 (default tiny)")
    parser.add_argument("--stages", default="sft,reward,dpo,ppo,grpo,rloo",
                        help="comma-separated training stages (grpo and rloo: tiny only)")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, of {', '.join(SETTINGS)}")
    parser.add_argument("--skip", default="", help="comma-separated cells to leave out, as model:stage-setting "
                                                   "(e.g. smollm2:ppo-zero3)")
    parser.add_argument("--max-steps", action="append", default=[], metavar="STAGE=N",
                        help="steps of a stage's cells (default: the recipe's for tiny; SmolLM2 sft 4, reward 4, "
                             "dpo 3, ppo 2)")
    parser.add_argument("--threads", type=int, default=CORES, help="threads of a 1-process cell (default: all cores)")
    parser.add_argument("--threads-2proc", type=int, default=max(1, CORES // 2),
                        help="threads of each process of a 2-process cell (default: cores / 2)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"bench folder (default {DEFAULT_OUT})")
    parser.add_argument("--timeout", type=float, help="seconds per cell (default: 300 tiny, 420 SmolLM2)")
    parser.add_argument("--wait-quiet", type=float, default=600,
                        help="before each cell, wait up to this many seconds for other processes to leave the CPUs "
                             "(default 600)")
    parser.add_argument("--table-from", type=Path, nargs="+", metavar="JSON",
                        help="run nothing: print the table of earlier --json results (a cell in a later file "
                             "replaces the same cell of an earlier one)")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    parser.add_argument("--json", type=Path, help="also write every cell's raw result here")
    args = parser.parse_args()

    if args.table_from:
        merged: dict[str, Cell] = {}
        for path in args.table_from:
            for raw in json.loads(path.read_text())["cells"]:
                cell = Cell(**raw)
                merged[f"{cell.model}:{cell.name}"] = cell
        stage_order = ("sft", "reward", "dpo", "ppo", "grpo", "rloo")
        ordered = sorted(merged.values(), key=lambda c: (list(MODELS).index(c.model), stage_order.index(c.stage),
                                                         SETTINGS.index(c.setting)))
        table = markdown(ordered)
        print(table)
        if args.markdown:
            args.markdown.write_text(table + "\n")
        return

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    for name in settings:
        if name not in SETTINGS:
            parser.error(f"unknown setting {name}; choose from {', '.join(SETTINGS)}")
    steps_override = dict((k, int(v)) for k, v in (item.split("=") for item in args.max_steps))

    started = time.perf_counter()
    began = datetime.now(timezone.utc)
    cells: list[Cell] = []
    for model in models:
        steps = {**MODELS[model]["max_steps"], **steps_override}
        cells += [c for c in make_cells(model, stages, settings, args.threads, args.threads_2proc, steps)
                  if f"{c.model}:{c.name}" not in skip]
    print(f"{len(cells)} cells: " + ", ".join(f"{c.model}:{c.name}" for c in cells), flush=True)

    peaks = {}
    wait_quiet(args.wait_quiet)
    for key in sorted({(c.precision, c.threads, c.processes) for c in cells}):
        precision, threads, processes = key
        peaks[key] = matmul_flops("float32" if precision == "fp32" else "bfloat16", threads, processes)
        print(f"matmul 2048^2 {precision}, {processes} process(es) x {threads} thread(s): {peaks[key] / 1e9:.1f} "
              "GFLOP/s", flush=True)

    from pipeline.models.sources import resolve
    from pipeline.recipe import load_recipe

    builds = {}
    for model in models:
        model_cells = [c for c in cells if c.model == model]
        if not model_cells:
            continue
        spec = MODELS[model]
        shape = model_shape(resolve(load_recipe(spec["recipe"]).model.source))
        upstreams = {}
        for chain in sorted({c.chain for c in model_cells if c.stage != "sft"}):
            clock = time.perf_counter()
            upstreams[chain], build = build_upstream(model, chain, args.out, args.threads)
            builds[f"{model}:{chain}"] = build
            print(f"[{model}] upstream {chain}: {time.perf_counter() - clock:.1f} s ({upstreams[chain]})"
                  + (f" FAILED: {build['error']}" if "error" in build else ""), flush=True)
        for cell in model_cells:
            build = builds.get(f"{model}:{cell.chain}", {})
            if cell.stage != "sft" and "error" in build:
                cell.result = {"rc": build["rc"], "error": build["error"], "peak_tree_mib": None,
                               "peak_proc_mib": None, "other_cpu_cores": build["other_cpu_cores"]}
                continue
            busy = wait_quiet(args.wait_quiet)
            if busy >= 0.3:
                print(f"[{model}] the machine is busy ({busy:.1f} cores in use by others); measuring anyway",
                      flush=True)
            run_cell(cell, upstreams.get(cell.chain, Path()), args.out, args.timeout or spec["timeout"], busy)
            r = cell.result
            if "error" not in r:
                prompt_len = None
                if cell.stage == "ppo":
                    config = _stage_config(cell.recipe, cell.stage, cell.overrides)
                    prompt_len = prompt_lengths(config, str(upstreams[cell.chain] / "sft"))
                r["figures"] = figures(cell, shape, peaks, prompt_len)
                f = r["figures"]
                print(f"[{model}] {cell.name}: {f['steps']} steps, {f['s_per_step']:.3f} s/step, "
                      f"tokens/s {_fmt(f['tokens_per_s'], 0)}, peak tree {r['peak_tree_mib']:.0f} MiB, "
                      f"MFU {_mfu(f['mfu'])}, command {r['command_s']:.1f} s", flush=True)
            else:
                print(f"[{model}] {cell.name}: FAILED (exit {r['rc']}): {r['error']}", flush=True)

    table = markdown(cells)
    total = time.perf_counter() - started
    print(f"\n{began:%Y-%m-%d %H:%M} UTC, {CORES} cores, total {total:.0f} s\n")
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    if args.json:
        args.json.write_text(json.dumps({"began": began.isoformat(), "total_s": total, "cores": CORES,
                                         "peaks": {f"{k[0]}/{k[2]}x{k[1]}": v for k, v in peaks.items()},
                                         "upstream_builds": builds,
                                         "cells": [asdict(c) for c in cells]}, indent=1, default=str))


if __name__ == "__main__":
    main()

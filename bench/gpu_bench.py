"""GPU figures of the training stages against plain TRL: tokens/s, peak GPU memory and MFU on a locally built
Llama-shaped model in bf16 (random weights: speed and memory do not depend on them; no hub, no network).

    python bench/gpu_bench.py --out DIR                 # on a GPU: a ~0.5B model, sft/reward/dpo/ppo + plain TRL
    python bench/gpu_bench.py --out DIR --dry-run       # anywhere: the tiny model, 2 steps each, on CPU if no GPU

1. Measures this chip's dense matmul rate (bf16 8192^3 on a GPU, fp32 512^3 on CPU): the MFU denominator.
2. Builds the model from a config (``--size``: hidden 1024, 24 layers, 16 heads, vocab 32768: 0.45B weights; or
   tiny) with the tiny recipe's tokenizer (ids above its 512 words are never used; the embedding and LM head keep
   their full cost).
3. Runs recipes/tiny.yaml's chain (sft -> preferences -> reward -> dpo -> ppo) on that model in bf16 through
   ``python -m pipeline run`` and reads each stage's metrics.json, log_history.json and manifest.json (peak GPU
   memory is the runner's torch.cuda.max_memory_allocated for the stage).
4. Runs plain TRL SFTTrainer and DPOTrainer scripts on the same model, rows, batch size, LoRA and steps, each in its
   own process, and reports our step time over theirs (the pipeline's overhead).
5. Writes DIR/gpu_bench.json and DIR/gpu_bench.md and prints the table.

Model FLOPs: pipeline/models/flops.py's matmul count (what torch's FlopCounterMode counts, attention included),
composed per stage as bench/stage_matrix.py composes it (``run_flops``; its docstring says what each stage counts):
the stage's own training (LoRA or full, read from its manifest), DPO's reference forward, PPO's sampling, scoring and
training epochs through every layer. MFU = model FLOPs / time / measured matmul rate. Until the bench used flops.py
it had its own per-token formula (forward 2N, backward 2N + 2N_trained, attention products left out), which for the
same run gave: sft and dpo about 1-2% less on the 0.5B model; the fully trained reward model about 7% more (the
embedding and an LM head it does not have counted as trained matmul weights); PPO 4-6x less (one training epoch over
the response tokens, where the stage runs ppo_epochs over prompt and response). tokens/s is unchanged (PPO: response
tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from stage_matrix import model_shape, prompt_lengths, run_flops  # bench/ is on the path when a bench script runs

from pipeline.models import flops

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "tiny.yaml"
SIZES = {
    "0.5b": {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 24, "num_attention_heads": 16,
             "num_key_value_heads": 8, "vocab_size": 32768},
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 512},
}
STEPS = {"full": {"sft": 30, "reward": 30, "dpo": 30, "ppo": 4}, "dry": {"sft": 2, "reward": 2, "dpo": 2, "ppo": 1}}
BATCH = 8

MATMUL = textwrap.dedent("""
    import sys, time, torch
    device, n = sys.argv[1], int(sys.argv[2])
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync(); start = time.perf_counter(); reps = 10
    for _ in range(reps):
        a @ b
    sync()
    print(2 * n ** 3 * reps / (time.perf_counter() - start))
""")

PLAIN = textwrap.dedent("""
    import json, sys, time
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    kind, model_path, rows_path, out, steps, batch, cuda = sys.argv[1:8]
    steps, batch, cuda = int(steps), int(batch), cuda == "1"
    rows = [json.loads(line) for line in open(rows_path)]
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype="bfloat16" if cuda else "float32")
    common = dict(output_dir=out, max_steps=steps, learning_rate=1e-4, per_device_train_batch_size=batch,
                  logging_steps=1, save_strategy="no", report_to="none", bf16=cuda, use_cpu=not cuda,
                  lr_scheduler_type="constant", seed=0, dataloader_num_workers=0)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    if kind == "sft":
        from trl import SFTConfig as Config, SFTTrainer as Trainer
        args = Config(**common, max_length=64)
    else:
        from trl import DPOConfig as Config, DPOTrainer as Trainer
        args = Config(**common, max_length=96, beta=0.1)
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                      peft_config=lora)
    result = trainer.train()
    print(json.dumps({"train_runtime": result.metrics["train_runtime"], "steps": result.global_step}))
""")


def matmul_rate(device: str) -> float:
    n = "8192" if device == "cuda" else "512"
    out = subprocess.run([sys.executable, "-c", MATMUL, device, n], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def build_model(size: str, folder: Path) -> dict:
    """A Llama from a config with the tiny recipe's tokenizer, saved in bf16 (safetensors)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from pipeline.builtin.tiny_model import tiny_llama_path

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_path())
    shape = dict(SIZES[size])
    shape["vocab_size"] = max(shape["vocab_size"], len(tokenizer))
    config = LlamaConfig(**shape, max_position_embeddings=2048, tie_word_embeddings=False,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    body = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n and "lm_head" not in n)
    return {"size": size, "parameters": sum(p.numel() for p in model.parameters()), "body": body,
            "lm_head": model.lm_head.weight.numel(), "hidden_size": config.hidden_size,
            "layers": config.num_hidden_layers, "vocab_size": config.vocab_size}


def run_ours(model_dir: Path, out: Path, steps: dict, cuda: bool) -> float:
    sets = [f"model.source={model_dir}", "model.dtype=bfloat16" if cuda else "model.dtype=float32", "evaluate=null",
            "stages.preferences.n_prompts=64"]
    for stage, n in steps.items():
        sets += [f"stages.{stage}.train.max_steps={n}", f"stages.{stage}.train.logging_steps=1",
                 f"stages.{stage}.train.save_steps=100000"]
    sets += [f"stages.{s}.train.batch_size={BATCH}" for s in ("sft", "reward", "dpo")]
    command = [sys.executable, "-m", "pipeline", "run", str(RECIPE), "--output-dir", str(out),
               *[a for s in sets for a in ("--set", s)]]
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return time.perf_counter() - started


def run_plain(kind: str, model_dir: Path, rows: list[dict], steps: int, cuda: bool) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        rows_path = Path(scratch) / "rows.jsonl"
        rows_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        out = subprocess.run([sys.executable, "-c", PLAIN, kind, str(model_dir), str(rows_path), scratch, str(steps),
                              str(BATCH), "1" if cuda else "0"], capture_output=True, text=True,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def stage_figures(out: Path, stage: str, shape: flops.Shape, rate: float) -> dict:
    """One stage's row: steps, s/step, tokens/s (PPO: response tokens), peak GPU memory, MFU (model FLOPs from
    pipeline/models/flops.py, through stage_matrix.run_flops, over the training time and the measured matmul rate) and
    PPO's sampling rate."""
    metrics = json.loads((out / stage / "metrics.json").read_text())
    manifest = json.loads((out / stage / "manifest.json").read_text())
    history = json.loads((out / stage / "log_history.json").read_text())
    config, world = manifest["config"], manifest.get("world_size", 1)
    if stage == "ppo":
        seconds = metrics["seconds_per_step"] * metrics["ppo_steps_run"]
        steps = metrics["ppo_steps_run"]
        tokens = sum(h.get("response_length", 0) * metrics["rollout_prompts_per_step"] for h in history)
        sampling = sum(h["generated_tokens_per_s"] for h in history) / len(history)
        prompt_len = prompt_lengths(config, str(out / config["from"][0]))
    else:
        seconds, steps = metrics["train_runtime"], metrics["global_step"]
        tokens = max((h.get("num_tokens", 0) for h in history), default=0)
        sampling = prompt_len = None
    per_s = tokens / seconds if seconds else None
    model_flops = run_flops(stage, shape, config, metrics, history, world, prompt_len)
    return {"stage": stage, "steps": steps, "s_per_step": seconds / steps if steps else None, "tokens_per_s": per_s,
            "peak_gpu_mib": manifest.get("peak_gpu_memory_mib"), "device": manifest.get("device"),
            "mfu": model_flops / seconds / rate if model_flops and seconds else None,
            "sampling_tokens_per_s": sampling}


def markdown(result: dict) -> str:
    lines = [f"GPU bench on {result['device_name']} ({result['model']['parameters'] / 1e9:.2f}B-parameter Llama, "
             f"{'bf16' if result['cuda'] else 'fp32'}; measured matmul {result['matmul_tflops']:.2f} TFLOP/s)", "",
             "| stage | steps | s/step | tokens/s | peak GPU MiB | MFU | sampling tok/s | plain TRL s/step "
             "| ours/TRL |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in result["stages"]:
        def fmt(value, spec):
            return "-" if value is None else format(value, spec)
        plain = result["plain"].get(row["stage"], {})
        plain_step = plain["train_runtime"] / plain["steps"] if "train_runtime" in plain else None
        ratio = row["s_per_step"] / plain_step if plain_step and row["s_per_step"] else None
        lines.append(f"| {row['stage']} | {row['steps']} | {fmt(row['s_per_step'], '.3f')} | "
                     f"{fmt(row['tokens_per_s'], ',.0f')} | {fmt(row['peak_gpu_mib'], ',.0f')} | "
                     f"{fmt(row['mfu'] and 100 * row['mfu'], '.1f')}{'%' if row['mfu'] else ''} | "
                     f"{fmt(row['sampling_tokens_per_s'], ',.0f')} | {fmt(plain_step, '.3f')} | {fmt(ratio, '.2f')} |")
    return "\n".join(lines) + "\n"


def training_rows(out: Path, kind: str) -> list[dict]:
    """The rows our stage trained on, in plain TRL's formats (messages for SFT; prompt/chosen/rejected for DPO)."""
    from pipeline.data.cards import load_card, materialise

    card = ROOT / "data_cards" / "tiny_chat.yaml" if kind == "sft" else out / "preferences" / "card.yaml"
    rows = materialise(load_card(card), str(card))
    if kind == "sft":
        return [{"messages": r["messages"]} for r in rows]
    return [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the model, the runs and the tables")
    parser.add_argument("--size", choices=sorted(SIZES), help="model size (default 0.5b; tiny with --dry-run)")
    parser.add_argument("--dry-run", action="store_true", help="tiny model, 1-2 steps a stage, CPU where no GPU")
    args = parser.parse_args()
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        print("error: no CUDA device (use --dry-run to check the bench on CPU)", file=sys.stderr)
        return 2
    size = args.size or ("tiny" if args.dry_run else "0.5b")
    steps = STEPS["dry" if args.dry_run else "full"]
    args.out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if cuda else "cpu"
    rate = matmul_rate(device)
    model = build_model(size, args.out / "model")
    shape = model_shape(str(args.out / "model"))
    run_ours(args.out / "model", args.out / "ours", steps, cuda)
    stages = [stage_figures(args.out / "ours", s, shape, rate) for s in ("sft", "reward", "dpo", "ppo")]
    plain = {kind: run_plain(kind, args.out / "model", training_rows(args.out / "ours", kind), steps[kind], cuda)
             for kind in ("sft", "dpo")}
    result = {"device_name": torch.cuda.get_device_name(0) if cuda else "CPU (dry run)", "cuda": cuda,
              "matmul_tflops": rate / 1e12, "model": model, "stages": stages, "plain": plain,
              "steps": steps, "batch_size": BATCH}
    (args.out / "gpu_bench.json").write_text(json.dumps(result, indent=2))
    table = markdown(result)
    (args.out / "gpu_bench.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

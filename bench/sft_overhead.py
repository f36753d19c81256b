"""Pipeline overhead of the SFT stage against a plain TRL SFTTrainer script: same model, data, seed and settings.

Each side runs in its own fresh process. Prints import time, stage time (load + train + save) and the loss curves.

    .venv/bin/python bench/sft_overhead.py [--steps 300] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PLAIN = textwrap.dedent(
    """
    import json, sys, time
    t0 = time.perf_counter()
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer
    t1 = time.perf_counter()
    model_path, data_dir, out, steps, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    rows = load_dataset("json", data_files={"train": data_dir + "/train.jsonl", "test": data_dir + "/eval.jsonl"})
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path)
    args = SFTConfig(output_dir=out, max_steps=steps, learning_rate=3e-3, per_device_train_batch_size=8,
                     per_device_eval_batch_size=8, lr_scheduler_type="linear", logging_steps=10,
                     logging_first_step=True,
                     save_strategy="steps", save_steps=50, save_total_limit=1, seed=seed, data_seed=seed,
                     report_to="none", use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
                     max_length=64, assistant_only_loss=True, eval_strategy="no", dataloader_num_workers=0,
                     optim="adamw_torch", max_grad_norm=1.0, weight_decay=0.0, warmup_steps=0.0)
    trainer = SFTTrainer(model=model, args=args, train_dataset=rows["train"], eval_dataset=rows["test"],
                         processing_class=tokenizer,
                         peft_config=LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                                                task_type="CAUSAL_LM"))
    trainer.train()
    trainer.evaluate()
    trainer.save_model(out + "/final")
    tokenizer.save_pretrained(out + "/final")
    t2 = time.perf_counter()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    print(json.dumps({"import_s": t1 - t0, "stage_s": t2 - t1, "losses": losses}))
    """
)


def run_plain(model_path: str, data: Path, steps: int, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        result = subprocess.run([sys.executable, "-c", PLAIN, model_path, str(data), out, str(steps), str(seed)],
                                capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_pipeline(steps: int, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        import time

        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pipeline", "run", "recipes/tiny.yaml", "--output-dir", out,
                        "--only", "sft", "--set", "evaluate=null",
                        "--set", f"stages.sft.train.max_steps={steps}", "--set", f"seed={seed}",
                        "--set", "stages.sft.train.save_steps=50"],
                       cwd=ROOT, capture_output=True, text=True, check=True)
        total = time.perf_counter() - t0
        manifest = json.loads((Path(out) / "sft" / "manifest.json").read_text())
        history = json.loads((Path(out) / "sft" / "log_history.json").read_text())
    return {"total_s": total, "stage_s": manifest["wall_time_s"], "losses": [h["loss"] for h in history if "loss" in h]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from pipeline.builtin.tiny_model import tiny_llama_path
    from pipeline.data.cards import card_splits, load_card

    model_path = str(tiny_llama_path())
    # The plain script reads the same train/eval rows the pipeline gets from the recipe's data card.
    data = Path(tempfile.mkdtemp())
    card_path = ROOT / "data_cards" / "tiny_chat.yaml"
    for split, rows in card_splits(load_card(card_path), str(card_path)).items():
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.chdir(ROOT)
    plain_runs, pipe_runs = [], []
    for _ in range(args.repeats):  # interleaved, so a busy moment hits both sides alike
        plain_runs.append(run_plain(model_path, data, args.steps, args.seed))
        pipe_runs.append(run_pipeline(args.steps, args.seed))
    plain_stage = min(r["stage_s"] for r in plain_runs)
    pipe_stage = min(r["stage_s"] for r in pipe_runs)
    diff = max(abs(a - b) for a, b in zip(plain_runs[0]["losses"], pipe_runs[0]["losses"]))
    print(f"tiny-llama SFT, LoRA r=8, {args.steps} steps, batch 8, best of {args.repeats}")
    print(f"plain TRL script: import {min(r['import_s'] for r in plain_runs):.2f} s, "
          f"load+train+eval+save {plain_stage:.2f} s")
    print(f"pipeline:         whole command {min(r['total_s'] for r in pipe_runs):.2f} s, stage {pipe_stage:.2f} s")
    print(f"stage overhead:   {pipe_stage - plain_stage:+.2f} s "
          f"({100 * (pipe_stage / plain_stage - 1):+.1f}% of the plain run)")
    print(f"loss curves:      {len(plain_runs[0]['losses'])} logged points, max |difference| {diff:.2e}")


if __name__ == "__main__":
    main()

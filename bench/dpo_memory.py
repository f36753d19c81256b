"""Peak memory of LoRA DPO (reference = adapter disabled) against LoRA SFT on the same model and batch, and
against DPO with an explicit reference copy. Each variant runs a few optimizer steps in a fresh process.

    .venv/bin/python bench/dpo_memory.py [--model builtin:smollm2-135m-instruct] [--steps 3] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def pairs_card(folder: Path) -> Path:
    """Conversational pairs from the movie SFT data: the real continuation against another snippet's."""
    from pipeline.data.cards import card_splits, load_card

    card = ROOT / "data_cards" / "movie_sft.yaml"
    rows = card_splits(load_card(card), str(card))["train"][:200]
    pairs = [{"prompt": r["messages"][:-1], "chosen": r["messages"][-1:],
              "rejected": rows[(i + 1) % len(rows)]["messages"][-1:]} for i, r in enumerate(rows)]
    data = folder / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return data


def variant(name: str, model: str, stage: dict, out: Path) -> float:
    recipe = {"name": name, "seed": 0, "model": {"source": model, "dtype": "float32"}, "output_dir": str(out / name),
              "stages": {name: stage}}
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "peak_rss.py"), "run", str(path)], cwd=ROOT,
                            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stderr[-3000:]}")
    return float(result.stdout.strip().splitlines()[-1].split("=")[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=96)
    args = parser.parse_args()
    train = {"max_steps": args.steps, "batch_size": args.batch_size, "save_steps": 1000, "logging_steps": 1}
    lora = {"r": 16, "alpha": 32, "dropout": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        pairs = pairs_card(out)
        rss = {
            "sft_lora": variant("sft_lora", args.model, {"kind": "sft", "data": str(ROOT / "data_cards/movie_sft.yaml"),
                                                          "lora": lora, "max_length": args.max_length, "train": train},
                                out),
            # DPO's batch of 8 pairs is 16 sequences: SFT on 16 sequences isolates what the reference itself costs.
            "sft_lora_2x_batch": variant("sft_lora_2x", args.model,
                                         {"kind": "sft", "data": str(ROOT / "data_cards/movie_sft.yaml"), "lora": lora,
                                          "max_length": args.max_length,
                                          "train": {**train, "batch_size": 2 * args.batch_size}}, out),
            "dpo_lora_adapter_ref": variant("dpo_lora", args.model,
                                            {"kind": "dpo", "data": {"path": str(pairs)}, "lora": lora,
                                             "max_length": args.max_length, "train": train}, out),
            "dpo_lora_copy_ref": variant("dpo_copy", args.model,
                                         {"kind": "dpo", "data": {"path": str(pairs)}, "lora": lora,
                                          "reference": "copy", "max_length": args.max_length, "train": train}, out),
        }
    base = rss["sft_lora"]
    print(f"{args.model}, fp32, batch {args.batch_size} (DPO: pairs, i.e. 2x sequences), max_length "
          f"{args.max_length}, {args.steps} steps; peak RSS of the whole process")
    for name, value in rss.items():
        print(f"{name:<22}{value:>9.0f} MiB  {value / base:5.2f}x SFT")


if __name__ == "__main__":
    main()

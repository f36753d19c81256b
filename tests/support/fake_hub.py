"""A local hub cache that holds what the GPU recipes name (recipes/zephyr_dpo.yaml, recipes/hh_ppo.yaml), so they
validate and plan offline as they would where the model and datasets were downloaded once: Qwen2.5-0.5B's real
config.json and weight shapes (a sparse safetensors file: the header is real, the data zeros that take no disk), and
datasets of the pinned ids, splits and row counts in the layout `datasets` reads in offline mode, their rows made up
in each dataset's own shape."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

QWEN = "Qwen/Qwen2.5-0.5B"
QWEN_REVISION = "060db6499f32faf8b98477b0a26969ef7d8b9987"
QWEN_CONFIG = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896,
               "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
               "vocab_size": 151936, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
               "tie_word_embeddings": True, "torch_dtype": "bfloat16", "hidden_act": "silu", "bos_token_id": 151643,
               "eos_token_id": 151643}
QWEN_PARAMETERS = 494_032_768
"""What the published model has (tied embeddings); the weight shapes below must add up to it."""


def qwen_shapes() -> dict[str, list[int]]:
    c = QWEN_CONFIG
    hidden, inner, kv = c["hidden_size"], c["intermediate_size"], c["num_key_value_heads"] * 64
    shapes = {"model.embed_tokens.weight": [c["vocab_size"], hidden], "model.norm.weight": [hidden]}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": [hidden, hidden], p + "self_attn.q_proj.bias": [hidden],
            p + "self_attn.k_proj.weight": [kv, hidden], p + "self_attn.k_proj.bias": [kv],
            p + "self_attn.v_proj.weight": [kv, hidden], p + "self_attn.v_proj.bias": [kv],
            p + "self_attn.o_proj.weight": [hidden, hidden], p + "mlp.gate_proj.weight": [inner, hidden],
            p + "mlp.up_proj.weight": [inner, hidden], p + "mlp.down_proj.weight": [hidden, inner],
            p + "input_layernorm.weight": [hidden], p + "post_attention_layernorm.weight": [hidden]})
    return shapes


def add_model(home: Path, repo: str, revision: str, config: dict, shapes: dict[str, list[int]]) -> Path:
    root = home / "hub" / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(revision)
    (snapshot / "config.json").write_text(json.dumps(config))
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 2
        for dim in shape:
            size *= dim
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with (snapshot / "model.safetensors").open("wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        handle.truncate(8 + len(raw) + offset)  # sparse
    return snapshot


def add_dataset(home: Path, repo: str, splits: dict[str, list[dict]], work: Path) -> None:
    """Build the splits with datasets' json builder, then file them under ``repo``'s name where offline
    ``load_dataset(repo)`` looks for an earlier download."""
    import datasets

    work.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, rows in splits.items():
        files[split] = str(work / f"{split}.jsonl")
        Path(files[split]).write_text("".join(json.dumps(row) + "\n" for row in rows))
    datasets.load_dataset("json", data_files=files, cache_dir=str(work / "build"))
    built = next(p for p in (work / "build" / "json").glob("*/*/*") if p.is_dir())
    target = home / "datasets" / "___".join(repo.split("/")) / "default" / built.parent.name / built.name
    shutil.copytree(built, target)
    name = repo.split("/")[-1]
    for arrow in target.glob("json-*.arrow"):
        arrow.rename(target / arrow.name.replace("json-", f"{name}-", 1))


def ultrafeedback_rows(n: int) -> list[dict]:
    def conversation(i: int, reply: str) -> list[dict]:
        return [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": reply}]

    return [{"prompt": f"Question {i}?", "prompt_id": str(i), "chosen": conversation(i, f"A careful answer {i}."),
             "rejected": conversation(i, "No."), "messages": conversation(i, f"A careful answer {i}."),
             "score_chosen": 8.0, "score_rejected": 3.0} for i in range(n)]


def hh_rows(n: int) -> list[dict]:
    opening = "\n\nHuman: Hello, can you help me?\n\nAssistant: Of course.\n\nHuman: What is {i} plus one?"
    return [{"chosen": opening.format(i=i) + f"\n\nAssistant: It is {i + 1}.",
             "rejected": opening.format(i=i) + "\n\nAssistant: I will not say."} for i in range(n)]


def gpu_recipes_hub(home: Path) -> Path:
    """``home`` (use it as HF_HOME) holding Qwen2.5-0.5B, UltraFeedback-binarized and HH-RLHF as the recipes pin
    them."""
    add_model(home, QWEN, QWEN_REVISION, QWEN_CONFIG, qwen_shapes())
    uf = ultrafeedback_rows(61_135)
    add_dataset(home, "HuggingFaceH4/ultrafeedback_binarized", {"train_prefs": uf, "train_sft": uf}, home / "work-uf")
    add_dataset(home, "Anthropic/hh-rlhf", {"train": hh_rows(160_800)}, home / "work-hh")
    shutil.rmtree(home / "work-uf")
    shutil.rmtree(home / "work-hh")
    return home

"""A tiny Llama and a byte-level BPE tokenizer, built locally in seconds: the model of the test suite and tiny.yaml.

Nothing is downloaded. The tokenizer is trained on a generated corpus, carries a ChatML chat template with
``{% generation %}`` markers (so assistant-only loss works) and uses ``<|im_end|>`` as end of sequence.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

from ..store.atomic import built_once
from ..store.paths import cache_dir

log = logging.getLogger("pipeline")

VERSION = 1  # bump when the recipe below changes, so cached copies are rebuilt under a new name

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}{{- '\\n' }}"
    "{%- else %}{{- message['content'] + '<|im_end|>' + '\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

WORDS = (
    "the a an movie film story plot actor actress scene music ending director script character cast is was are "
    "good great bad boring funny sad happy love hate wonderful terrible excellent awful fine best worst very "
    "really not quite too so and but or because with without of in on at to from for by about this that it "
    "what is plus minus times equals one two three four five six seven eight nine ten zero number answer "
    "question user assistant system please continue review write say hello yes no I you we they he she"
).split()


def _corpus(n_lines: int = 3000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 14))]
        number = f"{rng.randint(0, 99)} + {rng.randint(0, 99)} = {rng.randint(0, 198)}"
        lines.append(" ".join(words).capitalize() + rng.choice([".", "!", "?", ","]) + " " + number)
    return lines


def build_tokenizer(vocab_size: int = 512):
    """Train the byte-level BPE tokenizer and wrap it as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 512
    return fast


def build_model(tokenizer, hidden_size: int = 64, layers: int = 2, seed: int = 0):
    """A randomly initialised LlamaForCausalLM sized for tests (about 100 k parameters)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def tiny_llama_path() -> Path:
    """The cached tiny model folder (tokenizer included), built on first use; safe under several processes."""
    final = cache_dir("models") / f"tiny-llama-v{VERSION}"
    with built_once(final) as tmp:
        if tmp is not None:
            log.info("building the tiny test model (first use on this machine: a tokenizer trained on a small corpus "
                     "and a 2-layer Llama, kept in %s)", final.parent)
            start = time.perf_counter()
            tokenizer = build_tokenizer()
            build_model(tokenizer).save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            log.info("built %s in %.1f s", final.name, time.perf_counter() - start)
    return final

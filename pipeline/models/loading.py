"""Loading models and tokenizers with plain transformers: the recipe's dtype, bitsandbytes quantisation, and the
4-bit CPU workaround. Everything that loads a model goes through here."""

from __future__ import annotations

from ..errors import ModelError

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""CPU flags of a bf16 matmul in hardware. Without them (AVX2 only) bf16 is emulated and slower than fp32; with
them a bf16 matmul runs about 4x an fp32 one (docs/PERFORMANCE.md)."""


def cpu_flags() -> set[str]:
    """This CPU's feature flags (empty where /proc/cpuinfo cannot be read)."""
    from pathlib import Path

    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def native_bf16() -> bool:
    """Whether this machine multiplies bf16 natively: a GPU that supports it, or a CPU with AVX512-BF16 or AMX."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return any(flag in cpu_flags() for flag in NATIVE_BF16_FLAGS)


def resolved_dtype(name: str) -> str:
    """A recipe's `model.dtype` as this machine runs it: auto is bfloat16 where bf16 is native (``native_bf16``),
    float32 elsewhere; the others are themselves. (Read through ``ModelSpec.run_dtype``.)"""
    if name == "auto":
        return "bfloat16" if native_bf16() else "float32"
    return name


def torch_dtype(name: str):
    """The torch dtype for a dtype name. A loader's own default auto is bf16 on GPUs that support it, fp32 elsewhere:
    loading an artifact or a judge outside a recipe keeps full precision on a CPU."""
    import torch

    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_tokenizer(path: str, trust_remote_code: bool = False, revision: str | None = None):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, revision=revision)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the tokenizer from {path}: {exc}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def quantization_config(quantization: str | None, dtype: str = "auto"):
    """bitsandbytes settings for "4bit" (nf4, double quantisation) or "8bit"; None loads dense weights."""
    if quantization is None:
        return None
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch_dtype(dtype),
    )


def _quantized_loading(quantization: str | None, dtype: str = "auto") -> dict:
    """``from_pretrained`` keyword arguments that load a model quantised by bitsandbytes (none for dense)."""
    if quantization is None:
        return {}
    import torch

    return {"quantization_config": quantization_config(quantization, dtype),
            "device_map": None if torch.cuda.is_available() else "cpu"}


def _load_pretrained(auto_class, what: str, path: str, dtype: str, quantization: str | None, **kwargs):
    """``auto_class.from_pretrained`` with the recipe's dtype and quantisation; 4-bit layers kept trainable on CPU.
    A model whose weights are damaged or hold NaN/inf is refused, naming the file or the tensor."""
    from pathlib import Path

    from .sources import safetensors_problem

    for file in sorted(Path(path).glob("*.safetensors")) if Path(path).is_dir() else []:
        if (why := safetensors_problem(file)) is not None:
            raise ModelError(f"cannot load {what}: {why}")
    try:
        model = auto_class.from_pretrained(path, dtype=torch_dtype(dtype), **_quantized_loading(quantization, dtype),
                                           **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot load {what} from {path}: {first[:300]}") from None
    if (bad := first_non_finite(model)) is not None:
        raise ModelError(f"{path}: weight {bad} holds NaN or inf values; the model is damaged (or diverged in "
                         "training)")
    if quantization == "4bit":
        keep_4bit_trainable_on_cpu(model)
    return model


def frozen_copy(model):
    """An explicit frozen reference: a copy of ``model``'s weights in eval mode, no gradients."""
    import copy

    return copy.deepcopy(model).eval().requires_grad_(False)


def first_non_finite(model) -> str | None:
    """The name of the first floating-point parameter or buffer holding NaN or inf, or None."""
    import torch

    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and tensor.device.type != "meta" and not torch.isfinite(tensor).all():
            return name
    return None


def load_causal_lm(
    path: str,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    revision: str | None = None,
    quantization: str | None = None,
):
    from transformers import AutoModelForCausalLM

    model = _load_pretrained(AutoModelForCausalLM, "a causal LM", path, dtype, quantization,
                             trust_remote_code=trust_remote_code, revision=revision)
    contiguous_head_input(model)
    return model


def contiguous_head_input(model) -> None:
    """Hand the LM head a contiguous input (a forward pre-hook on the output embeddings; idempotent; exact).

    transformers slices the positions the head runs on (``logits_to_keep``: the last position at every generation's
    prefill, the response positions in PPO), which leaves a strided 3-D tensor. With a frozen head weight, torch's
    matmul does not fold such an input into one matrix product: it multiplies row by row against the weight
    broadcast and copied for each row, a [rows, hidden, vocab] copy (0.9 GB for 16 rows of SmolLM2 in bf16), about
    10x the product itself on a CPU (docs/PERFORMANCE.md). Made contiguous, it is one product of the same numbers."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or getattr(head, "_contiguous_input", False):
        return
    head.register_forward_pre_hook(_make_contiguous)
    head._contiguous_input = True


def _make_contiguous(module, args):
    return tuple(a.contiguous() if hasattr(a, "contiguous") else a for a in args)


def load_sequence_classifier(path: str, dtype: str = "auto", quantization: str | None = None,
                             heads: int | None = 1):
    """A sequence classifier with ``heads`` outputs: a causal LM's weights with a new score head (a reward model to
    train: one head, or an ensemble's), or a reward model as stored (None: as many as it has)."""
    from transformers import AutoModelForSequenceClassification

    return _load_pretrained(AutoModelForSequenceClassification, "a sequence classifier", path, dtype, quantization,
                            **({"num_labels": heads} if heads is not None else {}))


def keep_4bit_trainable_on_cpu(model) -> int:
    """Work around a bitsandbytes bug on CPUs with AVX512-BF16: the first eval-mode no-grad forward through a
    ``Linear4bit`` repacks its weight for CPU inference for good, after which backward runs through a kernel without
    autograd and LoRA gradients silently become None. Turning the repacking off keeps QLoRA training correct (at some
    cost to CPU inference speed). Returns how many layers were changed."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    changed = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed

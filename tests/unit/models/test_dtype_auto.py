"""A recipe's dtype auto: bf16 where this machine multiplies bf16 natively (a GPU that supports it, a CPU with
AVX512-BF16 or AMX), fp32 elsewhere (on AVX2 bf16 is emulated and slower); precision auto follows the weights on a CPU;
the plan fingerprints the dtype a machine actually uses, so auto's artifacts from one kind of machine are not reused
on another."""

from __future__ import annotations

import pytest
import torch

from pipeline.models import loading
from pipeline.training.trainer import precision_flags


@pytest.fixture
def cpu(monkeypatch):
    """A CPU-only machine whose flags the test sets."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def with_flags(*flags):
        monkeypatch.setattr(loading, "cpu_flags", lambda: {"sse4_2", "avx2", *flags})

    return with_flags


@pytest.mark.parametrize("flags, native", [((), False), (("avx512f",), False), (("avx512f", "avx512_bf16"), True),
                                           (("amx_bf16",), True)])
def test_auto_is_bf16_only_where_the_cpu_multiplies_bf16(cpu, flags, native):
    cpu(*flags)
    assert loading.native_bf16() is native
    assert loading.resolved_dtype("auto") == ("bfloat16" if native else "float32")
    from pipeline.recipe.schema import ModelSpec

    assert ModelSpec(source="builtin:tiny-llama").run_dtype == ("bfloat16" if native else "float32")
    for name in ("float32", "bfloat16", "float16"):
        assert loading.resolved_dtype(name) == name
    # a loader's own default (an artifact or a judge loaded outside a recipe) keeps full precision on a CPU
    assert loading.torch_dtype("auto") == torch.float32


def test_precision_auto_follows_the_weights_on_a_cpu(cpu):
    cpu("avx512_bf16")
    assert precision_flags("auto", "auto") == {"bf16": True, "fp16": False}
    assert precision_flags("auto", "float32") == {"bf16": False, "fp16": False}, "fp32 weights stay fp32"
    assert precision_flags("fp32", "auto") == {"bf16": False, "fp16": False}
    cpu()
    assert precision_flags("auto", "auto") == {"bf16": False, "fp16": False}


def test_cpu_flags_are_read_from_cpuinfo():
    flags = loading.cpu_flags()
    assert not flags or "fpu" in flags  # every x86 CPU lists fpu; elsewhere /proc/cpuinfo may have no flags line


def test_the_plan_fingerprints_the_dtype_auto_resolves_to(cpu, make_recipe, tmp_path):
    from pipeline.graph.plan import make_plan
    from pipeline.recipe import load_recipe
    from support import CHAT_ROWS, sft_stage, write_jsonl

    data = write_jsonl(tmp_path / "chat.jsonl", CHAT_ROWS)
    path = make_recipe({"sft": sft_stage(data)}, model={"source": "builtin:tiny-llama", "dtype": "auto"})
    cpu()
    fp32 = make_plan(load_recipe(path, []))["sft"]
    cpu("avx512_bf16")
    bf16 = make_plan(load_recipe(path, []))["sft"]
    assert fp32.fingerprint != bf16.fingerprint
    assert bf16.parts["model"]["dtype"] == "bfloat16", bf16.parts

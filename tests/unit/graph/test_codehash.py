"""What code a stage's fingerprint covers: its modules and the project modules they import (not other stages),
hashed without comments, docstrings and formatting; and the math libraries they import, with versions."""

from __future__ import annotations

import textwrap

from pipeline.graph import codehash


def digest_of(tmp_path, source: str) -> str:
    path = tmp_path / "m.py"
    path.write_text(textwrap.dedent(source))
    digest, _ = codehash._parse(str(path), path.stat().st_mtime_ns)
    return digest


def test_comments_docstrings_and_formatting_do_not_count(tmp_path):
    plain = digest_of(tmp_path, '''
        def f(x):
            return x + 1
    ''')
    dressed = digest_of(tmp_path, '''
        """A module docstring."""
        # a comment
        def f( x ):
            """What f does."""
            return (x +
                    1)  # and another
    ''')
    changed = digest_of(tmp_path, '''
        def f(x):
            return x + 2
    ''')
    assert plain == dressed and plain != changed


def test_attribute_docstrings_do_not_count_but_defaults_do(tmp_path):
    base = digest_of(tmp_path, "class C:\n    n: int = 3\n    '''How many.'''\n")
    assert base == digest_of(tmp_path, "class C:\n    n: int = 3\n    '''How many things.'''\n")
    assert base != digest_of(tmp_path, "class C:\n    n: int = 4\n    '''How many.'''\n")


def test_a_stage_covers_its_helpers_and_not_other_stages():
    code, libraries = codehash.stage_code("dpo")
    assert {"stages/dpo", "stages/dpo_config", "pipeline/training/trainer", "pipeline/artifacts/policy",
            "pipeline/data/loading", "pipeline/errors"} <= set(code)
    assert not any(name.startswith(("stages/ppo", "stages/sft", "pipeline/graph", "pipeline/builtin"))
                   for name in code)
    assert {"torch", "transformers", "trl", "peft", "python"} <= set(libraries) and libraries["trl"]


def test_a_package_stage_brings_every_module_it_imports():
    code, libraries = codehash.stage_code("ppo")
    assert {"stages/ppo/__init__", "stages/ppo/loop", "stages/ppo/rollout", "stages/ppo/models",
            "stages/ppo/checkpoint", "stages/ppo_config", "pipeline/rl/ppo_math"} <= set(code)
    assert "accelerate" in libraries and "trl" in libraries  # it imports trl's generation helpers


def test_stages_that_do_not_use_a_library_do_not_track_it():
    _, libraries = codehash.stage_code("preferences")
    assert "trl" not in libraries and {"torch", "transformers", "peft"} <= set(libraries)


def test_the_cost_model_is_no_stage_s_code():
    """The FLOP, time and memory estimates the config classes import for `plan` change no stage's fingerprint."""
    for kind in ("sft", "reward", "dpo", "ppo", "evaluate", "preferences"):
        code, _ = codehash.stage_code(kind)
        assert f"stages/{kind}_config" in code
        assert not {"pipeline/models/flops", "pipeline/models/duration", "pipeline/models/estimate"} & set(code), kind

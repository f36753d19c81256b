"""The tiny chain computes what it computed before the internals were restructured (issue 30): every evaluation
node's eval.json and every PPO quantity logged at every step, for three PPO set-ups that take different code paths
(full fine-tuning with a frozen reference copy; kl.guard with a PI controller and gradient accumulation, which undoes
updates; LoRA with the shared trunk).

The expected values were recorded from main at ac3b51e (before the restructuring) with

    BEHAVIOUR_CODE=<checkout> python tests/integration/test_behaviour_unchanged.py --record

and the restructured code matched them. They were recorded again (tests/data/behaviour_batch_invariant_sampling.json)
by the commit that gave every sampled row its own random stream (issue 31: pipeline/evaluation/sampler.py), which
changes which tokens are drawn and so everything downstream, and nothing else: the commit before it still matched
the ac3b51e recording. And once more by the commit that builds the merged base (.bases/) on a random stream of its
own: in this chain the reward stage builds it, which had drawn from the stream the reward model's new score head is
then initialised from; the commit before it still matched the previous recording. The ppo-guard variant's steps were
recorded again when kl.guard stopped refusing moves of a KL already below its band (step 9's rollout, at 2.16
against the band's 2.5, now keeps all 8 updates), and again when the PI controller's warm-up came to end at 80% of
the target (step 7's KL of 2.59 against 3.0: the coefficient moves from step 8 on); the rest of the recording is
unchanged. Timings are left out;
everything else must match to float tolerance.

The chain runs in a subprocess pinned to the same kernels on every x86 CPU (ATen's default capability, MKL's
conditional numerical reproducibility, oneDNN capped at SSE4.1, 2 threads): left free, AVX2 and AVX-512 kernels sum in
different orders, and a tiny model trained at high learning rates turns that into different samples within a step
or two (seen on this chain: PPO's first score -0.836 against -0.779)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support import ROOT, TESTS, copy_artifacts, run_recipe

pytestmark = pytest.mark.slow  # the whole tiny chain and three PPO variants, on pinned (slower) kernels

TINY = ROOT / "recipes" / "tiny.yaml"
EXPECTED = ROOT / "tests" / "data" / "behaviour_batch_invariant_sampling.json"
TIMINGS = {"step_time_s", "generate_time_s", "generated_tokens_per_s"}

PPO_VARIANTS = {
    "ppo": ["stages.ppo.train.logging_steps=1"],
    "ppo-guard": ["stages.ppo.train.logging_steps=1", "stages.ppo.train.max_steps=10",
                  "stages.ppo.train.batch_size=8", "stages.ppo.train.gradient_accumulation_steps=2",
                  "stages.ppo.kl={coef: 0.05, target: 3.0, controller: pi, kp: 1.0, ki: 0.3, guard: 1.2}"],
    "ppo-lora": ["stages.ppo.train.logging_steps=1", "stages.ppo.train.max_steps=6",
                 "stages.ppo.lora={r: 8, alpha: 16, dropout: 0.0}", "stages.ppo.train.learning_rate=5.0e-3"],
}
"""Each variant's overrides of the tiny recipe."""


def observe(out: Path) -> dict:
    """Run the tiny chain (all stages and evaluation nodes), then each PPO variant, and collect what they computed."""
    # recorded when the tiny recipe's gold judge was VADER (it is the digit-share rule now; the samples are the same)
    run_recipe(TINY, [f"output_dir={out / 'chain'}", "evaluate.judge=vader"])
    observed = {"eval": {}, "ppo": {}}
    for node in sorted((out / "chain").glob("eval-*")):
        observed["eval"][node.name] = json.loads((node / "eval.json").read_text())
    for name, overrides in PPO_VARIANTS.items():
        folder = copy_artifacts(out / "chain", out / name)
        run_recipe(TINY, [f"output_dir={folder}", "evaluate=null", *overrides], only=["ppo"])
        steps = json.loads((folder / "ppo" / "log_history.json").read_text())
        samples = [json.loads(line) for line in (folder / "ppo" / "samples.jsonl").read_text().splitlines()]
        observed["ppo"][name] = {"steps": [{k: v for k, v in s.items() if k not in TIMINGS} for s in steps],
                                 "samples": samples}
    return observed


def assert_same(expected, actual, where: str = "") -> None:
    """Structural equality with float tolerance; names the first path that differs."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and set(expected) == set(actual), \
            f"{where}: keys {sorted(expected)} != {sorted(actual) if isinstance(actual, dict) else actual}"
        for key in expected:
            assert_same(expected[key], actual[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(expected) == len(actual), f"{where}: {expected} != {actual}"
        for i, (e, a) in enumerate(zip(expected, actual)):
            assert_same(e, a, f"{where}[{i}]")
    elif isinstance(expected, float) or isinstance(actual, float):
        assert actual is not None and math.isclose(expected, actual, rel_tol=1e-4, abs_tol=1e-5), \
            f"{where}: {expected} != {actual}"
    else:
        assert expected == actual, f"{where}: {expected!r} != {actual!r}"


PINNED_KERNELS = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41",
                  "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}


def observe_pinned(out: Path) -> dict:
    """``observe`` in a fresh process on the pinned kernels (they are read when torch loads), with an environment of
    its own and its own model cache: the tiny model's random initialisation takes a vectorised path that depends on
    the kernels too, so a tiny model an earlier test built unpinned would start a different chain."""
    env = {name: os.environ[name] for name in ("PATH", "HOME", "TMPDIR", "LANG") if name in os.environ}
    env.update(PINNED_KERNELS, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PIPELINE_CACHE=str(out / "cache"),
               PYTHONPATH=os.pathsep.join([os.environ.get("BEHAVIOUR_CODE", str(ROOT)), str(TESTS)]))
    done = subprocess.run([sys.executable, __file__, "--observe", str(out)], env=env, capture_output=True, text=True,
                          timeout=900, cwd=out)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "observed.json").read_text())


@pytest.fixture(scope="module")
def observed(tmp_path_factory) -> dict:
    return observe_pinned(tmp_path_factory.mktemp("behaviour"))


def test_evaluations_unchanged(observed):
    expected = json.loads(EXPECTED.read_text())
    assert_same(expected["eval"], observed["eval"], "eval")


@pytest.mark.parametrize("variant", sorted(PPO_VARIANTS))
def test_ppo_steps_unchanged(observed, variant):
    expected = json.loads(EXPECTED.read_text())["ppo"][variant]
    assert_same(expected["steps"], observed["ppo"][variant]["steps"], f"{variant}.steps")
    assert_same(expected["samples"], observed["ppo"][variant]["samples"], f"{variant}.samples")


def test_guard_variant_takes_the_undo_path():
    """The recorded guard run refuses some updates, so it exercises the snapshot and undo (else it proves nothing)."""
    steps = json.loads(EXPECTED.read_text())["ppo"]["ppo-guard"]["steps"]
    assert any(s["updates"] < 8 for s in steps), [s["updates"] for s in steps]


if __name__ == "__main__" and sys.argv[1:2] == ["--observe"]:
    out = Path(sys.argv[2])
    (out / "observed.json").write_text(json.dumps(observe(out)))
elif __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    import tempfile

    EXPECTED.parent.mkdir(parents=True, exist_ok=True)
    EXPECTED.write_text(json.dumps(observe_pinned(Path(tempfile.mkdtemp(prefix="behaviour-"))), indent=1) + "\n")
    print(f"recorded {EXPECTED}")

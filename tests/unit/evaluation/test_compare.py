"""The paired comparison (`python -m pipeline compare`): B - A over the same prompts with a bootstrap interval that
pairs the prompts and resamples each side's seeds."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from pipeline.__main__ import main
from pipeline.errors import PipelineError
from pipeline.evaluation.compare import load_evaluation, paired_comparison

N = 200


def write_eval(folder: Path, gold: list[float], prompts: list[str] | None = None, target: str = "ppo") -> Path:
    folder.mkdir(parents=True)
    prompts = prompts or [f"prompt {i}" for i in range(len(gold))]
    rows = [{"prompt": p, "completion": "c", "gold": g, "kl": 2 * g, "length": 10, "repeats": g > 0.9}
            for p, g in zip(prompts, gold)]
    (folder / "eval_samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "eval.json").write_text(json.dumps({"target": target}))
    return folder


def prompt_difficulty(seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [rng.uniform(-0.8, 0.6) for _ in range(N)]  # prompts differ far more than the variants do


def test_pairing_finds_a_small_uniform_gain_that_separate_intervals_would_miss(tmp_path):
    base = prompt_difficulty()
    a = load_evaluation(write_eval(tmp_path / "a", base))
    b = load_evaluation(write_eval(tmp_path / "b", [g + 0.05 for g in base]))
    gold = paired_comparison([a], [b], resamples=500)["metrics"]["gold"]
    assert gold["difference"] == pytest.approx(0.05)
    assert gold["ci95"] == pytest.approx([0.05, 0.05])  # every prompt gained exactly 0.05
    assert gold["b_higher"] == 1.0
    # the same gain on different prompts for B (unpaired noise) is not resolved
    c = load_evaluation(write_eval(tmp_path / "c", [g + 0.05 for g in prompt_difficulty(seed=1)]))
    loose = paired_comparison([a], [c], resamples=500)["metrics"]["gold"]
    assert loose["ci95"][0] < 0 < loose["ci95"][1]


def test_identical_sides_differ_by_nothing(tmp_path):
    a = load_evaluation(write_eval(tmp_path / "a", prompt_difficulty()))
    result = paired_comparison([a], [a], resamples=200)
    for metric in result["metrics"].values():
        assert metric["difference"] == 0 and metric["ci95"] == [0, 0] and metric["b_higher"] == 0.5


def test_seeds_widen_the_interval_by_their_spread(tmp_path):
    base = prompt_difficulty()
    a = load_evaluation(write_eval(tmp_path / "a", base))
    seeds = [load_evaluation(write_eval(tmp_path / f"b{i}", [g + shift for g in base]))
             for i, shift in enumerate((0.0, 0.2))]
    one = paired_comparison([a], seeds[1:], resamples=500)["metrics"]["gold"]
    both = paired_comparison([a], seeds, resamples=500)["metrics"]["gold"]
    assert both["difference"] == pytest.approx(0.1)  # the mean over the seeds
    assert one["ci95"] == pytest.approx([0.2, 0.2])
    assert both["ci95"][0] == pytest.approx(0.0) and both["ci95"][1] == pytest.approx(0.2)  # a seed set is {0, 0.2}
    assert paired_comparison([a], seeds, resamples=500)["seeds"] == [1, 2]


def test_different_prompts_are_refused_with_the_row_named(tmp_path):
    a = load_evaluation(write_eval(tmp_path / "a", [0.1, 0.2, 0.3]))
    b = load_evaluation(write_eval(tmp_path / "b", [0.1, 0.2, 0.3], ["prompt 0", "prompt 1", "another"]))
    with pytest.raises(PipelineError, match=r"b, sample 3: prompt 'another' where .*a has 'prompt 2'"):
        paired_comparison([a], [b])
    short = load_evaluation(write_eval(tmp_path / "short", [0.1, 0.2]))
    with pytest.raises(PipelineError, match="holds 2 prompts"):
        paired_comparison([a], [short])


def test_a_damaged_samples_file_is_named_with_its_line(tmp_path):
    folder = write_eval(tmp_path / "a", [0.1, 0.2])
    with (folder / "eval_samples.jsonl").open("a") as f:
        f.write('{"prompt": "x"}\n')
    with pytest.raises(PipelineError, match=r"eval_samples.jsonl, line 3: not an evaluation sample"):
        load_evaluation(folder)
    with pytest.raises(PipelineError, match="no eval_samples.jsonl"):
        load_evaluation(tmp_path)


def test_the_command_finds_evaluations_by_name_and_fingerprint_prefix(tmp_path, capsys):
    out = tmp_path / "run"
    base = prompt_difficulty()
    write_eval(out / "eval-dpo", base, target="dpo")
    write_eval(out / ".store" / "eval-ppo-1c29ac86", [g + 0.05 for g in base])
    write_eval(out / ".store" / "eval-ppo-7f45aa00", [g + 0.15 for g in base])
    assert main(["compare", "eval-dpo", "eval-ppo-1c29,eval-ppo-7f45", "--output-dir", str(out),
                 "--resamples", "300"]) == 0
    text = capsys.readouterr().out
    assert "A: dpo" in text and "bootstrap over each side's seeds and the prompts" in text
    gold = next(line for line in text.splitlines() if line.startswith("gold "))
    mean = sum(base) / N
    assert gold.split()[1:4] == [f"{mean:.3f}", f"{mean + 0.1:.3f}", "+0.100"]
    assert "gold: B scores higher" in text

    def error(*args):
        return main(["compare", *args]), capsys.readouterr().err

    code, err = error("eval-dpo", "eval-ppo", "--output-dir", str(out))
    assert code == 2 and "eval-ppo: 2 stored variants match" in err and len(err.strip().splitlines()) == 1
    code, err = error("eval-dpo", "eval-sft", "--output-dir", str(out))
    assert code == 2 and "eval-sft: not a folder, nor an evaluation in" in err

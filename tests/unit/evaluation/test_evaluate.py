"""evaluate(): the metrics on a known case, failures before generating, and KL against references."""

from __future__ import annotations

import pytest

from pipeline.errors import PipelineError
from pipeline.evaluation import evaluate as evaluation
from pipeline.evaluation import generation
from pipeline.evaluation.evaluate import evaluate
from pipeline.evaluation.generation import Completion
from pipeline.evaluation.settings import EvalSettings
from pipeline.models.loading import load_causal_lm
from support.models import perturbed

PROMPTS = ["Say hello.", "What is 2 plus 2 and then some more words?", "the film", "a", "one two three four five"]


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer):
    return tiny_tokenizer


@pytest.fixture(scope="module")
def model(tiny_path):
    return load_causal_lm(tiny_path, "float32")


def _eval_settings(**sampling) -> EvalSettings:
    sampling = {"max_new_tokens": 12, "batch_size": 3, **sampling}
    return EvalSettings(prompts="x", n=8, judge="support.judges:constant_judge", bootstrap=200, sampling=sampling)


def test_metrics_by_hand(monkeypatch):
    known = [("a b", [5, 6, 2], True), ("a c", [7, 8], False), ("b", [9], True)]

    def fake_generate(model, tokenizer, prompts, sampling, seed, desc="generating", **_):
        assert prompts == ["p1", "p2", "p3"] and seed == 9  # settings.n keeps the first 3 of 4 prompts
        return [Completion(p, text, [1], ids, eos) for p, (text, ids, eos) in zip(prompts, known)]

    monkeypatch.setattr(generation, "generate", fake_generate)
    settings = EvalSettings(prompts="x", n=3, judge="support.judges:length_judge", threshold=2, seed=9, bootstrap=2000)
    metrics, samples = evaluate("policy", None, None, ["p1", "p2", "p3", "p4"], settings)
    assert metrics == {
        "n": 3,
        "gold_mean": pytest.approx(7 / 3),
        # a resample mean of 3 draws from {3, 3, 1} is 1 with probability (1/3)^3 = 3.7% (more than the 2.5% tail)
        # and 3 with probability (2/3)^3 = 30% (more than 2.5%): with 2,000 resamples the interval is [1, 3]
        "gold_ci95": [1.0, 3.0],
        "gold_share_above": pytest.approx(2 / 3),
        "threshold": 2,
        "judge": "support.judges:length_judge",
        "kl_mean": 0.0,
        "kl_ci95": [0.0, 0.0],
        "distinct_1": pytest.approx(3 / 5),  # a b a c b
        "distinct_2": 1.0,  # (a b) (a c)
        "repetition_share": 0.0,  # no word of 4+ letters at all
        "mean_length": 2.0,  # 3, 2, 1 tokens
        "eos_rate": pytest.approx(2 / 3),
    }
    assert samples == [
        {"prompt": "p1", "completion": "a b", "gold": 3.0, "kl": 0.0, "length": 3, "repeats": False},
        {"prompt": "p2", "completion": "a c", "gold": 3.0, "kl": 0.0, "length": 2, "repeats": False},
        {"prompt": "p3", "completion": "b", "gold": 1.0, "kl": 0.0, "length": 1, "repeats": False},
    ]


def test_repetition_share_counts_completions_that_repeat_a_content_word(monkeypatch):
    texts = ["joy and joy, pure JOY", "the the the the end", "love, love and more"]
    monkeypatch.setattr(generation, "generate", lambda model, tokenizer, prompts, *a, **k: [
        Completion(p, t, [1], [5], True) for p, t in zip(prompts, texts)])
    settings = EvalSettings(prompts="x", n=3, judge="support.judges:length_judge", bootstrap=10)
    metrics, samples = evaluate("policy", None, None, ["p1", "p2", "p3"], settings)
    # "joy" has 3 letters: not a content word; "the" neither; "love" twice is not three times
    assert metrics["repetition_share"] == 0.0
    texts[1] = "what a lovely, Lovely, LOVELY day"
    metrics, samples = evaluate("policy", None, None, ["p1", "p2", "p3"], settings)
    assert metrics["repetition_share"] == pytest.approx(1 / 3)
    assert [s["repeats"] for s in samples] == [False, True, False]


def test_empty_prompts_and_bad_judge_fail_before_generating(monkeypatch):
    monkeypatch.setattr(generation, "generate", lambda *a, **k: pytest.fail("generated"))
    with pytest.raises(PipelineError, match="at least one prompt"):
        evaluate(None, None, None, [], EvalSettings(prompts="x"))
    settings = EvalSettings.model_construct(**{**EvalSettings(prompts="x").model_dump(), "judge": "math:nope"})
    with pytest.raises(PipelineError, match="no attribute 'nope'"):
        evaluate(None, None, None, ["p"], settings)


def test_kl_is_zero_against_itself_without_a_reference_pass(model, tokenizer, monkeypatch):
    monkeypatch.setattr(evaluation, "completion_logprobs", lambda *a, **k: pytest.fail("reference pass ran"))
    for reference in (None, model):
        metrics, samples = evaluate(model, reference, tokenizer, PROMPTS, _eval_settings())
        assert metrics["kl_mean"] == 0.0 and metrics["kl_ci95"] == [0.0, 0.0]
        assert all(s["kl"] == 0.0 for s in samples)


def test_kl_against_a_separately_loaded_copy_is_zero(model, tokenizer, tiny_path):
    copy = load_causal_lm(tiny_path, "float32")
    metrics, samples = evaluate(model, copy, tokenizer, PROMPTS, _eval_settings())
    assert metrics["n"] == len(PROMPTS) and metrics["gold_mean"] == 0.25 and metrics["gold_share_above"] == 0.0
    assert all(abs(s["kl"]) < 1e-5 for s in samples)
    assert abs(metrics["kl_mean"]) < 1e-5


def test_kl_is_positive_against_a_different_reference(model, tokenizer, tiny_path):
    metrics, samples = evaluate(model, perturbed(tiny_path), tokenizer, PROMPTS, _eval_settings())
    assert metrics["kl_mean"] > 0.5 and metrics["kl_ci95"][0] > 0
    assert [s["length"] for s in samples] == [12] * len(PROMPTS)  # the random tiny model never says <|im_end|>
    assert metrics["eos_rate"] == 0.0 and metrics["mean_length"] == 12


def test_end_to_end_with_vader(model, tokenizer):
    settings = EvalSettings(prompts="x", n=4, sampling={"max_new_tokens": 8}, bootstrap=100)
    metrics, samples = evaluate(model, None, tokenizer, PROMPTS, settings)
    assert metrics["judge"] == "vader" and metrics["n"] == 4 and len(samples) == 4
    assert -1 <= metrics["gold_ci95"][0] <= metrics["gold_mean"] <= metrics["gold_ci95"][1] <= 1
    assert 0 < metrics["distinct_1"] <= 1 and 0 <= metrics["distinct_2"] <= 1


def test_the_policy_side_of_the_kl_comes_from_sampling(model, tokenizer, tiny_path, monkeypatch):
    """Only the reference is teacher-forced; the KL is what teacher forcing both models gives."""
    reference = perturbed(tiny_path)
    forced_models = []
    real = evaluation.completion_logprobs

    def counted(which, completions, size):
        forced_models.append(which)
        return real(which, completions, size)

    monkeypatch.setattr(evaluation, "completion_logprobs", counted)
    metrics, samples = evaluate(model, reference, tokenizer, PROMPTS, _eval_settings())
    assert forced_models and all(m is reference for m in forced_models)
    settings = _eval_settings()
    sampled = generation.generate(model, tokenizer, PROMPTS, settings.sampling, settings.seed, progress=False)
    expected = [float((p - r).sum()) for p, r in zip(real(model, sampled, 4), real(reference, sampled, 4))]
    assert [s["completion"] for s in samples] == [c.completion for c in sampled]
    assert [s["kl"] for s in samples] == pytest.approx(expected, abs=1e-4)

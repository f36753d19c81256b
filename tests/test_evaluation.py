"""Gold judges, batched generation, teacher-forced log-probs and the evaluation metrics, on the tiny model."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from pipeline import evaluation
from pipeline.errors import PipelineError
from pipeline.evaluation import EvalSettings, bootstrap_ci, distinct_n, evaluate
from pipeline.generation import Completion, SamplingSettings, completion_logprobs, generate, render_prompts
from pipeline.judges import check_judge_spec, make_judge
from pipeline.models import load_causal_lm, load_tokenizer
from pipeline.tiny_model import tiny_llama_path

PROMPTS = ["Say hello.", "What is 2 plus 2 and then some more words?", "the film", "a", "one two three four five"]


# --- judges that the tests name as "test_evaluation:<function>" ---------------------------------------------------


def length_judge(prompts, completions):
    return [len(c) for c in completions]


def constant_judge(prompts, completions):
    return [0.25] * len(completions)


def short_judge(prompts, completions):
    return [1.0] * (len(completions) - 1)


def nan_judge(prompts, completions):
    return [float("nan")] * len(completions)


NOT_A_FUNCTION = 3


# --- fixtures ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_path() -> str:
    return str(tiny_llama_path())


@pytest.fixture(scope="module")
def tokenizer(tiny_path):
    return load_tokenizer(tiny_path)


@pytest.fixture(scope="module")
def model(tiny_path):
    return load_causal_lm(tiny_path, "float32")


def perturbed(path: str, scale: float = 0.2, seed: int = 0):
    """A copy of the tiny model with seeded noise on every matrix: sharper, more varied next-token distributions."""
    model = load_causal_lm(path, "float32")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() > 1:
                weight.add_(torch.randn(weight.shape, generator=generator) * scale)
    return model


def manual_logprobs(model, completion: Completion) -> torch.Tensor:
    """One unpadded forward pass, no batching, no masks."""
    ids = torch.tensor([completion.prompt_ids + completion.completion_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    p, n = len(completion.prompt_ids), len(completion.completion_ids)
    steps = logits[p - 1 : p + n - 1].log_softmax(-1)
    return steps.gather(-1, torch.tensor(completion.completion_ids)[:, None]).squeeze(-1)


# --- pure helpers -----------------------------------------------------------------------------------------------


def test_distinct_n_by_hand():
    assert distinct_n(["a b a b"], 1) == 2 / 4
    assert distinct_n(["a b a b"], 2) == 2 / 3  # (a b) (b a) (a b)
    assert distinct_n(["a b", "b a"], 2) == 1.0  # n-grams do not span texts
    assert distinct_n(["x  y\nx"], 1) == 2 / 3  # any whitespace splits
    assert distinct_n(["", "one"], 2) == 0.0  # no bigrams at all
    assert distinct_n([], 1) == 0.0


def test_bootstrap_ci_by_hand():
    assert bootstrap_ci([2.0, 2.0, 2.0], 200, seed=0) == [2.0, 2.0]
    assert bootstrap_ci([5.0], 10, seed=0) == [5.0, 5.0]
    # mean of 2 draws from {0, 1} is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4: the 2.5% and 97.5% points are 0, 1
    assert bootstrap_ci([0.0, 1.0], 1000, seed=3) == [0.0, 1.0]
    # mean of 4 draws from {0, 0, 0, 1}: P(0) = 0.32, P(>= 0.75) = 0.051 but P(1) = 0.004, so [0, 0.75]
    assert bootstrap_ci([0.0, 0.0, 0.0, 1.0], 4000, seed=1) == [0.0, 0.75]
    values = [0.1, 0.9, 0.3, 0.4, 0.8]
    assert bootstrap_ci(values, 500, seed=7) == bootstrap_ci(values, 500, seed=7)
    lo, hi = bootstrap_ci(values, 500, seed=7)
    assert 0.1 <= lo < sum(values) / 5 < hi <= 0.9
    with pytest.raises(ValueError):
        bootstrap_ci([], 10, seed=0)


# --- judges -----------------------------------------------------------------------------------------------------


def test_vader_ranks_positive_above_negative():
    judge = make_judge("vader")
    good, bad, flat = judge.score(["", "", ""], ["great wonderful film", "terrible awful film", "the film"])
    assert judge.name == "vader"
    assert -1 <= bad < flat < good <= 1 and good > 0.5 and bad < -0.5 and flat == 0.0


def test_function_judge_is_imported_and_checked():
    judge = make_judge("test_evaluation:length_judge")
    assert judge.name == "test_evaluation:length_judge"
    assert judge.score(["p", "q"], ["abc", ""]) == [3.0, 0.0]
    with pytest.raises(PipelineError, match=r"judge 'test_evaluation:short_judge' returned 1 scores for 2"):
        make_judge("test_evaluation:short_judge").score(["p", "q"], ["a", "b"])
    with pytest.raises(PipelineError, match=r"judge 'test_evaluation:nan_judge' returned nan"):
        make_judge("test_evaluation:nan_judge").score(["p"], ["a"])


@pytest.mark.parametrize(
    "spec, message",
    [
        ("", "a judge is needed"),
        ("vadr", "unknown judge 'vadr'; expected 'vader', 'module:function'"),
        ("a:b:c", "is not of the form"),
        (":f", "both parts are needed"),
        ("math:", "both parts are needed"),
        ("my-module:f", "is not a Python module name"),
        ("math:f()", "is not a Python function name"),
        ("no_such_module_xyz:f", "no module named 'no_such_module_xyz'"),
        ("reward:", "needs a reward artifact path"),
    ],
)
def test_bad_specs_are_explained(spec, message):
    assert message in check_judge_spec(spec)
    with pytest.raises(PipelineError, match="judge"):
        make_judge(spec)


def test_reward_judge_on_a_missing_folder_is_a_clear_error(tmp_path):
    assert check_judge_spec(f"reward:{tmp_path}") is None  # may be made by an earlier stage of the run
    with pytest.raises(PipelineError, match="not a reward model folder"):
        make_judge(f"reward:{tmp_path}")


def test_bad_function_specs_fail_on_import():
    assert check_judge_spec("math:no_such_function") is None  # found without importing; checked by make_judge
    with pytest.raises(PipelineError, match="module 'math' has no attribute 'no_such_function'"):
        make_judge("math:no_such_function")
    with pytest.raises(PipelineError, match="'NOT_A_FUNCTION' is a int, not a function"):
        make_judge("test_evaluation:NOT_A_FUNCTION")


def test_eval_settings_validate_the_judge():
    settings = EvalSettings(prompts="data_cards/x.yaml")
    assert (settings.n, settings.judge, settings.threshold, settings.seed, settings.bootstrap) == (
        256, "vader", 0.5, 1234, 1000)
    assert settings.sampling == SamplingSettings() and settings.sampling.top_k == 0
    with pytest.raises(ValidationError, match="unknown judge 'vadr'"):
        EvalSettings(prompts="x", judge="vadr")
    with pytest.raises(ValidationError, match="extra"):
        EvalSettings(prompts="x", sampling={"temprature": 0.7})


# --- evaluation metrics on a known case -------------------------------------------------------------------------


def test_metrics_by_hand(monkeypatch):
    known = [("a b", [5, 6, 2], True), ("a c", [7, 8], False), ("b", [9], True)]

    def fake_generate(model, tokenizer, prompts, sampling, seed, desc="generating"):
        assert prompts == ["p1", "p2", "p3"] and seed == 9  # settings.n keeps the first 3 of 4 prompts
        return [Completion(p, text, [1], ids, eos) for p, (text, ids, eos) in zip(prompts, known)]

    monkeypatch.setattr(evaluation, "generate", fake_generate)
    settings = EvalSettings(prompts="x", n=3, judge="test_evaluation:length_judge", threshold=2, seed=9, bootstrap=300)
    metrics, samples = evaluate("policy", None, None, ["p1", "p2", "p3", "p4"], settings)
    gold = [3.0, 3.0, 1.0]
    assert metrics == {
        "n": 3,
        "gold_mean": pytest.approx(7 / 3),
        "gold_ci95": bootstrap_ci(gold, 300, 9),
        "gold_share_above": pytest.approx(2 / 3),
        "threshold": 2,
        "judge": "test_evaluation:length_judge",
        "kl_mean": 0.0,
        "kl_ci95": [0.0, 0.0],
        "distinct_1": pytest.approx(3 / 5),  # a b a c b
        "distinct_2": 1.0,  # (a b) (a c)
        "mean_length": 2.0,  # 3, 2, 1 tokens
        "eos_rate": pytest.approx(2 / 3),
    }
    assert 1.0 <= metrics["gold_ci95"][0] <= 7 / 3 <= metrics["gold_ci95"][1] <= 3.0
    assert samples == [
        {"prompt": "p1", "completion": "a b", "gold": 3.0, "kl": 0.0, "length": 3},
        {"prompt": "p2", "completion": "a c", "gold": 3.0, "kl": 0.0, "length": 2},
        {"prompt": "p3", "completion": "b", "gold": 1.0, "kl": 0.0, "length": 1},
    ]


def test_empty_prompts_and_bad_judge_fail_before_generating(monkeypatch):
    monkeypatch.setattr(evaluation, "generate", lambda *a, **k: pytest.fail("generated"))
    with pytest.raises(PipelineError, match="at least one prompt"):
        evaluate(None, None, None, [], EvalSettings(prompts="x"))
    settings = EvalSettings.model_construct(**{**EvalSettings(prompts="x").model_dump(), "judge": "math:nope"})
    with pytest.raises(PipelineError, match="no attribute 'nope'"):
        evaluate(None, None, None, ["p"], settings)


# --- KL ---------------------------------------------------------------------------------------------------------


def _eval_settings(**sampling) -> EvalSettings:
    sampling = {"max_new_tokens": 12, "batch_size": 3, **sampling}
    return EvalSettings(prompts="x", n=8, judge="test_evaluation:constant_judge", bootstrap=200, sampling=sampling)


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


# --- log-probs --------------------------------------------------------------------------------------------------


def test_completion_logprobs_match_unbatched_forward(tokenizer, tiny_path):
    model = perturbed(tiny_path)
    completions = generate(model, tokenizer, PROMPTS, SamplingSettings(max_new_tokens=10, batch_size=5), seed=0)
    # different completion lengths as well as prompt lengths: right padding must not leak into the result
    completions[1].completion_ids = completions[1].completion_ids[:4]
    completions[3].completion_ids = []
    assert len({len(c.prompt_ids) for c in completions}) == len(PROMPTS)
    batched = completion_logprobs(model, completions, batch_size=3)
    singly = completion_logprobs(model, completions, batch_size=1)
    for completion, got, alone in zip(completions, batched, singly):
        assert got.shape == (len(completion.completion_ids),) and got.dtype == torch.float32
        if completion.completion_ids:
            torch.testing.assert_close(got, manual_logprobs(model, completion), atol=1e-5, rtol=0)
        torch.testing.assert_close(got, alone, atol=1e-5, rtol=0)
        assert (got <= 0).all()


# --- generation -------------------------------------------------------------------------------------------------


def test_render_prompts_uses_the_chat_template(tokenizer, tiny_path):
    assert render_prompts(tokenizer, ["Hi"]) == ["<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"]
    plain = load_tokenizer(tiny_path)
    plain.chat_template = None
    assert render_prompts(plain, ["Hi"]) == ["Hi"]


def test_generation_is_seeded_and_restores_state(model, tokenizer):
    sampling = SamplingSettings(max_new_tokens=8, batch_size=2)
    model.train()
    first = generate(model, tokenizer, PROMPTS, sampling, seed=5)
    assert model.training and tokenizer.padding_side == "right"
    model.eval()
    again = generate(model, tokenizer, PROMPTS, sampling, seed=5)
    other = generate(model, tokenizer, PROMPTS, sampling, seed=6)
    assert [c.prompt for c in first] == PROMPTS
    assert [c.completion_ids for c in first] == [c.completion_ids for c in again]
    assert [c.completion for c in first] == [c.completion for c in again]
    assert [c.completion_ids for c in first] != [c.completion_ids for c in other]
    assert all(len(c.completion_ids) == 8 for c in first)


def test_left_padding_does_not_change_greedy_samples(tokenizer, tiny_path):
    model = perturbed(tiny_path)  # the unperturbed tiny model greedily repeats one token, which would prove nothing
    greedy = SamplingSettings(max_new_tokens=12, do_sample=False, batch_size=len(PROMPTS))
    together = generate(model, tokenizer, PROMPTS, greedy, seed=0)
    assert len({tuple(c.completion_ids) for c in together}) == len(PROMPTS)
    for prompt, batched in zip(PROMPTS, together):
        (alone,) = generate(model, tokenizer, [prompt], greedy, seed=0)
        assert alone.prompt_ids == batched.prompt_ids
        assert alone.completion_ids == batched.completion_ids


def test_eos_ends_a_completion_and_is_kept(tokenizer, tiny_path):
    model = perturbed(tiny_path)
    eos = tokenizer.eos_token_id
    with torch.no_grad():  # untie the head and give <|im_end|> a bias: most samples end early, at different steps
        head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
        head.weight.copy_(model.get_input_embeddings().weight)
        head.bias.zero_()
        head.bias[eos] = 4.0
        model.lm_head = head
    completions = generate(model, tokenizer, PROMPTS * 2, SamplingSettings(max_new_tokens=16), seed=3)
    ended = [c for c in completions if c.eos]
    assert ended and len({len(c.completion_ids) for c in ended}) > 1
    for c in completions:
        assert c.completion_ids.count(eos) == (1 if c.eos else 0)
        assert (c.completion_ids[-1] == eos) == c.eos
        assert c.eos or len(c.completion_ids) == 16
        assert "<|im_end|>" not in c.completion and "<|endoftext|>" not in c.completion
    lengths = [len(t) for t in completion_logprobs(model, completions, batch_size=4)]
    assert lengths == [len(c.completion_ids) for c in completions]


def test_bf16_generation_and_logprobs_on_cpu(tokenizer, tiny_path):
    model = load_causal_lm(tiny_path, "bfloat16")
    sampling = SamplingSettings(max_new_tokens=6, batch_size=2)
    completions = generate(model, tokenizer, PROMPTS[:3], sampling, seed=0)
    assert completions == generate(model, tokenizer, PROMPTS[:3], sampling, seed=0)
    logprobs = completion_logprobs(model, completions, batch_size=2)
    assert all(t.dtype == torch.float32 and t.shape == (6,) and torch.isfinite(t).all() for t in logprobs)
    assert math.isfinite(sum(float(t.sum()) for t in logprobs))


def test_base_model_loads_quantised_in_4bit_on_cpu():
    import bitsandbytes as bnb

    from pipeline.models import load_causal_lm

    model = load_causal_lm(str(tiny_llama_path()), "float32", quantization="4bit")
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[5, 6, 7]])).logits).all()

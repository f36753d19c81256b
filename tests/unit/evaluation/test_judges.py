"""Gold judges: vader, a user's module:function (checked output), reward:FOLDER; bad specs explained."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pipeline.errors import PipelineError
from pipeline.evaluation.judges import check_judge_spec, make_judge
from pipeline.evaluation.settings import EvalSettings, SamplingSettings


def test_vader_ranks_positive_above_negative():
    judge = make_judge("vader")
    good, bad, flat = judge.score(["", "", ""], ["great wonderful film", "terrible awful film", "the film"])
    assert judge.name == "vader"
    assert -1 <= bad < flat < good <= 1 and good > 0.5 and bad < -0.5 and flat == 0.0


def test_function_judge_is_imported_and_checked():
    judge = make_judge("support.judges:length_judge")
    assert judge.name == "support.judges:length_judge"
    assert judge.score(["p", "q"], ["abc", ""]) == [3.0, 0.0]
    with pytest.raises(PipelineError, match=r"judge 'support.judges:short_judge' returned 1 scores for 2"):
        make_judge("support.judges:short_judge").score(["p", "q"], ["a", "b"])
    with pytest.raises(PipelineError, match=r"judge 'support.judges:nan_judge' returned nan"):
        make_judge("support.judges:nan_judge").score(["p"], ["a"])


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
        make_judge("support.judges:NOT_A_FUNCTION")


def test_eval_settings_validate_the_judge():
    settings = EvalSettings(prompts="data_cards/x.yaml")
    assert (settings.n, settings.judge, settings.threshold, settings.seed, settings.bootstrap) == (
        256, "vader", 0.5, 1234, 1000)
    assert settings.sampling == SamplingSettings() and settings.sampling.top_k == 0
    with pytest.raises(ValidationError, match="unknown judge 'vadr'"):
        EvalSettings(prompts="x", judge="vadr")
    with pytest.raises(ValidationError, match="extra"):
        EvalSettings(prompts="x", sampling={"temprature": 0.7})

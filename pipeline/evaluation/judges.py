"""Gold judges: score (prompt, completion) pairs with something that is not the policy's own reward model.

A judge is named by a spec string:

- ``"vader"``: the VADER sentiment compound score of the completion, -1..1 (``vaderSentiment``, offline, fast).
- ``"module:function"``: a Python function ``function(prompts, completions) -> list[float]``, imported with
  importlib (never evaluated). Its output is checked: one finite number per completion.
- ``"reward:<artifact path>"``: a reward stage's artifact (``pipeline.models.reward_model``), scoring prompt and
  completion through its tokenizer's chat template, as the reward stage trained on them.

Every judge is batched: ``judge.score(prompts, completions)`` returns one float per pair.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from typing import Callable, Protocol, Sequence

from ..errors import PipelineError

SPEC_FORMS = "'vader', 'module:function' or 'reward:<artifact path>'"


class Judge(Protocol):
    """Scores completions (higher is better). ``name`` is what metrics and reports show."""

    name: str

    def score(self, prompts: list[str], completions: list[str]) -> list[float]:
        """One float per (prompt, completion) pair, in order."""
        ...


class VaderJudge:
    """VADER sentiment compound score of the completion (-1..1); the prompt is ignored."""

    name = "vader"

    def __init__(self):
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError:
            raise PipelineError(
                "judge 'vader' needs the vaderSentiment package: pip install -c constraints.txt vaderSentiment==3.3.2"
            ) from None
        self._analyzer = SentimentIntensityAnalyzer()  # loads its lexicon once

    def score(self, prompts: list[str], completions: list[str]) -> list[float]:
        return [float(self._analyzer.polarity_scores(text)["compound"]) for text in completions]


class FunctionJudge:
    """A user function ``fn(prompts, completions) -> list[float]``; its output is checked on every call."""

    def __init__(self, name: str, fn: Callable[[list[str], list[str]], Sequence[float]]):
        self.name = name
        self._fn = fn

    def score(self, prompts: list[str], completions: list[str]) -> list[float]:
        result = self._fn(list(prompts), list(completions))
        try:
            values = list(result)
        except TypeError:
            raise PipelineError(
                f"judge '{self.name}' returned {type(result).__name__}, expected a list of floats"
            ) from None
        if len(values) != len(completions):
            raise PipelineError(
                f"judge '{self.name}' returned {len(values)} scores for {len(completions)} completions"
            )
        scores = []
        for index, value in enumerate(values):
            if isinstance(value, (str, bytes)):
                raise PipelineError(f"judge '{self.name}' returned a string for completion {index}: {value!r}")
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise PipelineError(
                    f"judge '{self.name}' returned a non-number for completion {index}: {value!r}"
                ) from None
            if not math.isfinite(number):
                raise PipelineError(f"judge '{self.name}' returned {number} for completion {index}")
            scores.append(number)
        return scores


# --- reward-model judges -------------------------------------------------------------------------------------


def _check_reward_spec(path: str) -> str | None:
    # The folder may be made by an earlier stage of the same run, so only its form is checked here.
    if not path:
        return "judge 'reward:' needs a reward artifact path, e.g. 'reward:runs/tiny/reward'"
    return None


class RewardJudge:
    """Scores with a reward-model artifact (see pipeline.models.reward_model)."""

    def __init__(self, path: str):
        from ..models.reward_model import RewardModel

        self.name = f"reward:{path}"
        self.model = RewardModel.from_pretrained(path)

    def score(self, prompts: list[str], completions: list[str]) -> list[float]:
        return self.model.score(prompts, completions)


def _make_reward_judge(path: str) -> Judge:
    return RewardJudge(path)


REWARD_SCHEME = "reward"
"""``reward:<artifact path>`` (and, in recipes, ``reward:<stage>``): a reward model judges."""


def is_reward_judge(spec) -> bool:
    """Whether a judge spec names a reward model (``reward:...``)."""
    return str(spec).strip().partition(":")[0] == REWARD_SCHEME


def reward_stage(spec: str, stages) -> str | None:
    """The stage of ``stages`` that a "reward:STAGE" judge names, or None (another judge, or a folder)."""
    scheme, _, rest = str(spec).strip().partition(":")
    return rest.strip() if scheme == REWARD_SCHEME and rest.strip() in stages else None

SCHEMES: dict[str, tuple[Callable[[str], str | None], Callable[[str], Judge]]] = {
    REWARD_SCHEME: (_check_reward_spec, _make_reward_judge),
}
"""``scheme:rest`` judge specs handled by something other than a Python import: scheme -> (check, make)."""


# --- parsing ----------------------------------------------------------------------------------------------------


def _split_function_spec(spec: str) -> tuple[str, str] | str:
    """(module, function) for a 'module:function' spec, or why it is not one."""
    if spec.count(":") != 1:
        return f"judge '{spec}' is not of the form {SPEC_FORMS}"
    module, function = (part.strip() for part in spec.split(":"))
    if not module or not function:
        return f"judge '{spec}' is not of the form 'module:function' (both parts are needed)"
    if not all(part.isidentifier() for part in module.split(".")):
        return f"judge '{spec}': '{module}' is not a Python module name"
    if not function.isidentifier():
        return f"judge '{spec}': '{function}' is not a Python function name"
    return module, function


def check_judge_spec(spec: str) -> str | None:
    """Why ``spec`` cannot be used as a judge, or None. Cheap: finds modules without importing them (only their
    parent packages, for dotted names), so recipe validation stays fast."""
    if not isinstance(spec, str) or not spec.strip():
        return f"a judge is needed: {SPEC_FORMS}"
    spec = spec.strip()
    if spec == "vader":
        if importlib.util.find_spec("vaderSentiment") is None:
            return "judge 'vader' needs the vaderSentiment package (pip install vaderSentiment==3.3.2)"
        return None
    scheme, _, rest = spec.partition(":")
    if scheme in SCHEMES:
        return SCHEMES[scheme][0](rest.strip())
    if ":" not in spec:
        return f"unknown judge '{spec}'; expected {SPEC_FORMS}"
    parsed = _split_function_spec(spec)
    if isinstance(parsed, str):
        return parsed
    module, _ = parsed
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:
        return f"judge '{spec}': cannot find module '{module}' ({exc})"
    if found is None:
        return f"judge '{spec}': no module named '{module}' (is it on the Python path?)"
    return None


def make_judge(spec: str) -> Judge:
    """The judge named by ``spec`` (see the module docstring). Raises PipelineError for a spec it cannot use."""
    problem = check_judge_spec(spec)
    if problem is not None:
        raise PipelineError(problem)
    spec = spec.strip()
    if spec == "vader":
        return VaderJudge()
    scheme, _, rest = spec.partition(":")
    if scheme in SCHEMES:
        return SCHEMES[scheme][1](rest.strip())
    module_name, function_name = _split_function_spec(spec)  # type: ignore[misc]  # checked above
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PipelineError(f"judge '{spec}': cannot import module '{module_name}': {exc}") from None
    fn = getattr(module, function_name, None)
    if fn is None:
        raise PipelineError(f"judge '{spec}': module '{module_name}' has no attribute '{function_name}'")
    if not callable(fn):
        raise PipelineError(f"judge '{spec}': '{function_name}' is a {type(fn).__name__}, not a function")
    return FunctionJudge(spec, fn)


def rollout_judges(settings) -> list[tuple[str, Judge]]:
    """(log key, judge) of the judges an online stage scores every step's rollouts with: the gold judge of the
    recipe's ``evaluate:`` section as "gold", each judge of its panel as "judge/<spec>". Reward-model judges are left
    out (a model pass a step; the evaluation nodes still use them). None or no section: none."""
    if settings is None:
        return []
    specs = [("gold", settings.judge)] + [(f"judge/{spec}", spec) for spec in settings.judges]
    return [(key, make_judge(spec)) for key, spec in specs
            if not is_reward_judge(spec)]

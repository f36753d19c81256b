"""Everything that can be checked without loading a model, checked before any long work: the output folder, every
row of every data input (cards materialised, counts and checksums verified, splits possible), trainer callbacks
and judges imported and of the right shape. ``validate`` and the start of ``run`` call it; every problem is reported
at once, each with its YAML path.
"""

from __future__ import annotations

import importlib
import inspect
import os
from pathlib import Path

from ..errors import DataError, Problem, RecipeError
from ..recipe.schema import Recipe


def preflight(recipe: Recipe, out_dir: Path | None = None) -> list[Problem]:
    problems = output_dir_problems(Path(out_dir) if out_dir is not None else recipe.out_dir)
    problems += chat_template_problems(recipe)
    checked: dict[tuple, str | None] = {}  # the same input used by several stages is read once
    for name, config in recipe.stages.items():
        for key, what, kind in config.data_inputs():
            cache_key = (repr(what), kind)
            if cache_key not in checked:
                checked[cache_key] = _data_problem(what, kind, recipe.seed)
            if checked[cache_key] is not None:
                problems.append(Problem(f"stages.{name}.{key}", checked[cache_key]))
        for key, spec in config.judge_specs():
            if (why := judge_problem(spec, recipe.stages)) is not None:
                problems.append(Problem(f"stages.{name}.{key}", why))
        train = getattr(config, "train", None)
        for i, spec in enumerate(getattr(train, "callbacks", None) or []):
            if (why := callback_problem(spec)) is not None:
                problems.append(Problem(f"stages.{name}.train.callbacks[{i}]", why))
    return problems


def check_before_running(recipe: Recipe, source: str, out_dir: Path | None = None) -> None:
    """RecipeError (exit 2) listing every preflight problem."""
    problems = preflight(recipe, out_dir)
    if problems:
        raise RecipeError(source, problems)


def model_has_chat_template(folder: Path) -> bool:
    import json

    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    try:
        return bool(json.loads((folder / "tokenizer_config.json").read_text()).get("chat_template"))
    except (OSError, ValueError, AttributeError):
        return False


def chat_template_problems(recipe: Recipe) -> list[Problem]:
    """Conversations (messages rows) need a chat template: the model's own or model.chat_template. Checked where the
    model is a local folder (builtin models have one)."""
    folder = Path(recipe.model.source)
    if recipe.model.chat_template is not None or not folder.is_dir() or model_has_chat_template(folder):
        return []
    from ..data.cards import load_card

    problems = []
    for name, config in recipe.stages.items():
        for key, what, kind in config.data_inputs():
            if kind != "chat":
                continue
            card = getattr(what, "card", None)
            messages = False
            try:
                if card is not None:
                    messages = load_card(card).format == "messages"
                elif getattr(what, "path", None) is not None:
                    from ..data.rows import read_rows

                    rows = read_rows(what.path)
                    messages = bool(rows) and "messages" in rows[0]
            except (DataError, RecipeError):
                continue  # reported by the data checks
            if messages:
                problems.append(Problem(f"stages.{name}.{key}", f"messages rows need a chat template, and the model "
                                                                f"({folder}) has none: set model.chat_template"))
    return problems


def output_dir_problems(out_dir: Path) -> list[Problem]:
    where = "output_dir"
    if out_dir.exists() and not out_dir.is_dir():
        return [Problem(where, f"{out_dir} exists and is not a folder")]
    existing = out_dir
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        return [Problem(where, f"{out_dir} cannot be created: {existing} is a file")]
    if not os.access(existing, os.W_OK | os.X_OK):
        return [Problem(where, f"{out_dir} cannot be written: no write permission on {existing}")]
    return []


def _data_problem(what, kind: str, seed: int) -> str | None:
    from ..data.loading import card_prompts, chat_splits, preference_splits

    try:
        if kind == "chat":
            chat_splits(what, seed)
        elif kind == "preference":
            preference_splits(what, None, seed)
        else:
            card_prompts(what, "eval" if kind == "eval_prompt" else "train")
    except (DataError, RecipeError) as exc:
        return _one_line(exc)
    return None


def judge_problem(spec: str, stages=()) -> str | None:
    """Why a judge cannot score: a "module:function" not importable or not a function of (prompts, completions), a
    "reward:X" where X is neither a stage of the recipe (``stages``) nor a folder."""
    from ..evaluation.judges import REWARD_SCHEME, SCHEMES, check_judge_spec

    if (why := check_judge_spec(spec)) is not None:
        return why
    scheme, _, rest = spec.strip().partition(":")
    if scheme == REWARD_SCHEME and rest.strip() not in stages and not Path(rest.strip()).is_dir():
        return f"judge '{spec}': '{rest.strip()}' is neither a stage of this recipe nor a reward artifact folder"
    if spec.strip() == "vader" or scheme in SCHEMES:
        return None
    module_name, _, function_name = spec.strip().partition(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name, None)
    except Exception as exc:  # the user's module failed to import: say how, not a traceback
        return f"judge '{spec}': importing {module_name} failed ({type(exc).__name__}: {_one_line(exc)})"
    if function is None:
        return f"judge '{spec}': module '{module_name}' has no attribute '{function_name}'"
    if not callable(function):
        return f"judge '{spec}': '{function_name}' is a {type(function).__name__}, not a function"
    try:
        inspect.signature(function).bind([], [])
    except (TypeError, ValueError):
        return f"judge '{spec}': {function_name} must take (prompts, completions)"
    return None


def callback_problem(spec: str) -> str | None:
    """Why a "module:ClassName" trainer callback cannot be used (not importable, not a TrainerCallback class)."""
    module_name, _, class_name = spec.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name, None)
    except Exception as exc:  # the user's module failed to import
        return f"'{spec}': importing {module_name} failed ({type(exc).__name__}: {_one_line(exc)})"
    if cls is None:
        return f"'{spec}': module '{module_name}' has no attribute '{class_name}'"
    if not isinstance(cls, type) or not any(base.__name__ == "TrainerCallback" for base in cls.__mro__):
        return f"'{spec}' is not a transformers TrainerCallback class"
    try:
        inspect.signature(cls).bind()
    except (TypeError, ValueError):
        return f"'{spec}': the callback is created without arguments, and {class_name}() needs some"
    return None


def _one_line(exc: Exception, limit: int = 400) -> str:
    text = str(exc).strip()
    if isinstance(exc, RecipeError) and exc.problems:
        text = "; ".join(str(p) for p in exc.problems)
        text = f"{exc.source}: {text}"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


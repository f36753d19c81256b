"""Turning bad input into problems a user can act on: safe YAML reading, pydantic errors as YAML paths, did-you-mean.

Used by every reader of a user file (recipes, data cards), so they all report the same way.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import Problem, RecipeError

MAX_YAML_NODES = 200_000
"""A YAML file may hold at most this many values once its aliases are expanded: anchors and aliases are allowed
(shared settings), nested aliases that expand to gigabytes ("billion laughs") are refused."""


class DuplicateKey(yaml.YAMLError):
    def __init__(self, key: str, mark):
        self.problem = f"duplicate key '{key}' (the second would silently replace the first)"
        self.problem_mark = mark
        super().__init__(self.problem)


def _expanded_size(node, memo: dict[int, int]) -> int:
    """How many nodes ``node`` stands for with every alias expanded; linear time thanks to ``memo``. Refuses a
    mapping that repeats a key on the way."""
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = 1  # a node that (through aliases) contains itself counts once
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, memo) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        seen = set()
        for k, _ in node.value:
            if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                if k.value in seen:
                    raise DuplicateKey(k.value, k.start_mark)
                seen.add(k.value)
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    else:
        size = 1
    memo[key] = size
    return size


def safe_load_bounded(text: str):
    """``yaml.safe_load`` that refuses documents expanding to more than MAX_YAML_NODES values (YAMLError)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, {})
        if size > MAX_YAML_NODES:
            raise yaml.YAMLError(f"expands to more than {MAX_YAML_NODES:,} values through its aliases "
                                 f"(at least {size:,}); refusing to read it")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_yaml_mapping(path: str | Path, what: str, keys: str) -> dict:
    """A YAML file's top-level mapping (safe, alias-bounded); RecipeError naming the file (and line) otherwise."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(str(path), [Problem("", f"{what} file not found")])
    try:
        raw = safe_load_bounded(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise RecipeError(str(path), [Problem("", f"not UTF-8 text ({exc.reason} at byte {exc.start})")]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or exc
        text = f"{problem}" if isinstance(exc, DuplicateKey) else f"not valid YAML: {problem}"
        raise RecipeError(str(path), [Problem(where, text)]) from None
    if not isinstance(raw, dict):
        raise RecipeError(str(path), [Problem("", f"a {what} is a YAML mapping with {keys}")])
    return raw


# Names users bring from peft, TRL, transformers, axolotl and LLaMA-Factory, mapped to ours.
KNOWN_ALIASES = {
    "rank": "r",
    "lora_r": "r",
    "lora_rank": "r",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "lora_target": "target_modules",
    "lora_target_modules": "target_modules",
    "layers_to_transform": "layers",
    "lr": "learning_rate",
    "max_seq_length": "max_length",
    "max_seq_len": "max_length",
    "sequence_len": "max_length",
    "cutoff_len": "max_length",
    "num_train_epochs": "epochs",
    "num_epochs": "epochs",
    "per_device_train_batch_size": "batch_size",
    "per_device_eval_batch_size": "batch_size",
    "micro_batch_size": "batch_size",
    "train_batch_size": "batch_size",
    "gradient_accumulation": "gradient_accumulation_steps",
    "lr_scheduler_type": "lr_scheduler",
    "warmup_steps": "warmup_ratio",
    "optimizer": "optim",
    "bf16": "precision",
    "fp16": "precision",
    "model_name_or_path": "source",
    "base_model": "source",
    "model_name": "source",
    "torch_dtype": "dtype",
    "load_in_4bit": "quantization",
    "load_in_8bit": "quantization",
    "dataset": "data",
    "adam": "adamw_torch",
    "adamw": "adamw_torch",
}

ALIAS_HINTS = {
    "bf16": "'precision: bf16'",
    "fp16": "'precision: fp16'",
    "load_in_4bit": "'quantization: 4bit'",
    "load_in_8bit": "'quantization: 8bit'",
    "warmup_steps": "'warmup_ratio', a fraction of the steps",
}
"""What to write instead, where the name alone would not say it."""


def did_you_mean(word: str, choices) -> str:
    choices = [str(c) for c in choices]
    if KNOWN_ALIASES.get(word) in choices:
        return f" (did you mean {ALIAS_HINTS.get(word, repr(KNOWN_ALIASES[word]))}?)"
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def pydantic_problems(exc: ValidationError, model: type[BaseModel], prefix: str = "") -> list[Problem]:
    problems = []
    for err in exc.errors():
        loc = list(err["loc"])
        where = ".".join([prefix] * bool(prefix) + [str(p) for p in loc])
        if err["type"] == "extra_forbidden":
            known = field_names_at(model, loc[:-1])
            problems.append(Problem(where, f"unknown key '{loc[-1]}'{did_you_mean(str(loc[-1]), known)}"))
        elif err["type"] == "missing":
            problems.append(Problem(where, "missing (required)"))
        else:
            message = err["msg"].removeprefix("Value error, ")
            shown = repr(err.get("input"))
            # a value already quoted in the message is not repeated
            suffix = ("" if str(err.get("input")) in message
                      else f" (got {shown if len(shown) <= 80 else shown[:77] + '...'})")
            problems.append(Problem(where, f"{message}{suffix}"))
    return _dedupe(problems)


def _dedupe(problems: list[Problem]) -> list[Problem]:
    # A union (e.g. "all-linear" | list) reports one error per member at paths that share a prefix; keep the first.
    seen, out = set(), []
    for p in problems:
        key = re.sub(r"\.(literal\[.*?\]|list\[.*?\]|str|int|float|bool)$", "", p.where)
        if key not in seen:
            seen.add(key)
            out.append(Problem(key, p.message))
    return out


def field_names_at(model: type[BaseModel], loc: list) -> list[str]:
    """The key names a mapping at ``loc`` inside ``model`` accepts (for did-you-mean)."""
    current: Any = model
    for part in loc:
        current = unwrap_model(current)
        if current is None:
            return []
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = field_by_key(current, str(part))
            if field is None:
                return []
            current = field.annotation
        else:
            args = typing.get_args(current)
            current = args[-1] if args else None
    current = unwrap_model(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [f.alias or n for n, f in current.model_fields.items()]
    return []


def field_by_key(model: type[BaseModel], key: str):
    for name, field in model.model_fields.items():
        if key in (name, field.alias):
            return field
    return None


def unwrap_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg
    return annotation

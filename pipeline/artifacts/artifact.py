"""A finished stage's folder: its manifest (what made it) and its typed output (what it holds)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import PipelineError
from .outputs import Output, PolicyOutput, output_from_dict

MANIFEST = "manifest.json"
METRICS = "metrics.json"
LOG_HISTORY = "log_history.json"


@dataclass(frozen=True)
class Artifact:
    """A finished stage's folder and its manifest."""

    path: Path
    manifest: dict

    @classmethod
    def read(cls, path: Path) -> "Artifact | None":
        """The artifact at ``path``, or None if there is none (a missing or unreadable manifest, or one written by a
        version of the pipeline without typed outputs)."""
        try:
            manifest = json.loads((Path(path) / MANIFEST).read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if not isinstance(manifest, dict) or not {"fingerprint", "produces", "output"} <= manifest.keys():
            return None
        return cls(Path(path), manifest)

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    @property
    def produces(self) -> str:
        return self.manifest["produces"]

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def output(self) -> Output:
        return output_from_dict(self.produces, self.manifest["output"])

    @property
    def policy(self) -> PolicyOutput:
        """The policy this artifact holds; PipelineError if it holds something else."""
        output = self.output
        if not isinstance(output, PolicyOutput):
            raise PipelineError(f"{self.path}: this {self.kind} artifact holds a {self.produces}, not a policy")
        return output

    @property
    def metrics(self) -> dict:
        return json.loads((self.path / METRICS).read_text()) if (self.path / METRICS).exists() else {}

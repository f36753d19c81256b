"""A finished stage's folder: its manifest (what made it) and its typed output (what it holds)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError
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
        """The policy this artifact holds; ModelError if it holds something else."""
        output = self.output
        if not isinstance(output, PolicyOutput):
            raise ModelError(f"{self.path}: this {self.kind} artifact holds a {self.produces}, not a policy")
        return output

    @property
    def metrics(self) -> dict:
        return json.loads((self.path / METRICS).read_text()) if (self.path / METRICS).exists() else {}

    def damage(self, full: bool = False) -> str | None:
        """What no longer matches the files recorded at commit (missing, resized or, when their modification time
        moved or ``full``, different content), or None when the artifact is intact."""
        from ..store.hashing import sha256_file

        recorded = self.manifest.get("files")
        if not isinstance(recorded, dict) or not recorded:
            return "its manifest records no files (written by an older pipeline)"
        for name, info in recorded.items():
            file = self.path / name
            if not file.is_file():
                return f"{name} is missing"
            stat = file.stat()
            if stat.st_size != info.get("size"):
                return f"{name} changed size ({info.get('size'):,} -> {stat.st_size:,} bytes)"
            if (full or stat.st_mtime_ns != info.get("mtime_ns")) and sha256_file(file) != info.get("sha256"):
                return f"{name} changed since the stage wrote it (sha256 differs)"
        return None


def record_files(folder: Path) -> dict[str, dict]:
    """Size, modification time and sha256 of every file of an artifact folder (the manifest excluded), for
    ``Artifact.damage``."""
    from ..store.hashing import sha256_file

    folder = Path(folder)
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            stat = path.stat()
            files[str(path.relative_to(folder))] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                                                    "sha256": sha256_file(path)}
    return files


def non_finite_weights(folder: Path) -> str | None:
    """"file: tensor" of the first weight holding NaN or inf in the safetensors files of a folder, or None."""
    import torch
    from safetensors import safe_open

    for path in sorted(Path(folder).rglob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                tensor = handle.get_tensor(name)
                if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                    return f"{path.relative_to(folder)}: {name}"
    return None

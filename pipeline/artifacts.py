"""Stage artifacts: the folder each stage writes, its manifest, and loading a policy out of one.

A policy artifact is either full weights (``config.json`` + ``model.safetensors``) or a peft adapter
(``adapter_config.json`` + ``adapter_model.safetensors``) with the tokenizer beside it; a LoRA stage may also
export merged weights under ``merged/``. ``manifest.json`` says which, and what the adapter was trained on.
"""

from __future__ import annotations

import json
import platform
import socket
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .errors import PipelineError

MANIFEST = "manifest.json"
METRICS = "metrics.json"
PACKAGES = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "deepspeed", "bitsandbytes")


@dataclass(frozen=True)
class Artifact:
    """A finished stage's folder and its manifest."""

    path: Path
    manifest: dict

    @classmethod
    def read(cls, path: Path) -> "Artifact | None":
        """The artifact at ``path``, or None if there is none (a missing or unreadable manifest)."""
        try:
            return cls(Path(path), json.loads((Path(path) / MANIFEST).read_text()))
        except (OSError, json.JSONDecodeError):
            return None

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    @property
    def produces(self) -> str:
        return self.manifest["produces"]

    @property
    def metrics(self) -> dict:
        return json.loads((self.path / METRICS).read_text()) if (self.path / METRICS).exists() else {}


def package_versions() -> dict[str, str | None]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> str | None:
    """The project's git commit (with '+dirty' when the tree has changes), or None outside a checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def host() -> str:
    return socket.gethostname()


# ---------------------------------------------------------------------------------------------------------------
# Policies


def policy_model_info(path: Path) -> dict:
    """The ``model`` section a policy stage puts in its manifest, read back."""
    artifact = Artifact.read(path)
    if artifact is None:
        raise PipelineError(f"{path}: not a stage artifact (no {MANIFEST})")
    info = artifact.manifest.get("model")
    if not info:
        raise PipelineError(f"{path}: this {artifact.manifest.get('kind')} artifact holds no policy model")
    return info


def load_policy(path: Path, dtype: str = "auto", trust_remote_code: bool = False):
    """Load a policy artifact as a plain (merged) causal LM, following adapters down to their base weights."""
    from peft import PeftModel

    from .models import load_causal_lm

    info = policy_model_info(path)
    if info["format"] == "full":
        return load_causal_lm(str(path), dtype, trust_remote_code)
    if info.get("merged"):
        return load_causal_lm(str(path / info["merged"]), dtype, trust_remote_code)
    base = info["base"]
    if (Path(base) / MANIFEST).exists():  # an adapter trained on another stage's (unmerged) policy
        base_model = load_policy(Path(base), dtype, trust_remote_code)
    else:
        base_model = load_causal_lm(base, dtype, trust_remote_code)
    merged = PeftModel.from_pretrained(base_model, str(path)).merge_and_unload()
    # peft froze the base weights to train the adapter; a loaded policy is trainable like any freshly loaded model
    return merged.requires_grad_(True)


def write_log_history(ctx, history: list[dict]) -> None:
    """The trainer's per-step log (loss curve and friends) as log_history.json. Main process only."""
    if ctx.is_main:
        from .atomic import write_json

        write_json(ctx.out_dir / "log_history.json", history)


def save_policy(ctx, trainer, tokenizer, source, merge: bool = False) -> dict:
    """Save a trained policy (adapter or full weights) and its tokenizer into the stage folder.

    Returns the manifest's ``model`` section. The adapter's ``base_model_name_or_path`` names the folder of the
    weights it was trained on, so ``AutoPeftModelForCausalLM.from_pretrained(stage_folder)`` works outside this project
    whenever that folder is a plain model folder.
    """
    trainer.save_model(str(ctx.out_dir))  # rank-aware: writes on the main process only
    return _describe_policy(ctx, trainer.model, tokenizer, source, merge)


def save_policy_model(ctx, model, tokenizer, source, merge: bool = False) -> dict:
    """``save_policy`` for a stage that trains without a transformers Trainer: ``model`` is the unwrapped policy (a
    peft model or full weights). Call it on every process; only the main one writes."""
    if ctx.is_main:
        model.save_pretrained(str(ctx.out_dir), safe_serialization=True)
    return _describe_policy(ctx, model, tokenizer, source, merge)


def _describe_policy(ctx, model, tokenizer, source, merge: bool) -> dict:
    """Tokenizer, adapter base path and merged export beside saved policy weights; the manifest's model section."""
    from peft import PeftModel

    is_adapter = isinstance(model, PeftModel)
    info: dict = {"format": "adapter" if is_adapter else "full",
                  # the policy training started from: the KL reference of `python -m pipeline eval`
                  "start": {"path": str(source.path), "is_artifact": source.is_artifact}}
    if is_adapter:
        info["base"] = _adapter_base(source)
    if ctx.is_main:
        # Trainer also pickles its arguments; artifacts hold safetensors and JSON only.
        (ctx.out_dir / "training_args.bin").unlink(missing_ok=True)
        tokenizer.save_pretrained(str(ctx.out_dir))
        if is_adapter:
            config_path = ctx.out_dir / "adapter_config.json"
            adapter_config = json.loads(config_path.read_text())
            adapter_config["base_model_name_or_path"] = info["base"]
            config_path.write_text(json.dumps(adapter_config, indent=2))
            if merge:
                merged = model.merge_and_unload()
                merged.save_pretrained(str(ctx.out_dir / "merged"), safe_serialization=True)
                tokenizer.save_pretrained(str(ctx.out_dir / "merged"))
    if is_adapter and merge:
        info["merged"] = "merged"
    return info


def _adapter_base(source) -> str:
    """The folder holding the weights an adapter was trained on."""
    if not source.is_artifact:
        return str(Path(source.path).resolve()) if Path(source.path).exists() else source.path
    upstream = Path(source.path).resolve()
    info = policy_model_info(upstream)
    if info["format"] == "adapter" and info.get("merged"):
        return str(upstream / info["merged"])
    return str(upstream)  # full weights, or an unmerged adapter that load_policy() follows down

"""Policies in and out of artifact folders: where a stage's starting policy comes from, loading a policy artifact as
a plain causal LM, and saving a trained one.

A policy artifact is either full weights (``config.json`` + ``model.safetensors``) or a peft adapter
(``adapter_config.json`` + ``adapter_model.safetensors``) with the tokenizer beside it; a LoRA stage may also export
merged weights under ``merged/``. Its ``PolicyOutput`` says which, and what the adapter was trained on.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import PipelineError
from .artifact import MANIFEST, Artifact
from .outputs import ModelRef, PolicyOutput


@dataclass
class PolicySource:
    """Where a stage's starting policy comes from: the recipe's base model or an upstream policy artifact."""

    path: str
    """Folder (or hub id) of the base model, or the upstream artifact folder."""
    is_artifact: bool
    dtype: str
    trust_remote_code: bool
    revision: str | None = None
    quantization: str | None = None
    """bitsandbytes quantisation (QLoRA) of the weights the stage starts from."""
    dense_path: str | None = None
    """For a quantised upstream artifact: a plain folder of its merged weights, which bitsandbytes quantises as it
    loads (see StageContext.start_folder)."""
    chat_template: str | None = None
    """The recipe's chat template, set on the tokenizer in place of the model's own."""

    def load(self):
        """The policy as a plain causal LM (adapters of upstream stages merged in), quantised if asked."""
        from ..models.loading import load_causal_lm

        if self.dense_path is not None:
            return load_causal_lm(self.dense_path, self.dtype, self.trust_remote_code, None, self.quantization)
        if self.is_artifact:
            return load_policy(Path(self.path), self.dtype, self.trust_remote_code)
        return load_causal_lm(self.path, self.dtype, self.trust_remote_code, self.revision, self.quantization)

    def tokenizer(self):
        from ..models.loading import load_tokenizer

        tokenizer = load_tokenizer(self.path, self.trust_remote_code, None if self.is_artifact else self.revision)
        if self.chat_template is not None:
            tokenizer.chat_template = self.chat_template
        return tokenizer


def _policy_of(path: Path) -> PolicyOutput:
    artifact = Artifact.read(path)
    if artifact is None:
        raise PipelineError(f"{path}: not a stage artifact (no readable {MANIFEST})")
    return artifact.policy


def load_policy(path: Path, dtype: str = "auto", trust_remote_code: bool = False):
    """Load a policy artifact as a plain (merged) causal LM, following adapters down to their base weights."""
    from peft import PeftModel

    from ..models.loading import load_causal_lm

    path = Path(path)
    info = _policy_of(path)
    if info.format == "full":
        return load_causal_lm(str(path), dtype, trust_remote_code)
    if info.merged:
        return load_causal_lm(str(path / info.merged), dtype, trust_remote_code)
    base_model = load_causal_lm(info.base.resolve(path), dtype, trust_remote_code)
    merged = PeftModel.from_pretrained(base_model, str(path)).merge_and_unload()
    # peft froze the base weights to train the adapter; a loaded policy is trainable like any freshly loaded model
    return merged.requires_grad_(True)


def save_policy(ctx, trainer, tokenizer, source: PolicySource, merge: bool = False) -> PolicyOutput:
    """Save a trained policy (adapter or full weights) and its tokenizer into the stage folder; returns its output.

    An adapter's ``base_model_name_or_path`` names a plain model folder of the weights it was trained on, so
    ``AutoPeftModelForCausalLM.from_pretrained(stage_folder)`` works outside this project: the base model's folder,
    the upstream's merged/ or full weights, or (for an upstream that is itself an unmerged adapter) its merged
    weights, materialised once under <output_dir>/.bases/.
    """
    trainer.save_model(str(ctx.out_dir))  # rank-aware: writes on the main process only
    return _describe_policy(ctx, trainer.model, tokenizer, source, merge)


def save_policy_model(ctx, model, tokenizer, source: PolicySource, merge: bool = False) -> PolicyOutput:
    """``save_policy`` for a stage that trains without a transformers Trainer: ``model`` is the unwrapped policy (a
    peft model or full weights). Call it on every process; only the main one writes."""
    if ctx.is_main:
        model.save_pretrained(str(ctx.out_dir), safe_serialization=True)
    return _describe_policy(ctx, model, tokenizer, source, merge)


def start_ref(ctx, source: PolicySource) -> ModelRef:
    """Where a stage started, as a reference that survives moving the run: the upstream artifact relative to this
    one, or the recipe's model source."""
    if source.is_artifact:
        return ModelRef(os.path.relpath(Path(source.path).resolve(), ctx.final_dir.absolute()), True, True)
    return ModelRef(ctx.recipe.model.source, False)


def base_ref(ctx, source: PolicySource) -> ModelRef:
    """The plain model folder an adapter trained on ``source`` applies to (see save_policy)."""
    if not source.is_artifact:
        return ModelRef(ctx.recipe.model.source, False)
    upstream = Path(source.path)
    info = _policy_of(upstream)
    if info.format == "full":
        folder = upstream
    elif info.merged:
        folder = upstream / info.merged
    else:
        folder = Path(ctx.dense_start())
    return ModelRef(os.path.relpath(folder.resolve(), ctx.final_dir.absolute()), False, True)


def point_adapter_at(config_path: Path, base: str) -> bool:
    """Set an adapter_config.json's base_model_name_or_path (atomically); whether it changed."""
    from ..store.atomic import write_json

    adapter_config = json.loads(config_path.read_text())
    if adapter_config.get("base_model_name_or_path") == base:
        return False
    adapter_config["base_model_name_or_path"] = base
    write_json(config_path, adapter_config)
    return True


def _describe_policy(ctx, model, tokenizer, source: PolicySource, merge: bool) -> PolicyOutput:
    """Tokenizer, adapter base and merged export beside saved policy weights; the stage's output."""
    from peft import PeftModel

    is_adapter = isinstance(model, PeftModel)
    base = base_ref(ctx, source) if is_adapter else None
    if ctx.is_main:
        # Trainer also pickles its arguments; artifacts hold safetensors and JSON only.
        (ctx.out_dir / "training_args.bin").unlink(missing_ok=True)
        tokenizer.save_pretrained(str(ctx.out_dir))
        if is_adapter:
            point_adapter_at(ctx.out_dir / "adapter_config.json", base.resolve(ctx.final_dir))
            if merge:
                merged = model.merge_and_unload()
                merged.save_pretrained(str(ctx.out_dir / "merged"), safe_serialization=True)
                tokenizer.save_pretrained(str(ctx.out_dir / "merged"))
    return PolicyOutput("adapter" if is_adapter else "full", start_ref(ctx, source), base,
                        "merged" if is_adapter and merge else None)


def repoint_adapters(artifact: Artifact) -> list[str]:
    """After the run's folder moved (or the base model's cache did), point every adapter of ``artifact`` at where its
    base is now, and update the file record in the manifest; returns the adapter configs changed."""
    from ..store.atomic import write_json
    from ..store.hashing import sha256_file

    changed = []
    for sub, base in artifact.output.adapters().items():
        config_path = artifact.path / sub / "adapter_config.json" if sub else artifact.path / "adapter_config.json"
        target = base.resolve(artifact.path)
        if not config_path.is_file() or not (Path(target).exists() or not base.relative):
            continue
        if point_adapter_at(config_path, target):
            changed.append(str(config_path.relative_to(artifact.path)))
    if changed:
        manifest = dict(artifact.manifest)
        files = dict(manifest.get("files") or {})
        for name in changed:
            stat = (artifact.path / name).stat()
            files[name] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                           "sha256": sha256_file(artifact.path / name)}
        manifest["files"] = files
        write_json(artifact.path / MANIFEST, manifest)
    return changed

"""Policies in and out of artifact folders: where a stage's starting policy comes from, loading a policy artifact as
a plain causal LM, and saving a trained one.

A policy artifact is either full weights (``config.json`` + ``model.safetensors``) or a peft adapter
(``adapter_config.json`` + ``adapter_model.safetensors``) with the tokenizer beside it; a LoRA stage may also export
merged weights under ``merged/``. Its ``PolicyOutput`` says which, and what the adapter was trained on.
"""

from __future__ import annotations

import json
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

        return load_tokenizer(self.path, self.trust_remote_code, None if self.is_artifact else self.revision)


def _policy_of(path: Path) -> PolicyOutput:
    artifact = Artifact.read(path)
    if artifact is None:
        raise PipelineError(f"{path}: not a stage artifact (no readable {MANIFEST})")
    return artifact.policy


def load_policy(path: Path, dtype: str = "auto", trust_remote_code: bool = False):
    """Load a policy artifact as a plain (merged) causal LM, following adapters down to their base weights."""
    from peft import PeftModel

    from ..models.loading import load_causal_lm

    info = _policy_of(path)
    if info.format == "full":
        return load_causal_lm(str(path), dtype, trust_remote_code)
    if info.merged:
        return load_causal_lm(str(path / info.merged), dtype, trust_remote_code)
    base = info.base
    if (Path(base) / MANIFEST).exists():  # an adapter trained on another stage's (unmerged) policy
        base_model = load_policy(Path(base), dtype, trust_remote_code)
    else:
        base_model = load_causal_lm(base, dtype, trust_remote_code)
    merged = PeftModel.from_pretrained(base_model, str(path)).merge_and_unload()
    # peft froze the base weights to train the adapter; a loaded policy is trainable like any freshly loaded model
    return merged.requires_grad_(True)


def save_policy(ctx, trainer, tokenizer, source: PolicySource, merge: bool = False) -> PolicyOutput:
    """Save a trained policy (adapter or full weights) and its tokenizer into the stage folder; returns its output.
 The adapter's ``base_model_name_or_path`` names the folder of the
    weights it was trained on, so ``AutoPeftModelForCausalLM.from_pretrained(stage_folder)`` works outside this project
    whenever that folder is a plain model folder.
    """
    trainer.save_model(str(ctx.out_dir))  # rank-aware: writes on the main process only
    return _describe_policy(ctx, trainer.model, tokenizer, source, merge)


def save_policy_model(ctx, model, tokenizer, source: PolicySource, merge: bool = False) -> PolicyOutput:
    """``save_policy`` for a stage that trains without a transformers Trainer: ``model`` is the unwrapped policy (a
    peft model or full weights). Call it on every process; only the main one writes."""
    if ctx.is_main:
        model.save_pretrained(str(ctx.out_dir), safe_serialization=True)
    return _describe_policy(ctx, model, tokenizer, source, merge)


def _describe_policy(ctx, model, tokenizer, source: PolicySource, merge: bool) -> PolicyOutput:
    """Tokenizer, adapter base path and merged export beside saved policy weights; the stage's output."""
    from peft import PeftModel

    is_adapter = isinstance(model, PeftModel)
    base = _adapter_base(source) if is_adapter else None
    if ctx.is_main:
        # Trainer also pickles its arguments; artifacts hold safetensors and JSON only.
        (ctx.out_dir / "training_args.bin").unlink(missing_ok=True)
        tokenizer.save_pretrained(str(ctx.out_dir))
        if is_adapter:
            config_path = ctx.out_dir / "adapter_config.json"
            adapter_config = json.loads(config_path.read_text())
            adapter_config["base_model_name_or_path"] = base
            config_path.write_text(json.dumps(adapter_config, indent=2))
            if merge:
                merged = model.merge_and_unload()
                merged.save_pretrained(str(ctx.out_dir / "merged"), safe_serialization=True)
                tokenizer.save_pretrained(str(ctx.out_dir / "merged"))
    return PolicyOutput("adapter" if is_adapter else "full", ModelRef(str(source.path), source.is_artifact), base,
                        "merged" if is_adapter and merge else None)


def _adapter_base(source: PolicySource) -> str:
    """The folder holding the weights an adapter was trained on."""
    if not source.is_artifact:
        return str(Path(source.path).resolve()) if Path(source.path).exists() else source.path
    upstream = Path(source.path).resolve()
    info = _policy_of(upstream)
    if info.format == "adapter" and info.merged:
        return str(upstream / info.merged)
    return str(upstream)  # full weights, or an unmerged adapter that load_policy() follows down

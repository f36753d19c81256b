"""``export``: a stage's result as a folder that needs nothing of this project: merged safetensors (or the adapter
with a copy of its base), the tokenizer with its chat template, the generation config, and a model card with the
evaluations that ran; optionally uploaded to the Hugging Face Hub."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..errors import ModelError, UsageError
from ..store.atomic import atomic_dir
from .artifact import METRICS, Artifact
from .model_card import evaluations_of, render
from .outputs import PolicyOutput, RewardModelOutput
from .policy import load_policy


def export(artifact: Artifact, to: Path, dtype: str | None = None, adapter: bool = False,
           name: str | None = None) -> Path:
    """Write the export of ``artifact`` into ``to`` (atomically: a temporary folder renamed at the end)."""
    from ..models.loading import load_sequence_classifier, load_tokenizer, torch_dtype

    to = Path(to)
    if to.exists() and any(to.iterdir()):
        raise UsageError(f"--to {to}: the folder exists and is not empty; choose a new one")
    output = artifact.output
    if not isinstance(output, (PolicyOutput, RewardModelOutput)):
        raise ModelError(f"{artifact.path}: a {artifact.kind} artifact holds {artifact.produces}, "
                         "not a model to export")
    if adapter and not (isinstance(output, PolicyOutput) and output.format == "adapter"):
        what = "a reward model" if isinstance(output, RewardModelOutput) else "full weights"
        raise UsageError(f"--adapter: {artifact.path} holds {what} (its stage trained every weight), so there is no "
                         "adapter to export; drop --adapter to export its weights")
    tokenizer = load_tokenizer(str(artifact.path))
    library = "transformers"
    with atomic_dir(to) as tmp:
        if isinstance(output, RewardModelOutput):
            model = load_sequence_classifier(str(artifact.path), dtype or "float32", heads=None)
            model.save_pretrained(tmp, safe_serialization=True)
        elif adapter and output.format == "adapter":
            library = "peft"
            base_folder = output.base.resolve(artifact.path)
            shutil.copytree(base_folder, tmp / "base", ignore=shutil.ignore_patterns(".*"))
            for file in ("adapter_model.safetensors", "adapter_config.json"):
                shutil.copy2(artifact.path / file, tmp / file)
            config = json.loads((tmp / "adapter_config.json").read_text())
            # plain peft reads this path as it stands: it is right where the export lies; move the folder and
            # point it at base/ again (or load base/ and apply the adapter with PeftModel.from_pretrained)
            config["base_model_name_or_path"] = str((to / "base").absolute())
            (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2))
        else:
            model = load_policy(artifact.path, dtype or "auto")
            if dtype is not None:
                model = model.to(torch_dtype(dtype))
            for config in (model.config, model.generation_config):
                config.eos_token_id = tokenizer.eos_token_id
                config.pad_token_id = tokenizer.pad_token_id
            model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        metrics = json.loads((artifact.path / METRICS).read_text()) if (artifact.path / METRICS).exists() else {}
        card = render(artifact.path, artifact.manifest, metrics, evaluations_of(artifact), name=name)
        if library == "transformers":
            card = card.replace("library_name: peft", "library_name: transformers", 1)
        (tmp / "README.md").write_text(card)
        for pickle in tmp.rglob("*.bin"):
            pickle.unlink()
    return to


def push_to_hub(folder: Path, repo_id: str, private: bool = False) -> str:
    """Upload an exported folder to the Hub (create_repo + upload_folder); a clear error without network or token."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise UsageError("--push-to-hub needs the network, and HF_HUB_OFFLINE is set; unset it (the export itself is "
                         f"in {folder})")
    import huggingface_hub

    if not huggingface_hub.get_token():
        raise UsageError("--push-to-hub: no Hugging Face token; log in with `hf auth login` or set HF_TOKEN (the "
                         f"export itself is in {folder})")
    try:
        huggingface_hub.create_repo(repo_id, private=private, exist_ok=True)
        info = huggingface_hub.upload_folder(repo_id=repo_id, folder_path=str(folder),
                                             commit_message="Upload from the alignment pipeline")
    except Exception as exc:  # network, permissions, a bad repo id: say which, keep the export
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"--push-to-hub {repo_id} failed ({type(exc).__name__}: {first[:300]}); the export is "
                         f"in {folder}") from None
    return str(getattr(info, "commit_url", None) or f"https://huggingface.co/{repo_id}")


"""What the runner hands a stage: its config, its upstream artifacts, where to write, and who it is in the job.

A stage reads upstream artifacts only through its context and returns a ``StageResult``; it never imports another
stage or the runner."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..artifacts.artifact import LOG_HISTORY, Artifact
from ..artifacts.policy import PolicySource
from ..config.schema import StageConfig

if TYPE_CHECKING:  # a stage reads the recipe's settings; the code that validates recipes is not part of its work
    from ..recipe.schema import Recipe

log = logging.getLogger("pipeline")

BASES = ".bases"
"""Sub-folder of the output folder holding merged upstream policies that adapters refer to as their base."""


def base_source(recipe: Recipe, base_model_path: str) -> PolicySource:
    """The recipe's base model as a policy source."""
    model = recipe.model
    return PolicySource(base_model_path, False, model.run_dtype, model.trust_remote_code, model.revision,
                        model.quantization, chat_template=model.chat_template)


def artifact_source(recipe: Recipe, path: Path) -> PolicySource:
    """A policy stage's artifact folder as a policy source, loaded with the recipe's model settings."""
    return PolicySource(str(path), True, recipe.model.run_dtype, recipe.model.trust_remote_code,
                        chat_template=recipe.model.chat_template)


@dataclass
class StageContext:
    """Everything a stage may use. A stage reads upstream artifacts only through this, never another stage's code."""

    name: str
    config: StageConfig
    recipe: Recipe
    out_dir: Path
    """Write the artifact here (a temporary folder the runner renames when the stage returns). Main process only."""
    final_dir: Path
    """Where the artifact will be once the stage is done (for paths written into it)."""
    work_dir: Path
    """Persistent scratch for this stage and fingerprint: trainer checkpoints live here so a killed run resumes."""
    upstream: dict[str, Artifact]
    fingerprint: str
    base_model_path: str
    """The resolved folder (or hub id) of the recipe's base model."""
    output_dir: Path | None = None
    """The run's output folder (stage variants live in its .store/, shared merged bases in its .bases/)."""
    process_index: int = 0
    num_processes: int = 1
    @property
    def is_main(self) -> bool:
        return self.process_index == 0

    @property
    def seed(self) -> int:
        return self.config.stage_seed(self.recipe.seed)

    def barrier(self) -> None:
        """Wait until every process of the job reaches this point (a no-op in a single process)."""
        from ..training.distributed import distributed_state

        distributed_state().wait_for_everyone()

    def upstream_of(self, produces: str) -> Artifact | None:
        """The upstream artifact of a type (validation guarantees at most one)."""
        for artifact in self.upstream.values():
            if artifact.produces == produces:
                return artifact
        return None

    def policy_source(self) -> PolicySource:
        """The upstream policy artifact if one is named, else the recipe's base model. With model.quantization the
        upstream policy is loaded quantised too (QLoRA in every stage), from its merged weights."""
        upstream = self.upstream_of("policy")
        if upstream is not None:
            source = artifact_source(self.recipe, upstream.path)
            if self.recipe.model.quantization:
                source.quantization = self.recipe.model.quantization
                source.dense_path = self.start_folder()
            return source
        return base_source(self.recipe, self.base_model_path)

    def start_folder(self) -> str:
        """A plain model folder (config.json + safetensors + tokenizer) of the weights this stage starts from: the base
        model's folder, or the upstream policy with its adapters merged (``dense_start``)."""
        if self.upstream_of("policy") is None:
            return self.base_model_path
        return self.dense_start()

    def dense_start(self) -> str:
        """The upstream policy's weights with every adapter merged, as a plain model folder under
        <output_dir>/.bases/<stage>-<fingerprint>/: written once (atomically, by the main process) and shared by every
        stage that starts from that policy; adapters trained on it name it as their base."""
        from ..store.atomic import built_once

        upstream = self.upstream_of("policy")
        info = upstream.policy
        if info.format == "full":
            return str(upstream.path)
        if info.merged:
            return str(upstream.path / info.merged)
        root = self.output_dir if self.output_dir is not None else self.final_dir.parent
        folder = root / BASES / f"{upstream.manifest.get('stage', upstream.path.name)}-{upstream.fingerprint[:12]}"
        if self.is_main:
            with built_once(folder) as tmp:
                if tmp is not None:
                    log.info("[%s] merging %s's adapter into a plain model folder (once; every stage that starts "
                             "from it shares %s)", self.name, upstream.manifest.get("stage", upstream.path.name),
                             folder)
                    source = artifact_source(self.recipe, upstream.path)
                    # Loading an adapter draws its initial weights before reading the stored ones: on the stage's
                    # random stream, that would make what the stage computes depend on whether an earlier stage or
                    # run had already built this folder. The build draws from a stream of its own.
                    with _own_random_stream():
                        source.load().save_pretrained(tmp, safe_serialization=True)
                    source.tokenizer().save_pretrained(tmp)
        self.barrier()
        return str(folder)

    def write_log_history(self, history: list[dict]) -> None:
        """The per-step training log (loss curve and friends) as log_history.json. Main process only."""
        if self.is_main:
            from ..store.atomic import write_json

            write_json(self.out_dir / LOG_HISTORY, history)

    def resume_checkpoint(self) -> str | None:
        """The newest complete trainer checkpoint in work_dir, if an earlier run of this exact stage was
        interrupted (half-written ones are skipped and removed)."""
        from ..training.checkpoints import last_complete_checkpoint

        if self.is_main:
            last = last_complete_checkpoint(self.work_dir, self.name)
        self.barrier()
        last = last_complete_checkpoint(self.work_dir, self.name) if not self.is_main else last
        if last and self.is_main:
            log.info("[%s] resuming from %s", self.name, last)
        return last


def _own_random_stream():
    """torch's random state (CPU and every visible GPU) as it was, once the block is done."""
    import torch

    return torch.random.fork_rng(devices=list(range(torch.cuda.device_count())))

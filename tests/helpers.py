"""Trainer callbacks that tests name in recipes (train.callbacks: ["helpers:..."])."""

from __future__ import annotations

import os

from transformers import TrainerCallback


class FailAtStep2(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 2:
            raise RuntimeError("boom at step 2")


class Probe(TrainerCallback):
    """Armed by environment variables, so the recipe (and its fingerprint) is the same in every run of a test:
    PROBE_STEP_LOG=file appends each finished step number to that file; PROBE_DIE_AFTER_SAVE=1 kills the process
    right after the first checkpoint is written, as a crash or a pre-empted job would."""

    def on_step_end(self, args, state, control, **kwargs):
        if os.environ.get("PROBE_STEP_LOG"):
            with open(os.environ["PROBE_STEP_LOG"], "a") as handle:
                handle.write(f"{state.global_step}\n")

    def on_save(self, args, state, control, **kwargs):
        if os.environ.get("PROBE_DIE_AFTER_SAVE"):
            os._exit(17)

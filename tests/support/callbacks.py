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


class ReferenceProbe(TrainerCallback):
    """Records, at the start and end of training, the logits of the reference (the PEFT model with its adapter
    disabled) and of the trained policy on a fixed input; writes them to $PROBE_REFERENCE_FILE as JSON."""

    ids = [[5, 6, 7, 8, 9, 10]]

    def _logits(self, model, disabled: bool):
        import torch

        ids = torch.tensor(self.ids)
        with torch.no_grad():
            if disabled:
                with model.disable_adapter():
                    return model(input_ids=ids).logits[0].tolist()
            return model(input_ids=ids).logits[0].tolist()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.begin = (self._logits(model, True), self._logits(model, False))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        import json

        end = (self._logits(model, True), self._logits(model, False))
        with open(os.environ["PROBE_REFERENCE_FILE"], "w") as handle:
            json.dump({"reference_begin": self.begin[0], "reference_end": end[0], "policy_begin": self.begin[1],
                       "policy_end": end[1]}, handle)


class KillDuringSave(TrainerCallback):
    """Armed by $PROBE_KILL_DURING_SAVE=N: the trainer's checkpoint at step N is cut off half-way (the model and
    optimizer written, the RNG file half, no trainer state) and the process dies at once, as under kill -9."""

    def __init__(self):
        step = os.environ.get("PROBE_KILL_DURING_SAVE")
        if not step:
            return
        from transformers import Trainer

        original = Trainer._save_rng_state

        def dying_save(trainer, output_dir):
            if trainer.state.global_step == int(step):
                with open(os.path.join(output_dir, "rng_state.pth"), "wb") as handle:
                    handle.write(b"half a file")
                os._exit(9)
            return original(trainer, output_dir)

        Trainer._save_rng_state = dying_save

"""The contract between the runner and a stage: what a stage receives (``StageContext``) and returns
(``StageResult`` holding one typed output). Stage modules import what they need from here."""

from ..artifacts.outputs import (
                                 EvaluationOutput,
                                 ModelRef,
                                 PolicyOutput,
                                 PreferencesOutput,
                                 RewardModelOutput,
                                 StageResult,
)
from .context import StageContext

__all__ = ["EvaluationOutput", "ModelRef", "PolicyOutput", "PreferencesOutput", "RewardModelOutput", "StageContext",
           "StageResult"]

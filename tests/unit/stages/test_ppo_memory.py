"""`plan`'s memory estimate counts each copy of the weights PPO holds: the policy, the value model (the reward
model's backbone) and, when the reference is explicit, a frozen reference."""

from __future__ import annotations

from stages.ppo_config import PPOStageConfig
from support import ROOT

PROMPTS = ROOT / "data_cards" / "movie_prompts.yaml"


def test_an_explicit_reference_is_a_third_copy_of_the_weights():
    assert PPOStageConfig(prompts=PROMPTS).memory_profile().weight_copies == 2.0
    assert PPOStageConfig(prompts=PROMPTS, reference="copy").memory_profile().weight_copies == 3.0
    assert PPOStageConfig(prompts=PROMPTS, lora=None).memory_profile().weight_copies == 3.0

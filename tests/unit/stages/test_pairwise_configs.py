"""The kinds that train on preference pairs (reward, dpo) share their data rule, adapters and memory profile
(pipeline/training/pairwise_config.py); what differs per kind stays theirs."""

from __future__ import annotations

import pytest

from stages.dpo_config import DPOStageConfig
from stages.reward_config import RewardStageConfig


@pytest.mark.parametrize("kind", [RewardStageConfig, DPOStageConfig])
def test_pairs_come_from_a_card_or_a_preferences_stage_never_both(kind, tmp_path):
    card = tmp_path / "pairs.yaml"
    card.write_text("")
    assert kind().input_problems({"policy", "preferences"}) == []
    assert kind().input_problems({"policy"}) == [
        "needs preference data: name a preferences stage in `from`, or set `data:` to a card"]
    with_card = kind(data=str(card))
    assert with_card.input_problems({"policy"}) == []
    assert with_card.input_problems({"preferences"}) == [
        "preference data given twice: both `data:` and a preferences stage in `from`"]
    assert with_card.data_inputs() == [("data", with_card.data, "preference")]
    assert with_card.input_files() == [card]
    assert kind().data_inputs() == [] and kind().input_files() == []


@pytest.mark.parametrize("kind", [RewardStageConfig, DPOStageConfig])
def test_a_pair_doubles_the_micro_batch(kind):
    config = kind(train={"batch_size": 3}, max_length=100)
    profile = config.memory_profile()
    assert (profile.train.batch_size, profile.lora, profile.sequence_length) == (6, config.lora, 100)
    assert config.trained_models() == {"lora": config.lora}


def test_only_an_explicit_dpo_reference_is_a_second_copy():
    assert RewardStageConfig(lora=None).memory_profile().weight_copies == 1.0
    assert DPOStageConfig().memory_profile().weight_copies == 1.0
    assert DPOStageConfig(reference="copy").memory_profile().weight_copies == 2.0
    assert DPOStageConfig(lora=None).memory_profile().weight_copies == 2.0


def test_each_kind_keeps_its_own_defaults_and_field_order():
    assert DPOStageConfig().train.learning_rate == 5e-5 and RewardStageConfig().train.learning_rate == 1e-4
    assert list(RewardStageConfig.model_fields)[:7] == ["kind", "from_", "seed", "data", "lora", "train",
                                                        "max_length"]
    assert list(DPOStageConfig.model_fields)[:7] == ["kind", "from_", "seed", "data", "lora", "train", "max_length"]
    assert "score head" in RewardStageConfig.model_fields["lora"].description
    assert "frozen copy" in DPOStageConfig.model_fields["lora"].description

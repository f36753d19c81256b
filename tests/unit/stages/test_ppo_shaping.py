"""PPO's score penalties: the missing-EOS penalty and the repetition penalty (reward shaping against the commonest
gaming: a content word repeated three or more times)."""

from __future__ import annotations

import torch

from pipeline.evaluation.generation import Completion
from stages.ppo.experience import penalised_scores
from stages.ppo_config import PPOStageConfig
from support import ROOT

PROMPTS = ROOT / "data_cards" / "movie_prompts.yaml"


def completion(text: str, eos: bool = True) -> Completion:
    return Completion(prompt="p", completion=text, prompt_ids=[1], completion_ids=[2], eos=eos)


def config(**settings) -> PPOStageConfig:
    return PPOStageConfig(prompts=PROMPTS, **settings)


BATCH = [completion("a fine film with a good cast"),
         completion("great great fun and GREAT acting"),         # "great" three times, case folded
         completion("love love it, the the the end", eos=False)]  # "love" twice, "the" too short to count


def test_repetition_penalty_hits_only_responses_that_repeat_a_content_word():
    raw = torch.tensor([1.0, 2.0, 3.0])
    shaped = penalised_scores(raw, BATCH, config(repetition_penalty=1.5))
    assert shaped.tolist() == [1.0, 0.5, 3.0]
    assert raw.tolist() == [1.0, 2.0, 3.0], "the raw scores (logged as `score`) are left as they were"


def test_penalties_add_up_and_none_means_unchanged():
    raw = torch.tensor([1.0, 2.0, 3.0])
    assert penalised_scores(raw, BATCH, config()).tolist() == [1.0, 2.0, 3.0]
    both = penalised_scores(raw, BATCH, config(repetition_penalty=1.0, missing_eos_penalty=0.25))
    assert both.tolist() == [1.0, 1.0, 2.75]

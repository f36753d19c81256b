"""`chat`: a stage's policy answers through its chat template, once (--prompt) or over a conversation that keeps its
turns; what is not a policy is refused with a usage error."""

from __future__ import annotations

import io

from pipeline.artifacts.policy import load_policy
from pipeline.cli import main
from pipeline.evaluation.generation import generate
from pipeline.evaluation.settings import SamplingSettings
from pipeline.models.loading import load_tokenizer

GREEDY = ["--greedy", "--max-new-tokens", "6", "--dtype", "float32"]


def expected(folder, conversation: list[dict]) -> str:
    model, tokenizer = load_policy(folder, "float32"), load_tokenizer(str(folder))
    (completion,) = generate(model, tokenizer, [conversation], SamplingSettings(max_new_tokens=6, do_sample=False),
                             seed=0, progress=False)
    return completion.completion


def test_one_question_is_answered_as_the_policy_answers_it(tiny_upstream, capsys):
    assert main(["chat", str(tiny_upstream / "sft"), "--prompt", "Say hello.", *GREEDY]) == 0
    answer = expected(tiny_upstream / "sft", [{"role": "user", "content": "Say hello."}])
    assert capsys.readouterr().out == answer + "\n"


def test_a_conversation_keeps_its_turns_until_reset(tiny_upstream, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("Say hello.\nAnd again?\n/reset\nAnd again?\n\n"))
    assert main(["chat", str(tiny_upstream / "sft"), *GREEDY]) == 0
    replies = [line.split("> ", 1)[1] for line in capsys.readouterr().out.splitlines() if line.startswith("sft> ")]
    first = expected(tiny_upstream / "sft", [{"role": "user", "content": "Say hello."}])
    second = expected(tiny_upstream / "sft", [{"role": "user", "content": "Say hello."},
                                              {"role": "assistant", "content": first},
                                              {"role": "user", "content": "And again?"}])
    fresh = expected(tiny_upstream / "sft", [{"role": "user", "content": "And again?"}])
    assert replies == [first, second, fresh]


def test_a_reward_model_or_a_missing_stage_is_a_usage_error(tiny_upstream, capsys, tmp_path):
    assert main(["chat", str(tiny_upstream / "reward"), "--prompt", "Hi"]) == 2
    assert "holds a reward_model, not a policy" in capsys.readouterr().err
    assert main(["chat", str(tmp_path / "nothing"), "--prompt", "Hi"]) == 2
    assert "not a stage artifact" in capsys.readouterr().err

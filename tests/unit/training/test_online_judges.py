"""The online stages' rollout judges: a judge sees the plain prompt and completion text of TRL's conversational rows,
and its step mean is logged under the judge's own key in the trainer's history row and in what later callbacks see."""

from __future__ import annotations

from types import SimpleNamespace

from pipeline.evaluation.judges import FunctionJudge
from pipeline.training.online import JudgeReward, judge_log_keys


def test_a_judge_scores_the_text_of_conversational_rows():
    seen = []

    def judge(prompts, completions):
        seen.append((prompts, completions))
        return [len(c) for c in completions]

    reward = JudgeReward("gold", FunctionJudge("length", judge))
    prompts = [[{"role": "user", "content": "Rate this"}], [{"role": "user", "content": "And this"}]]
    completions = [[{"role": "assistant", "content": "good"}], [{"role": "assistant", "content": "fine!"}]]
    assert reward(prompts=prompts, completions=completions, completion_ids=[[1], [2]], trainer_state=None) == [4, 5]
    assert seen == [(["Rate this", "And this"], ["good", "fine!"])]
    assert reward(prompts=["plain"], completions=["text"]) == [4], "standard (non-conversational) rows"
    assert reward.__name__ == "gold", "TRL names the log key rewards/<name>/mean after it"


def test_the_step_mean_is_logged_under_the_judges_key():
    callback = judge_log_keys([JudgeReward("gold", None), JudgeReward("judge/length", None)])
    logs = {"reward": 1.0, "rewards/gold/mean": 0.25, "rewards/judge/length/mean": 3.0}
    state = SimpleNamespace(log_history=[{**logs, "step": 7}])
    callback.on_log(None, state, None, logs=logs)
    assert logs["gold"] == 0.25 and logs["judge/length"] == 3.0
    assert state.log_history[-1]["gold"] == 0.25 and state.log_history[-1]["judge/length"] == 3.0
    evaluation = {"eval_loss": 1.0}
    callback.on_log(None, state, None, logs=evaluation)
    assert evaluation == {"eval_loss": 1.0}, "a row without the judge's mean is left alone"

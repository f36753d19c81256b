"""Config of the `evaluate` stage: gold evaluation of one policy (or of the base model) on held-out prompts.

The recipe's `evaluate:` section expands into one such node per target: eval-base for the base model and
eval-<stage> for each policy stage; a recipe may also name `kind: evaluate` stages itself.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pipeline.config.schema import ExistingPath, StageConfig
from pipeline.evaluation.judges import reward_stage
from pipeline.evaluation.settings import EvalSettings


class EvaluateStageConfig(EvalSettings, StageConfig):
    """Samples completions from the upstream policy (no upstream: the base model) for the prompts of a card, scores
    them with the gold judge, and measures the KL to the policy the upstream stage started from (0 for the base
    model)."""

    kind: Literal["evaluate"] = "evaluate"
    prompts: ExistingPath
    """Data card of the held-out evaluation prompts (prompt-only format; its eval split, or every row of a card
    without one)."""

    produces: ClassVar[str] = "evaluation"
    accepts: ClassVar[dict[str, bool]] = {"policy": False, "reward_model": False}  # the reward: a judge's model
    attached: ClassVar[bool] = True
    recipe_section: ClassVar[str] = "evaluate"
    node_prefix: ClassVar[str] = "eval-"
    time_fit: ClassVar[tuple[float, float] | None] = (0.48, 0.5)

    def stage_seed(self, recipe_seed: int) -> int:
        return recipe_seed  # ``seed`` is the evaluation's sampling seed, which it applies itself

    def work_flops(self, shape, upstream: dict) -> float | None:
        from pipeline.models import duration, flops

        new = self.sampling.max_new_tokens
        cost = duration.sampled(shape, self.n, new)
        if self.from_:  # the KL's reference pass over prompt and answer (the policy's side comes from sampling)
            length = duration.PROMPT_TOKENS + new
            cost += flops.lm_forward(shape, self.n * length, length, self.n * new)
        return cost

    def data_inputs(self) -> list[tuple[str, object, str]]:
        return [("prompts", self.prompts, "eval_prompt")]

    def judge_specs(self) -> list[tuple[str, str]]:
        return [("judge", self.judge)] + [(f"judges[{i}]", spec) for i, spec in enumerate(self.judges)]

    def judge_stages(self, names) -> list[str]:
        """The recipe stages that "reward:STAGE" judges read (they become upstreams of the node)."""
        return _judging_stages([self.judge, *self.judges], names)

    @classmethod
    def nodes_from_section(cls, section, produced: dict[str, str], names: list[str]):
        settings = section.model_dump(mode="json", exclude={"baseline", "stages"})
        problems = []
        for i, name in enumerate(section.stages or []):
            if name not in names:
                problems.append((f"stages[{i}]", f"no stage named '{name}'"))
            elif produced.get(name, "policy") != "policy":
                problems.append((f"stages[{i}]", f"'{name}' makes a {produced[name]}, not a policy"))
        targets = [n for n in names if produced.get(n) == "policy"
                   and (section.stages is None or n in section.stages)]
        judged_by = _judging_stages([settings.get("judge"), *(settings.get("judges") or [])], names)
        for stage in judged_by:
            if produced.get(stage, "reward_model") != "reward_model":
                problems.append(("judges", f"'reward:{stage}': '{stage}' makes a {produced[stage]}, not a reward "
                                           "model"))
        nodes = {f"{cls.node_prefix}base": {**settings, "from": judged_by}} if section.baseline else {}
        nodes.update({f"{cls.node_prefix}{name}": {**settings, "from": [name, *judged_by]} for name in targets})
        return nodes, problems


def _judging_stages(specs, names) -> list[str]:
    """The stages of ``names`` that "reward:STAGE" judges among ``specs`` read, in order."""
    return [stage for stage in (reward_stage(spec, names) for spec in specs) if stage is not None]


CONFIG = EvaluateStageConfig

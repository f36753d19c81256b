"""A sweep re-plans each later variant just before it runs. Whether a stage starts over (discards its checkpoints)
is the plan's ``forced`` flag, never its display reason, so re-planning cannot lose it."""

from __future__ import annotations

from argparse import Namespace

from pipeline.cli.planning import plan_variant, replan
from pipeline.graph.plan import Action, StagePlan
from pipeline.recipe import load_recipe
from support import sft_stage


def test_fresh_follows_the_forced_flag_not_the_reason():
    forced = StagePlan("sft", "sft", "f" * 64, Action.RUN, "shown to the user, whatever it says", forced=True)
    assert forced.fresh
    assert not StagePlan("sft", "sft", "f" * 64, Action.RUN, "forced").fresh
    assert not StagePlan("sft", "sft", "f" * 64, Action.CACHED, "artifact matches", forced=True).fresh


def test_a_sweep_replan_keeps_a_forced_stage_fresh(make_recipe, chat_data):
    """sft -> next, swept over next's learning rate, with --force sft: the second variant finds sft computed by the
    first (cached, not forced) and still rebuilds its own next from scratch."""
    path = make_recipe({"sft": sft_stage(chat_data), "next": {**sft_stage(chat_data, steps=2), "from": "sft"}})
    args = Namespace(output_dir=None, only=[], from_stage=None, force=["sft"], verify=False)
    first = plan_variant(load_recipe(path, ["stages.next.train.learning_rate=0.01"]), args, "lr 0.01")
    second = plan_variant(load_recipe(path, ["stages.next.train.learning_rate=0.02"]), args, "lr 0.02")
    assert [(s.action, s.fresh) for s in first.stages] == [(Action.RUN, True), (Action.RUN, True)]

    computed = {s.folder for s in first.stages if s.action is Action.RUN}
    replanned = replan(second, args, computed)
    assert replanned.variant == "lr 0.02"
    assert (replanned["sft"].action, replanned["sft"].fresh) == (Action.CACHED, False)
    assert replanned["sft"].reason == "computed earlier in this sweep"
    assert (replanned["next"].action, replanned["next"].forced, replanned["next"].fresh) == (Action.RUN, True, True)

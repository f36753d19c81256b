"""The plans of `plan` and `run`: one per sweep point, under the command's selection flags (--output-dir, --only,
--from, --force, --verify), and a later sweep point's plan made again just before it runs."""

from __future__ import annotations


def plans(args, processes: int) -> list:
    """One plan per variant of the sweep (one plan without a sweep), each validated and checked before any work."""
    from ..graph.preflight import check_before_running
    from ..graph.sweep import combinations, parse_sweeps
    from ..recipe import load_recipe

    base = load_recipe(args.recipe, args.overrides, processes)
    axes = parse_sweeps([*(getattr(args, "sweep", []) or []), *seed_sweeps(getattr(args, "seeds", []) or [], base)],
                        base.sweep, args.recipe)
    made = []
    for point in combinations(axes):
        recipe = load_recipe(args.recipe, [*args.overrides, *point], processes) if point else base
        check_before_running(recipe, args.recipe, args.output_dir)
        made.append(plan_variant(recipe, args, " ".join(point)))
    return made


def seed_sweeps(specs: list[str], recipe) -> list[str]:
    """--seeds STAGE=N as --sweep specs: stages.STAGE.seed over null (the recipe's seed, so the recipe's own variant
    is one of them, cached if it ran) and the N-1 seeds after the recipe's."""
    from ..errors import UsageError

    sweeps = []
    for spec in specs:
        stage, _, count = spec.partition("=")
        stage = stage.strip()
        if stage not in recipe.stages:
            raise UsageError(f"--seeds {spec}: the recipe has no stage '{stage}' (its stages: "
                             f"{', '.join(recipe.stages)})")
        seeds = ["null", *(str(recipe.seed + i) for i in range(1, int(count)))]
        sweeps.append(f"stages.{stage}.seed={','.join(seeds)}")
    return sweeps


def plan_variant(recipe, args, variant: str):
    """The plan of one sweep point (variant "" outside a sweep) under the command's selection flags."""
    from ..graph.plan import make_plan

    return make_plan(recipe, args.output_dir, args.only, args.from_stage, args.force, args.verify, variant)


def replan(plan, args, computed: set):
    """The plan of a later sweep variant, made again just before it runs: the stages an earlier variant stored are
    cache hits now (a plan made at the start would run the shared upstreams once per variant), and a stage forced
    with --force or --from runs once per invocation, not once per variant."""
    from ..graph.plan import Action

    fresh = plan_variant(plan.recipe, args, plan.variant)
    for stage in fresh.stages:
        if stage.action is Action.RUN and stage.folder in computed:
            stage.action, stage.reason, stage.forced = Action.CACHED, "computed earlier in this sweep", False
    return fresh

"""`runs`: list every stored variant of every stage, and how each differs from what the recipe asks today."""

from __future__ import annotations

from .common import override_arg


def add_parser(commands) -> None:
    parser = commands.add_parser("runs", help="list the stored variants of every stage",
                                 description="List every stored variant per stage: fingerprint, date, size on disk, "
                                             "key metrics (gold, KL, repetition, held-out accuracy or loss, PPO "
                                             "score), the settings that tell a stage's variants apart, and whether "
                                             "the recipe as written uses it (same) or why not; * marks the one "
                                             "<output_dir>/<stage> names.")
    parser.add_argument("recipe", nargs="?", help="the recipe whose output folder to list (and compare with)")
    override_arg(parser, "override a recipe value before comparing")
    parser.add_argument("--output-dir", help="the output folder (default: the recipe's)")
    parser.set_defaults(handler=handle)


def handle(args) -> int:
    from pathlib import Path

    from ..errors import UsageError
    from ..graph.plan import make_plan
    from ..graph.variants import describe_variants
    from ..recipe import load_recipe

    plan = None
    if args.recipe:
        recipe = load_recipe(args.recipe, args.overrides)
        plan = make_plan(recipe, args.output_dir)
        out = plan.out_dir
    elif args.output_dir:
        out = Path(args.output_dir)
    else:
        raise UsageError("give a recipe (its output folder is listed) or --output-dir")
    print(describe_variants(out, plan))
    return 0

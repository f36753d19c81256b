"""`report`: the gold evaluation table of a recipe's run, and with --out a self-contained HTML report."""

from __future__ import annotations

from .common import recipe_args


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "report", help="print the gold evaluation table of a recipe's run (and an HTML report)",
        description="Print the eval.json rows of the base model and each policy stage; with --out, also an HTML report "
                    "with the reward-KL frontier and curves.")
    recipe_args(parser)
    parser.add_argument("--output-dir", help="where the run's artifacts are (default: from the recipe)")
    parser.add_argument("--out", metavar="FILE.html",
                        help="also write a self-contained HTML report (gold table, reward-KL frontier of every stored "
                             "variant, training curves, samples) and its PNGs beside it")
    parser.set_defaults(handler=handle)


def handle(args) -> int:
    import sys

    from ..graph.plan import make_plan
    from ..graph.report import format_report, report_rows
    from ..recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    plan = make_plan(recipe, args.output_dir)
    table = format_report(report_rows(plan))
    if not table:
        print(f"no evaluation under {plan.out_dir}: does the recipe have an evaluate: section, and has it run "
              "(with these --set values and --output-dir)?", file=sys.stderr)
        return 1
    print(table)
    if args.out:
        from ..graph.html_report import render

        print(f"wrote {render(plan, args.out)}")
    return 0

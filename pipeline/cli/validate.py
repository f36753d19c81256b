"""`validate`: check a recipe without loading any model, and list every problem with its YAML path (exit 2)."""

from __future__ import annotations

from .common import recipe_args


def add_parser(commands) -> None:
    parser = commands.add_parser("validate", help="check a recipe and report every problem",
                                 description="Check a recipe without loading any model; exit 2 listing every "
                                             "problem with its YAML path.")
    recipe_args(parser)
    parser.add_argument("--launch", metavar="ACCELERATE_CONFIG",
                        help="check the recipe for this accelerate config's process count (e.g. "
                             "launch/cpu_2proc.yaml); default: one process, whatever the environment says")
    parser.set_defaults(handler=handle)


def handle(args) -> int:
    from ..graph.preflight import check_before_running
    from ..recipe import load_recipe, topological_order

    recipe = load_recipe(args.recipe, args.overrides, _processes(args))
    check_before_running(recipe, args.recipe)
    order = topological_order(recipe)
    stages = [n for n in order if not recipe.stages[n].attached]
    nodes = len(order) - len(stages)
    extra = f" (+{nodes} evaluation node{'s' if nodes != 1 else ''})" if nodes else ""
    print(f"{args.recipe}: OK: {len(stages)} stage(s): {' -> '.join(stages)}{extra}")
    return 0


def _processes(args) -> int:
    """The process count validation assumes: the --launch config's, else 1 (never the environment)."""
    if args.launch:
        from ..models.estimate import Layout

        return Layout.from_launch_file(args.launch).processes
    return 1

"""`gc`: remove the stored variants (and merged bases, checkpoints) that neither the given recipes use nor a stage
link names, under each output folder's lock."""

from __future__ import annotations


def add_parser(commands) -> None:
    parser = commands.add_parser("gc", help="remove stored variants no recipe names",
                                 description="Remove the stored variants (and merged bases, checkpoints) that "
                                             "neither the given recipes use nor a stage link names.")
    parser.add_argument("recipes", nargs="*", help="recipes whose variants (and their lineage) to keep")
    parser.add_argument("--output-dir", help="the output folder (default: each recipe's)")
    parser.add_argument("--dry-run", action="store_true", help="only list what would be removed, and the space freed")
    parser.set_defaults(handler=handle)


def handle(args) -> int:
    from pathlib import Path

    from ..errors import UsageError
    from ..graph.plan import make_plan
    from ..graph.variants import collect, size_text
    from ..recipe import load_recipe
    from ..store.lock import OutputLock

    plans = [make_plan(load_recipe(recipe), args.output_dir) for recipe in args.recipes]
    outs = {Path(args.output_dir)} if args.output_dir else {plan.out_dir for plan in plans}
    if not outs:
        raise UsageError("give the recipes whose variants to keep, or --output-dir (then only the variants the stage "
                         "links name are kept)")
    for out in sorted(outs):
        with OutputLock(out):
            doomed, freed = collect(out, [p for p in plans if p.out_dir == out], dry_run=args.dry_run)
        verb = "would remove" if args.dry_run else "removed"
        for path in doomed:
            print(f"{verb} {path}")
        print(f"{out}: {verb} {len(doomed)} folder(s), {size_text(freed)}")
    return 0

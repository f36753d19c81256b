"""`run`: validate the recipe, then run every stage that is not cached (each sweep point in turn), and print each
stage's headline metrics and the gold table."""

from __future__ import annotations

import logging
import os

from .common import recipe_args, selection_args
from .planning import plans, replan

HEADLINE_METRICS = ("train_loss", "eval_loss", "global_step", "pairs", "dropped_near_ties", "eval_accuracy",
                    "gold_mean", "kl_mean")


def add_parser(commands) -> None:
    parser = commands.add_parser("run", help="run a recipe (cached stages are skipped)",
                                 description="Validate the recipe, then run every stage that is not cached.")
    recipe_args(parser)
    selection_args(parser)
    parser.add_argument("--keep-checkpoints", action="store_true",
                        help="keep trainer checkpoints under <output_dir>/.work after a stage finishes")
    parser.add_argument("--sweep", action="append", default=[], metavar="KEY.PATH=V1,V2,...",
                        help="run a variant for each value (several --sweep make a grid), e.g. --sweep "
                             "stages.dpo.beta=0.05,0.1,0.3; stages the variants share run once")
    parser.set_defaults(handler=handle)


def handle(args) -> int:
    from ..graph.plan import Action
    from ..graph.report import format_report, report_rows
    from ..graph.runner import run_plan
    from ..training.distributed import shutdown_distributed

    # the job's real process count: checks that depend on it fail here, before any long work
    variants = plans(args, int(os.environ.get("WORLD_SIZE", "1")))
    results = []
    computed: set = set()  # artifact folders this invocation has written
    for i, plan in enumerate(variants, start=1):
        if i > 1:
            variants[i - 1] = plan = replan(plan, args, computed)
        if len(variants) > 1 and int(os.environ.get("RANK", "0")) == 0:
            logging.getLogger("pipeline").info("sweep variant %d of %d: %s", i, len(variants), plan.variant)
        results.append(run_plan(plan, keep_checkpoints=args.keep_checkpoints, siblings=variants))
        computed |= {s.folder for s in plan.stages if s.action is Action.RUN}
    shutdown_distributed()
    if int(os.environ.get("RANK", "0")) == 0:
        for plan, result in zip(variants, results):
            if len(variants) > 1:
                print(f"\n== {plan.variant}")
            for name, metrics in result.items():
                shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()
                         if k in HEADLINE_METRICS}
                print(f"{name}: {'cached' if plan[name].action is Action.CACHED else 'done'} {shown}")
            table = format_report(report_rows(plan))
            if table:
                print("\n" + table + "\n")
        print(f"artifacts in {variants[0].out_dir}")
    return 0

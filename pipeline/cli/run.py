"""`run`: validate the recipe, then run every stage that is not cached (each sweep point in turn), and print each
stage's headline metrics and the gold table."""

from __future__ import annotations

import logging
import os

from .common import assignment, recipe_args, seeds_arg, selection_args
from .planning import plans, replan

HEADLINES = {
    "sft": (("train_loss", "train loss"), ("eval_loss", "held-out loss")),
    "preferences": (("pairs", "pairs"), ("dropped_near_ties", "near-ties dropped")),
    "reward": (("eval_accuracy", "held-out pair accuracy"), ("train_loss", "train loss")),
    "dpo": (("eval_rewards/accuracies", "held-out reward accuracy"), ("eval_loss", "held-out loss")),
    "ppo": (("score_first", "score at step 1"), ("score_last", "at the end"), ("kl_last", "KL")),
    "evaluate": (("gold_mean", "gold"), ("kl_mean", "KL")),
}
"""The metrics that say whether a stage of each kind did its job, with their names as printed."""
FALLBACK = (("train_loss", "train loss"), ("eval_loss", "held-out loss"), ("global_step", "steps"))


def headline(kind: str, metrics: dict) -> str:
    """A stage's key metrics in words, e.g. "score at step 1 -2.16, at the end 3.47, KL 10.2"."""
    shown = [f"{label} {metrics[key]:.4g}" if isinstance(metrics[key], float) else f"{label} {metrics[key]}"
             for key, label in HEADLINES.get(kind, FALLBACK) if metrics.get(key) is not None]
    return ", ".join(shown)


RUN_LOG = "run.log"
"""The pipeline's log lines of every run into an output folder, appended (the progress bars stay on the terminal)."""


def next_commands(args, out_dir) -> str:
    """What to try after a run, with the run's own output folder (``out_dir``) and overrides; chat and export take no
    --set, so an output folder set by an override reaches them as --output-dir."""
    from shlex import quote  # lines to paste into a shell: a value with spaces or braces stays one argument

    folder = f" --output-dir {quote(str(args.output_dir))}" if args.output_dir else ""
    where = folder + "".join(f" --set {quote(o)}" for o in args.overrides)
    if not folder and any(o.startswith("output_dir=") for o in args.overrides):
        folder = f" --output-dir {quote(str(out_dir))}"
    return "\n".join(["next:",
                      f"  python -m pipeline report {args.recipe}{where}    # gold table, curves, frontier plot",
                      f"  python -m pipeline runs {args.recipe}{where}      # every stored variant, what differs",
                      f"  python -m pipeline chat STAGE --recipe {args.recipe}{folder}    # talk to a policy",
                      f"  python -m pipeline export STAGE --recipe {args.recipe}{folder} --to FOLDER"])


def add_parser(commands) -> None:
    parser = commands.add_parser("run", help="run a recipe (cached stages are skipped)",
                                 description="Validate the recipe, then run every stage that is not cached.")
    recipe_args(parser)
    selection_args(parser)
    parser.add_argument("--keep-checkpoints", action="store_true",
                        help="keep trainer checkpoints under <output_dir>/.work after a stage finishes")
    parser.add_argument("--sweep", action="append", default=[], metavar="KEY.PATH=V1,V2,...", type=assignment,
                        help="run a variant for each value (several --sweep make a grid), e.g. --sweep "
                             "stages.dpo.beta=0.05,0.1,0.3; stages the variants share run once")
    seeds_arg(parser, "run STAGE (and what follows it) at N seeds over the same upstream: the recipe's seed and the "
                      "N-1 after it, as a sweep of stages.STAGE.seed; runs and compare then show the spread across "
                      "seeds, e.g. --seeds ppo=3")
    parser.set_defaults(handler=handle)


def keep_log(path) -> None:
    """Append the pipeline's log lines to ``path`` as well as the terminal."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    logging.getLogger("pipeline").addHandler(handler)


def handle(args) -> int:
    from ..graph.plan import Action
    from ..graph.report import format_report, report_rows
    from ..graph.runner import run_plan
    from ..training.distributed import shutdown_distributed

    # the job's real process count: checks that depend on it fail here, before any long work
    variants = plans(args, int(os.environ.get("WORLD_SIZE", "1")))
    if int(os.environ.get("RANK", "0")) == 0:
        keep_log(variants[0].out_dir / RUN_LOG)
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
                state = "cached" if plan[name].action is Action.CACHED else "done"
                print(f"{name}: {state}" + (f": {text}" if (text := headline(plan[name].kind, metrics)) else ""))
            table = format_report(report_rows(plan))
            if table:
                print("\n" + table + "\n")
        print(f"artifacts in {variants[0].out_dir} (log: {variants[0].out_dir / RUN_LOG})")
        print(next_commands(args, variants[0].out_dir))
    return 0

"""Command line: ``python -m pipeline {run,validate,plan} RECIPE``; also installed as ``alignment-pipeline``.

Run under ``accelerate launch -m pipeline run RECIPE`` for several processes or DeepSpeed (configs in launch/).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

EPILOG = """\
examples:
  python -m pipeline validate recipes/tiny.yaml
  python -m pipeline plan recipes/tiny.yaml --set stages.sft.lora.r=8
  python -m pipeline run recipes/tiny.yaml
  accelerate launch --config_file launch/cpu_2proc.yaml -m pipeline run recipes/tiny.yaml

Stages whose artifact matches their fingerprint (config + inputs + upstream artifacts) are skipped; a stage
interrupted mid-training resumes from its last checkpoint on the next run.
"""


def _quiet_environment() -> None:
    # Set before torch/transformers are imported: they read these at import time.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import warnings

    # TRL's configs still set the old name; transformers 5 warns on every trainer. Nothing for the user to do.
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated", category=FutureWarning)


def _setup_logging(verbose: bool) -> None:
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    level = logging.DEBUG if verbose else logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("DeepSpeed", "datasets", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _recipe_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="path to a recipe YAML file (see recipes/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a recipe value, e.g. --set stages.sft.train.max_steps=20 (value parsed as YAML; repeatable)",
    )


def _selection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", help="where artifacts go (default: the recipe's output_dir, else runs/<name>)")
    parser.add_argument("--only", action="append", default=[], metavar="STAGE",
                        help="run only this stage (repeatable); its upstream artifacts must already be built")
    parser.add_argument("--from", dest="from_stage", metavar="STAGE",
                        help="rerun STAGE and every stage downstream of it, even if cached")
    parser.add_argument("--force", action="append", default=[], metavar="STAGE",
                        help="rerun STAGE even if cached, and its downstream stages with it (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="Alignment pipeline: base model -> SFT -> reward model -> PPO/DPO, as a cached stage graph.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run a recipe (cached stages are skipped)",
                              description="Validate the recipe, then run every stage that is not cached.")
    _recipe_args(run)
    _selection_args(run)
    run.add_argument("--keep-checkpoints", action="store_true",
                     help="keep trainer checkpoints under <output_dir>/.work after a stage finishes")

    validate = commands.add_parser("validate", help="check a recipe and report every problem",
                                   description="Check a recipe without loading any model; exit 2 listing every "
                                               "problem with its YAML path.")
    _recipe_args(validate)

    plan = commands.add_parser("plan", help="show the stage graph, what is cached, sizes and memory",
                               description="Show stage order, what is cached and what will run, parameter counts, "
                                           "trainable parameters and a rough memory estimate per stage.")
    _recipe_args(plan)
    _selection_args(plan)
    return parser


def cmd_validate(args) -> int:
    from .recipe import load_recipe, topological_order

    recipe = load_recipe(args.recipe, args.overrides)
    print(f"{args.recipe}: OK: {len(recipe.stages)} stage(s): {' -> '.join(topological_order(recipe))}")
    return 0


def cmd_plan(args) -> int:
    from .estimate import estimate
    from .recipe import load_recipe
    from .runner import make_plan

    recipe = load_recipe(args.recipe, args.overrides)
    plan = make_plan(recipe, args.output_dir, args.only, args.from_stage, args.force)
    print(f"recipe {recipe.name}: base model {recipe.model.source} ({plan.base_model_path})")
    print(f"output: {plan.out_dir}\n")
    header = f"{'stage':<14}{'kind':<12}{'from':<18}{'action':<8}{'params':>12}{'trainable':>12}{'mem GiB':>9}  reason"
    print(header)
    print("-" * len(header))
    dtype = recipe.model.dtype if recipe.model.dtype != "auto" else "float32"
    for stage in plan.stages:
        config = recipe.stages[stage.name]
        est = None
        if stage.action != "skip":
            est = estimate(plan.base_model_path, config, dtype, recipe.model.trust_remote_code)
        params = f"{est.parameters:,}" if est else "-"
        trainable = f"{est.trainable:,}" if est else "-"
        memory = f"{est.memory_gib:.2f}" if est else "-"
        print(f"{stage.name:<14}{stage.kind:<12}{','.join(config.from_) or '(base)':<18}{stage.action:<8}"
              f"{params:>12}{trainable:>12}{memory:>9}  {stage.reason}")
    print("\nmemory: weights + optimizer state + activations of one micro-batch per process; a rough planning figure.")
    return 0


def cmd_run(args) -> int:
    from .recipe import load_recipe
    from .runner import make_plan, run_plan

    recipe = load_recipe(args.recipe, args.overrides)
    plan = make_plan(recipe, args.output_dir, args.only, args.from_stage, args.force)
    results = run_plan(plan, keep_checkpoints=args.keep_checkpoints)
    if int(os.environ.get("RANK", "0")) == 0:
        for name, metrics in results.items():
            shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()
                     if k in ("train_loss", "eval_loss", "global_step")}
            print(f"{name}: {plan[name].action if plan[name].action == 'cached' else 'done'} {shown}")
        print(f"artifacts in {plan.out_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    _quiet_environment()
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    from .errors import PipelineError

    handlers = {"run": cmd_run, "validate": cmd_validate, "plan": cmd_plan}
    try:
        return handlers[args.command](args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted; the next run resumes from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""Command line: ``python -m pipeline {run,validate,plan} RECIPE``; also installed as ``alignment-pipeline``.

Run under ``accelerate launch -m pipeline run RECIPE`` for several processes or DeepSpeed (configs in launch/).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

EPILOG = """\
examples:
  python -m pipeline validate recipes/tiny.yaml
  python -m pipeline plan recipes/tiny.yaml --set stages.sft.lora.r=8
  python -m pipeline run recipes/tiny.yaml
  accelerate launch --config_file launch/cpu_2proc.yaml -m pipeline run recipes/tiny.yaml

Stages whose artifact matches their fingerprint (config, input data, upstream artifacts, base model, the code
that computes them and the versions of torch, transformers, trl, ...) are skipped; `plan` says why each other
stage runs. The recipe's `evaluate:` section adds evaluation nodes (eval-base, eval-<stage>) to the graph. A stage
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
    if verbose:
        return
    # Quiet by default: one progress bar per long piece of work, the pipeline's own lines, and warnings that matter.
    # Library chatter (loading bars and reports, datasets' map bars, DeepSpeed's accelerator notice) comes with -v.
    for name, value in (("HF_DATASETS_DISABLE_PROGRESS_BARS", "1"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
                        ("TRANSFORMERS_VERBOSITY", "error"), ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")):
        os.environ.setdefault(name, value)
    for noisy in ("DeepSpeed", "datasets", "httpx", "transformers", "accelerate", "torch.distributed",
                  "bitsandbytes", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def seed_value(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= value <= 2**32 - 1:
        raise argparse.ArgumentTypeError(f"must be in 0..2^32-1, got {value}")
    return value


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
                        help="rerun STAGE from scratch even if cached (its checkpoints are discarded), and its "
                             "downstream stages with it (repeatable)")
    parser.add_argument("--verify", action="store_true",
                        help="check every stored artifact the run uses against the sha256 of each of its files "
                             "(by default: sizes and modification times, and content where those moved)")


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
    run.add_argument("--sweep", action="append", default=[], metavar="KEY.PATH=V1,V2,...",
                     help="run a variant for each value (several --sweep make a grid), e.g. --sweep "
                          "stages.dpo.beta=0.05,0.1,0.3; stages the variants share run once")

    validate = commands.add_parser("validate", help="check a recipe and report every problem",
                                   description="Check a recipe without loading any model; exit 2 listing every "
                                               "problem with its YAML path.")
    _recipe_args(validate)
    validate.add_argument("--launch", metavar="ACCELERATE_CONFIG",
                          help="check the recipe for this accelerate config's process count (e.g. "
                               "launch/cpu_2proc.yaml); default: one process, whatever the environment says")

    plan = commands.add_parser("plan", help="show the stage graph, what is cached, sizes and memory",
                               description="Show stage order, what is cached and what will run, parameter counts, "
                                           "trainable parameters and a rough memory estimate per stage.")
    _recipe_args(plan)
    _selection_args(plan)
    plan.add_argument("--sweep", action="append", default=[], metavar="KEY.PATH=V1,V2,...",
                      help="plan a variant for each value, as `run --sweep` would run them")
    plan.add_argument("--launch", metavar="ACCELERATE_CONFIG",
                      help="estimate memory per process under this accelerate config (e.g. launch/gpu_zero3.yaml: "
                           "DeepSpeed ZeRO shards optimizer state, gradients and weights over its processes); "
                           "default: one process")

    evaluate = commands.add_parser(
        "eval", help="gold-evaluate a policy artifact or a model on held-out prompts",
        description="Sample completions for the prompts of a data card, score them with a judge and measure KL to "
                    "a reference. Writes eval.json and eval_samples.jsonl into --out.")
    evaluate.add_argument("target", help="a policy stage folder, a model folder, a .gguf file or builtin:NAME")
    evaluate.add_argument("--prompts", required=True, help="data card of the evaluation prompts (prompt-only)")
    evaluate.add_argument("--reference", help="KL reference (same forms as target); default: for a stage folder, "
                                              "the policy it started from; for a model, itself (KL 0)")
    evaluate.add_argument("--judge", default="vader",
                          help='"vader", "module:function" (a Python function (prompts, completions) -> scores) or '
                               '"reward:FOLDER" (a reward stage\'s artifact); default: vader')
    evaluate.add_argument("--n", type=positive_int, default=256, help="number of prompts (default 256)")
    evaluate.add_argument("--max-new-tokens", type=positive_int, default=32,
                          help="most tokens per completion (default 32)")
    evaluate.add_argument("--temperature", type=positive_float, default=1.0,
                          help="sampling temperature, > 0 (default 1: the model's own distribution, which the KL "
                               "estimate assumes)")
    evaluate.add_argument("--batch-size", type=positive_int, default=16, help="prompts per batch (default 16)")
    evaluate.add_argument("--seed", type=seed_value, default=1234, help="sampling and bootstrap seed (default 1234)")
    evaluate.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    evaluate.add_argument("--out", help="folder for eval.json and eval_samples.jsonl (default: ./eval-<name of the "
                                        "target>; stage artifacts themselves are never modified)")

    data = commands.add_parser("data", help="check or inspect a data card",
                               description="Work with data cards (data_cards/*.yaml).")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    data_validate = data_commands.add_parser("validate", help="materialise a card and check every row, its "
                                                              "checksum and row count")
    data_validate.add_argument("card", nargs="+")
    data_show = data_commands.add_parser("show", help="rows, token-length percentiles, duplicates, empty fields, "
                                                      "train/eval overlap and samples")
    data_show.add_argument("card")
    data_show.add_argument("--tokenizer", help="model (folder, builtin:NAME) whose tokenizer counts tokens")

    runs = commands.add_parser("runs", help="list the stored variants of every stage",
                               description="List every stored variant per stage (fingerprint, what differs from the "
                                           "recipe, key metrics, date, size on disk); * marks the one "
                                           "<output_dir>/<stage> names.")
    runs.add_argument("recipe", nargs="?", help="the recipe whose output folder to list (and compare with)")
    runs.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                      help="override a recipe value before comparing")
    runs.add_argument("--output-dir", help="the output folder (default: the recipe's)")

    gc = commands.add_parser("gc", help="remove stored variants no recipe names",
                             description="Remove the stored variants (and merged bases, checkpoints) that neither "
                                         "the given recipes use nor a stage link names.")
    gc.add_argument("recipes", nargs="*", help="recipes whose variants (and their lineage) to keep")
    gc.add_argument("--output-dir", help="the output folder (default: each recipe's)")
    gc.add_argument("--dry-run", action="store_true", help="only list what would be removed, and the space freed")

    export = commands.add_parser(
        "export", help="write a stage's model as a folder that needs nothing of this project (and push it to the Hub)",
        description="Export a policy or reward-model artifact: merged safetensors (or, with --adapter, the adapter and "
                    "a copy of its base), tokenizer with chat template, generation config and a model card (README.md "
                    "with the Hub's front matter: lineage, data licences, metrics, the gold evaluation table).")
    export.add_argument("target", help="a stage folder (runs/rlhf/dpo), or a stage name with --recipe")
    export.add_argument("--to", required=True, help="the folder to write (new, or empty)")
    export.add_argument("--recipe", help="the recipe whose stage TARGET names (its output folder is searched)")
    export.add_argument("--output-dir", help="with --recipe: where the run's artifacts are (default: from the recipe)")
    export.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="dtype of the exported weights "
                                                                                    "(default: as trained)")
    export.add_argument("--adapter", action="store_true",
                        help="export the LoRA adapter and a copy of its base under base/ instead of merged weights")
    export.add_argument("--push-to-hub", metavar="REPO", help="upload the export to this Hub repository (needs the "
                                                              "network and a token)")
    export.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository private")

    report = commands.add_parser("report", help="print the gold evaluation table of a recipe's run (and an HTML report)",
                                 description="Print the eval.json rows of the base model and each policy stage; with "
                                             "--out, also an HTML report with the reward-KL frontier and curves.")
    _recipe_args(report)
    report.add_argument("--output-dir", help="where the run's artifacts are (default: from the recipe)")
    report.add_argument("--out", metavar="FILE.html",
                        help="also write a self-contained HTML report (gold table, reward-KL frontier of every stored "
                             "variant, training curves, samples) and its PNGs beside it")
    return parser


def _processes(args) -> int:
    """The process count validation assumes: the --launch config's, else 1 (never the environment)."""
    if getattr(args, "launch", None):
        from .models.estimate import Layout

        return Layout.from_launch_file(args.launch).processes
    return 1


def cmd_validate(args) -> int:
    from .graph.preflight import check_before_running
    from .recipe import load_recipe, topological_order

    recipe = load_recipe(args.recipe, args.overrides, _processes(args))
    check_before_running(recipe, args.recipe)
    order = topological_order(recipe)
    stages = [n for n in order if not recipe.stages[n].attached]
    nodes = len(order) - len(stages)
    extra = f" (+{nodes} evaluation node{'s' if nodes != 1 else ''})" if nodes else ""
    print(f"{args.recipe}: OK: {len(stages)} stage(s): {' -> '.join(stages)}{extra}")
    return 0


def cmd_plan(args) -> int:
    from .models.estimate import Layout, estimate, local_weights

    layout = Layout.from_launch_file(args.launch) if args.launch else Layout()
    plans = _plans(args, layout.processes)
    for plan in plans:
        recipe = plan.recipe
        if len(plans) > 1:
            print(f"== sweep variant: {plan.variant}")
        print(f"recipe {recipe.name}: base model {recipe.model.source} ({plan.base_model_path})")
        print(f"output: {plan.out_dir}\n")
        header = (f"{'stage':<14}{'kind':<12}{'from':<18}{'action':<8}{'params':>12}{'trainable':>12}{'mem GiB':>9}"
                  "  reason")
        print(header)
        print("-" * len(header))
        dtype = recipe.model.dtype if recipe.model.dtype != "auto" else "float32"
        weights = local_weights(plan.base_model_path, recipe.model.revision)  # a hub model: its cached snapshot
        for stage in plan.stages:
            config = recipe.stages[stage.name]
            # upstream policies load quantised too (StageContext.policy_source), so every stage counts 4/8-bit weights
            est = estimate(weights, config.memory_profile(), dtype, layout, recipe.model.quantization) \
                if stage.action != "skip" else None
            params = f"{est.parameters:,}" if est else "-"
            trainable = f"{est.trainable:,}" if est else "-"
            memory = f"{est.memory_gib:.2f}" if est else "-"
            print(f"{stage.name:<14}{stage.kind:<12}{','.join(config.from_) or '(base)':<18}{stage.action:<8}"
                  f"{params:>12}{trainable:>12}{memory:>9}  {stage.reason}")
        print()
    print(f"memory per process ({layout.describe()}): weights + gradients + optimizer state + activations of one "
          "micro-batch; a rough planning figure.")
    return 0


HEADLINE_METRICS = ("train_loss", "eval_loss", "global_step", "pairs", "dropped_near_ties", "eval_accuracy",
                    "gold_mean", "kl_mean")


def _plans(args, processes: int) -> list:
    """One plan per variant of the sweep (one plan without a sweep), each validated and checked before any work."""
    from .graph.preflight import check_before_running
    from .graph.sweep import combinations, parse_sweeps
    from .recipe import load_recipe

    base = load_recipe(args.recipe, args.overrides, processes)
    axes = parse_sweeps(getattr(args, "sweep", []) or [], base.sweep, args.recipe)
    plans = []
    for point in combinations(axes):
        recipe = load_recipe(args.recipe, [*args.overrides, *point], processes) if point else base
        check_before_running(recipe, args.recipe, args.output_dir)
        plans.append(_plan_variant(recipe, args, " ".join(point)))
    return plans


def _plan_variant(recipe, args, variant: str):
    """The plan of one sweep point (variant "" outside a sweep) under the command's selection flags."""
    from .graph.plan import make_plan

    plan = make_plan(recipe, args.output_dir, args.only, args.from_stage, args.force, args.verify)
    plan.variant = variant
    return plan


def _replan(plan, args, computed: set):
    """The plan of a later sweep variant, made again just before it runs: the stages an earlier variant stored are
    cache hits now (a plan made at the start would run the shared upstreams once per variant), and a stage forced
    with --force or --from runs once per invocation, not once per variant."""
    fresh = _plan_variant(plan.recipe, args, plan.variant)
    for stage in fresh.stages:
        if stage.action == "run" and stage.folder in computed:
            stage.action, stage.reason = "cached", "computed earlier in this sweep"
    return fresh


def cmd_run(args) -> int:
    from .graph.report import format_report, report_rows
    from .graph.runner import run_plan
    from .training.distributed import shutdown_distributed

    # the job's real process count: checks that depend on it fail here, before any long work
    plans = _plans(args, int(os.environ.get("WORLD_SIZE", "1")))
    results = []
    computed: set = set()  # artifact folders this invocation has written
    for i, plan in enumerate(plans, start=1):
        if i > 1:
            plans[i - 1] = plan = _replan(plan, args, computed)
        if len(plans) > 1 and int(os.environ.get("RANK", "0")) == 0:
            logging.getLogger("pipeline").info("sweep variant %d of %d: %s", i, len(plans), plan.variant)
        results.append(run_plan(plan, keep_checkpoints=args.keep_checkpoints, siblings=plans))
        computed |= {s.folder for s in plan.stages if s.action == "run"}
    shutdown_distributed()
    if int(os.environ.get("RANK", "0")) == 0:
        for plan, result in zip(plans, results):
            if len(plans) > 1:
                print(f"\n== {plan.variant}")
            for name, metrics in result.items():
                shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()
                         if k in HEADLINE_METRICS}
                print(f"{name}: {'cached' if plan[name].action == 'cached' else 'done'} {shown}")
            table = format_report(report_rows(plan))
            if table:
                print("\n" + table + "\n")
        print(f"artifacts in {plans[0].out_dir}")
    return 0


def cmd_runs(args) -> int:
    from pathlib import Path

    from .errors import UsageError
    from .graph.plan import make_plan
    from .graph.variants import describe_variants
    from .recipe import load_recipe

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


def cmd_gc(args) -> int:
    from pathlib import Path

    from .errors import UsageError
    from .graph.plan import make_plan
    from .graph.variants import collect, size_text
    from .recipe import load_recipe
    from .store.lock import OutputLock

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


def cmd_eval(args) -> int:
    from pathlib import Path

    from .artifacts.artifact import Artifact
    from .artifacts.policy import PolicySource
    from .data.loading import card_prompts
    from .errors import ModelError, UsageError
    from .evaluation.evaluate import evaluate, write_samples
    from .evaluation.settings import EvalSettings, SamplingSettings
    from .graph.preflight import judge_problem
    from .models.sources import check_source, resolve
    from .store.atomic import write_json

    def source(spec: str) -> PolicySource:
        if Artifact.read(Path(spec)) is not None:
            return PolicySource(str(Path(spec)), True, args.dtype, False)
        if (why := check_source(spec)) is not None:
            raise ModelError(f"{spec}: {why}")
        return PolicySource(resolve(spec), False, args.dtype, False)

    if (why := judge_problem(args.judge)) is not None:
        raise UsageError(f"--judge: {why}")
    prompts = card_prompts(args.prompts, "eval", args.n)
    policy = source(args.target)
    reference = source(args.reference) if args.reference else None
    artifact = Artifact.read(Path(args.target)) if policy.is_artifact else None
    if reference is None and artifact is not None:
        start = artifact.policy.start
        reference = PolicySource(start.resolve(artifact.path), start.is_artifact, args.dtype, False)
    settings = EvalSettings(
        prompts=args.prompts, n=args.n, judge=args.judge, seed=args.seed,
        sampling=SamplingSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                  batch_size=args.batch_size),
    )
    policy_model = policy.load()
    metrics, samples = evaluate(policy_model, reference.load() if reference is not None else None,
                                policy.tokenizer(), prompts, settings)
    name = Path(args.target.rstrip("/")).name.removeprefix("builtin:")
    out = Path(args.out) if args.out else Path(f"eval-{name}")
    out.mkdir(parents=True, exist_ok=True)
    write_samples(out / "eval_samples.jsonl", samples)
    write_json(out / "eval.json", {"target": args.target, "reference": reference.path if reference else None,
                                   **metrics})
    print(json.dumps(metrics, indent=2))
    print(f"wrote {out / 'eval.json'}")
    return 0


def cmd_data(args) -> int:
    from .data.inspect import describe, validate_card

    if args.data_command == "validate":
        for card in args.card:
            for line in validate_card(card):
                print(line)
        return 0
    tokenizer = None
    if args.tokenizer:
        from .models.loading import load_tokenizer
        from .models.sources import resolve

        tokenizer = load_tokenizer(resolve(args.tokenizer))
    print(describe(args.card, tokenizer))
    return 0


def cmd_export(args) -> int:
    from pathlib import Path

    from .artifacts.artifact import Artifact
    from .artifacts.export import export, push_to_hub
    from .errors import UsageError

    folder = Path(args.target)
    if args.recipe:
        from .recipe import load_recipe

        recipe = load_recipe(args.recipe)
        if args.target not in recipe.stages:
            raise UsageError(f"{args.recipe} has no stage named '{args.target}'; stages: {', '.join(recipe.stages)}")
        folder = Path(args.output_dir) if args.output_dir else recipe.out_dir
        folder = folder / args.target
    artifact = Artifact.read(folder)
    if artifact is None:
        raise UsageError(f"{folder}: not a stage artifact (no readable manifest.json); has the stage run?")
    if (why := artifact.damage()) is not None:
        raise UsageError(f"{folder}: {why}; rebuild it with --force {folder.name}")
    out = export(artifact, Path(args.to), args.dtype, args.adapter)
    print(f"exported {folder} -> {out}")
    if args.push_to_hub:
        print(f"uploaded: {push_to_hub(out, args.push_to_hub, args.private)}")
    return 0


def cmd_report(args) -> int:
    from .graph.plan import make_plan
    from .graph.report import format_report, report_rows
    from .recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    plan = make_plan(recipe, args.output_dir)
    table = format_report(report_rows(plan))
    print(table or f"no evaluation under {plan.out_dir}: does the recipe have an evaluate: section, and has it run?")
    if args.out:
        from .graph.html_report import render

        print(f"wrote {render(plan, args.out)}")
    return 0


def capped(message: str, line_limit: int = 600, total_limit: int = 8000) -> str:
    """Error text of bounded size: a row or value echoed back must not flood the terminal."""
    lines = [line if len(line) <= line_limit else line[: line_limit - 3] + "..." for line in message.splitlines()]
    text = "\n".join(lines)
    return text if len(text) <= total_limit else text[: total_limit - 40] + "\n... (more problems, cut here)"


def main(argv: list[str] | None = None) -> int:
    _quiet_environment()
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    from .errors import PipelineError

    handlers = {"run": cmd_run, "validate": cmd_validate, "plan": cmd_plan, "eval": cmd_eval, "data": cmd_data,
                "report": cmd_report, "export": cmd_export, "runs": cmd_runs, "gc": cmd_gc}
    try:
        return handlers[args.command](args)
    except PipelineError as exc:
        print(f"error: {capped(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted; the next run resumes from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""`plan`: the stage graph of a recipe (each sweep point's), what is cached and what will run with the reason, and
parameter counts, a rough memory estimate and the expected time per stage."""

from __future__ import annotations

from .common import assignment, recipe_args, seeds_arg, selection_args
from .planning import plans


def add_parser(commands) -> None:
    parser = commands.add_parser("plan", help="show the stage graph, what is cached, sizes, memory and time",
                                 description="Show stage order, what is cached and what will run (and why), "
                                             "parameter counts, trainable parameters, a rough memory estimate and "
                                             "the expected time per stage: what it took here before with the same "
                                             "settings, or (~) an estimate from its FLOPs and this CPU's matmul "
                                             "rate.")
    recipe_args(parser)
    selection_args(parser)
    parser.add_argument("--sweep", action="append", default=[], metavar="KEY.PATH=V1,V2,...", type=assignment,
                        help="plan a variant for each value, as `run --sweep` would run them")
    seeds_arg(parser, "plan STAGE at N seeds, as `run --seeds` would run them")
    parser.add_argument("--launch", metavar="ACCELERATE_CONFIG",
                        help="estimate memory per process under this accelerate config (e.g. launch/gpu_zero3.yaml: "
                             "DeepSpeed ZeRO shards optimizer state, gradients and weights over its processes); "
                             "default: one process")
    parser.set_defaults(handler=handle)


def handle(args) -> int:
    from ..graph.eta import duration_text, expected_seconds, probe_rate
    from ..graph.plan import Action
    from ..models.estimate import Layout, estimate, local_weights

    layout = Layout.from_launch_file(args.launch) if args.launch else Layout()
    variants = plans(args, layout.processes)
    rate = probe_rate(variants[0]) if variants else None
    for plan in variants:
        recipe = plan.recipe
        if len(variants) > 1:
            print(f"== sweep variant: {plan.variant}")
        print(f"recipe {recipe.name}: base model {recipe.model.source} ({plan.base_model_path})")
        print(f"output: {plan.out_dir}\n")
        header = (f"{'stage':<14}{'kind':<12}{'from':<18}{'action':<8}{'params':>12}{'trainable':>12}{'mem GiB':>9}"
                  f" {'time':>8}  reason")
        print(header)
        print("-" * len(header))
        dtype = recipe.model.run_dtype
        weights = local_weights(plan.base_model_path, recipe.model.revision)  # a hub model: its cached snapshot
        expected = expected_seconds(plan, rate or 0.0)  # 0: measured times only
        for stage in plan.stages:
            config = recipe.stages[stage.name]
            # upstream policies load quantised too (StageContext.policy_source), so every stage counts 4/8-bit weights
            est = estimate(weights, config.memory_profile(), dtype, layout, recipe.model.quantization) \
                if stage.action is not Action.SKIP else None
            params = f"{est.parameters:,}" if est else "-"
            trainable = f"{est.trainable:,}" if est else "-"
            memory = f"{est.memory_gib:.2f}" if est else "-"
            seconds = expected.get(stage.name)
            took = ("" if seconds.measured else "~") + duration_text(seconds.seconds) if seconds else "-"
            print(f"{stage.name:<14}{stage.kind:<12}{','.join(config.from_) or '(base)':<18}{stage.action.value:<8}"
                  f"{params:>12}{trainable:>12}{memory:>9} {took:>8}  {stage.reason}")
        print()
        print(time_summary(plan, expected, rate, recipe.model.run_dtype))
        print()
    print("time: a figure with ~ is estimated from the stage's FLOPs at its length limits and this CPU's matmul rate "
          "(rough, within 2x), one without is what the stage took here before with the same settings.")
    print(f"memory per process ({layout.describe()}): weights + gradients + optimizer state + activations of one "
          "micro-batch; a rough planning figure.")
    return 0


def time_summary(plan, expected: dict, rate: float | None, dtype: str) -> str:
    from ..graph.eta import duration_text
    from ..graph.plan import Action

    running = [s.name for s in plan.stages if s.action is Action.RUN]
    if not running:
        return "nothing to run: every stage is cached"
    known = [expected[name].seconds for name in running if name in expected]
    probe = f"; matmul probe {rate / 1e9:.0f} GFLOP/s {dtype}" if rate else \
        "; no estimate on a GPU machine (the model is fitted to CPU runs)"
    missing = len(running) - len(known)
    unestimated = f", {missing} stage{'s' if missing > 1 else ''} not estimated" if missing else ""
    return f"expected time of the {len(running)} stage{'s' if len(running) > 1 else ''} to run: " \
        f"about {duration_text(sum(known))}{unestimated}{probe}"

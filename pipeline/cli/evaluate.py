"""`eval`: gold-evaluate a policy artifact or a model outside any recipe: sample completions for a data card's
prompts, score them with a judge, measure KL to a reference, and write eval.json and eval_samples.jsonl."""

from __future__ import annotations

import json

from .common import positive_float, positive_int, seed_value


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "eval", help="gold-evaluate a policy artifact or a model on held-out prompts",
        description="Sample completions for the prompts of a data card, score them with a judge and measure KL to "
                    "a reference. Writes eval.json and eval_samples.jsonl into --out.")
    parser.add_argument("target", help="a policy stage folder, a model folder, a .gguf file or builtin:NAME")
    parser.add_argument("--prompts", required=True, help="data card of the evaluation prompts (prompt-only)")
    parser.add_argument("--reference", help="KL reference (same forms as target); default: for a stage folder, "
                                            "the policy it started from; for a model, itself (KL 0)")
    parser.add_argument("--judge", default="vader",
                        help='"vader", "module:function" (a Python function (prompts, completions) -> scores) or '
                             '"reward:FOLDER" (a reward stage\'s artifact); default: vader')
    parser.add_argument("--n", type=positive_int, default=256, help="number of prompts (default 256)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=32,
                        help="most tokens per completion (default 32)")
    parser.add_argument("--temperature", type=positive_float, default=1.0,
                        help="sampling temperature, > 0 (default 1: the model's own distribution, which the KL "
                             "estimate assumes)")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="prompts per batch (default 16)")
    parser.add_argument("--seed", type=seed_value, default=1234, help="sampling and bootstrap seed (default 1234)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--out", help="folder for eval.json and eval_samples.jsonl (default: ./eval-<name of the "
                                      "target>; stage artifacts themselves are never modified)")
    parser.set_defaults(handler=handle)


def handle(args) -> int:
    from pathlib import Path

    from ..artifacts.artifact import Artifact
    from ..artifacts.policy import PolicySource
    from ..data.loading import card_prompts
    from ..errors import ModelError, UsageError
    from ..evaluation.evaluate import evaluate, write_samples
    from ..evaluation.settings import EvalSettings, SamplingSettings
    from ..graph.preflight import judge_problem
    from ..models.sources import check_source, resolve
    from ..store.atomic import write_json

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

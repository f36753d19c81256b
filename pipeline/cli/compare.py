"""`compare`: is variant B better than A on the same held-out prompts, or is the difference noise?"""

from __future__ import annotations

from .common import override_arg, positive_int, seed_value


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "compare", help="paired comparison of two evaluations (gold, KL, repetition) with a bootstrap CI",
        description="Compare evaluation B with A prompt by prompt: the mean of each (gold, KL, repetition, length), "
                    "B - A with its 95% bootstrap interval, and the share of prompts where B scores higher. Each "
                    "side is one evaluation or several joined by commas (seeds of one variant: the interval then "
                    "resamples the seeds too). An evaluation is a folder holding eval_samples.jsonl, or a name in "
                    "the output folder: eval-STAGE (the one the folder names now) or a stored variant by its "
                    "fingerprint prefix (eval-ppo-1c29).",
        epilog="example: python -m pipeline compare eval-dpo eval-ppo --recipe recipes/rlhf.yaml")
    parser.add_argument("a", metavar="A", help="the baseline evaluation(s), comma-separated")
    parser.add_argument("b", metavar="B", help="the evaluation(s) compared with it, comma-separated")
    parser.add_argument("--recipe", help="find names in this recipe's output folder")
    override_arg(parser, "override a recipe value (with --recipe)")
    parser.add_argument("--output-dir", help="find names in this folder (default: the recipe's)")
    parser.add_argument("--resamples", type=positive_int, default=2000, help="bootstrap resamples (default 2000)")
    parser.add_argument("--seed", type=seed_value, default=0, help="the bootstrap's seed (default 0)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(handler=handle)


def handle(args) -> int:
    import json

    from ..evaluation.compare import format_comparison, load_evaluation, paired_comparison

    out = _output_dir(args)
    a = [load_evaluation(_resolve(name, out)) for name in _names(args.a)]
    b = [load_evaluation(_resolve(name, out)) for name in _names(args.b)]
    result = paired_comparison(a, b, args.resamples, args.seed)
    if args.json:
        print(json.dumps({**result, "a": [str(e.folder) for e in a], "b": [str(e.folder) for e in b]}, indent=2))
    else:
        print(format_comparison(result, a, b))
    return 0


def _names(text: str) -> list[str]:
    from ..errors import UsageError

    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise UsageError(f"'{text}' names no evaluation")
    return names


def _output_dir(args):
    from pathlib import Path

    if args.output_dir:
        return Path(args.output_dir)
    if args.recipe:
        from ..graph.plan import make_plan
        from ..recipe import load_recipe

        return make_plan(load_recipe(args.recipe, args.overrides)).out_dir
    return None


def _resolve(name: str, out):
    """A folder as given, else ``name`` in the output folder: the node's current folder, or a stored variant whose
    folder name starts with it."""
    from pathlib import Path

    from ..errors import UsageError

    if Path(name).is_dir():
        return Path(name)
    if out is None:
        raise UsageError(f"{name}: no such folder; to name an evaluation of a run, give --recipe or --output-dir")
    if (out / name).is_dir():
        return out / name
    store = out / ".store"
    matches = sorted(p for p in store.glob(f"{name}*") if p.is_dir()) if store.is_dir() else []
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise UsageError(f"{name}: {len(matches)} stored variants match ({', '.join(p.name for p in matches[:4])}"
                         f"{', ...' if len(matches) > 4 else ''}); give more of the fingerprint")
    raise UsageError(f"{name}: not a folder, nor an evaluation in {out} (python -m pipeline runs lists them)")

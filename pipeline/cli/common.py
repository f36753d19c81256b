"""What every command shares: the process environment and logging set up before any work, argument types that
refuse bad values at parse time (exit 2 with argparse's usage line, not a traceback later), the recipe and selection
arguments, and the bound on error text."""

from __future__ import annotations

import argparse
import logging
import os


def quiet_environment() -> None:
    # Set before torch/transformers are imported: they read these at import time.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import warnings

    # TRL's configs still set the old name; transformers 5 warns on every trainer. Nothing for the user to do.
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated", category=FutureWarning)


def setup_logging(verbose: bool) -> None:
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
    for noisy in ("DeepSpeed", "datasets", "httpx", "transformers", "accelerate", "torch.distributed", "matplotlib",
                  "kernels", "bitsandbytes", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # DeepSpeed sets its logger's level back to INFO when it is imported; a filter on the logger object survives that
    logging.getLogger("DeepSpeed").addFilter(lambda record: record.levelno >= logging.ERROR)


def _number(text: str, convert, expected: str, valid, rule: str):
    """``text`` as a number for argparse: one message when it is not a number, another when ``valid`` refuses it."""
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not valid(value):
        raise argparse.ArgumentTypeError(f"{rule}, got {text if convert is float else value}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, "a whole number", lambda v: v >= 1, "must be at least 1")


def positive_float(text: str) -> float:
    return _number(text, float, "a number", lambda v: v > 0 and v != float("inf"), "must be a positive number")


def seed_value(text: str) -> int:
    return _number(text, int, "a whole number", lambda v: 0 <= v <= 2**32 - 1, "must be in 0..2^32-1")


def assignment(text: str) -> str:
    """An argparse type for KEY.PATH=VALUE: `--set a.b 4` (a space for the '=') gets a message that says so."""
    key, equals, _ = text.partition("=")
    if not equals or not key.strip():
        raise argparse.ArgumentTypeError(f"'{text}' is not KEY.PATH=VALUE: join key and value with '=' and no "
                                         f"space: {text.strip() or 'stages.sft.lora.r'}=VALUE")
    return text


def seeds_spec(text: str) -> str:
    """An argparse type for --seeds STAGE=N."""
    stage, equals, count = text.partition("=")
    if not equals or not stage.strip() or not count.strip().isdigit() or int(count) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not STAGE=N (a stage and a number of seeds, e.g. ppo=3)")
    return text


def seeds_arg(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--seeds", action="append", default=[], metavar="STAGE=N", type=seeds_spec, help=help_text)


def recipe_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="path to a recipe YAML file (see recipes/)")
    override_arg(parser)


def override_arg(parser: argparse.ArgumentParser, help_text: str = "override a recipe value, e.g. --set "
                 "stages.sft.train.max_steps=20 (value parsed as YAML; repeatable)") -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        type=assignment, help=help_text)


def selection_args(parser: argparse.ArgumentParser) -> None:
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


def capped(message: str, line_limit: int = 600, total_limit: int = 8000) -> str:
    """Error text of bounded size: a row or value echoed back must not flood the terminal."""
    lines = [line if len(line) <= line_limit else line[: line_limit - 3] + "..." for line in message.splitlines()]
    text = "\n".join(lines)
    return text if len(text) <= total_limit else text[: total_limit - 40] + "\n... (more problems, cut here)"


def target_args(parser: argparse.ArgumentParser) -> None:
    """TARGET: a stage's artifact folder, or a stage name with --recipe."""
    parser.add_argument("target", help="a stage folder (runs/rlhf/dpo), or a stage name with --recipe")
    parser.add_argument("--recipe", help="the recipe whose stage TARGET names (its output folder is searched)")
    parser.add_argument("--output-dir", help="with --recipe: where the run's artifacts are (default: from the recipe)")


def stage_artifact(args):
    """The intact artifact ``target_args`` name; UsageError naming the folder where there is none."""
    from pathlib import Path

    from ..artifacts.artifact import Artifact
    from ..errors import UsageError

    folder = Path(args.target)
    if args.recipe:
        from ..config.problems import did_you_mean
        from ..recipe import load_recipe

        recipe = load_recipe(args.recipe)
        if args.target not in recipe.stages:
            raise UsageError(f"{args.recipe} has no stage named '{args.target}'"
                             f"{did_you_mean(args.target, recipe.stages)}; stages: {', '.join(recipe.stages)}")
        folder = (Path(args.output_dir) if args.output_dir else recipe.out_dir) / args.target
    artifact = Artifact.read(folder)
    if artifact is None:
        raise UsageError(f"{folder}: not a stage artifact (no readable manifest.json); has the stage run?")
    if (why := artifact.damage()) is not None:
        raise UsageError(f"{folder}: {why}; rebuild it with --force {folder.name}")
    return artifact

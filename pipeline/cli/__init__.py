"""Command line: ``python -m pipeline {run,validate,plan,...} RECIPE``; also installed as ``alignment-pipeline``.

Run under ``accelerate launch -m pipeline run RECIPE`` for several processes or DeepSpeed (configs in launch/).

One module per command, each adding its own sub-parser (``add_parser``) with its handler as the ``handler`` default,
so a command is named once. Handlers import what they need when called: ``--help`` and a bad option never import
torch.
"""

from __future__ import annotations

import argparse
import sys

from . import chat, compare, data, evaluate, export, gc, plan, report, run, runs, validate
from .common import capped, quiet_environment, setup_logging

COMMANDS = (run, validate, plan, evaluate, data, runs, compare, gc, export, chat, report)
"""In the order ``--help`` lists them."""

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


class OneLineErrors(argparse.ArgumentParser):
    """Usage errors as one line (exit 2) that points at --help, instead of the whole usage block before it."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrors(
        prog="python -m pipeline",
        description="Alignment pipeline: base model -> SFT -> reward model -> PPO/DPO, as a cached stage graph.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"alignment-pipeline {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("alignment-pipeline")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


def main(argv: list[str] | None = None) -> int:
    quiet_environment()
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    from ..errors import PipelineError

    try:
        return args.handler(args)
    except PipelineError as exc:
        print(f"error: {capped(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted; the next run resumes from the last checkpoint", file=sys.stderr)
        return 130

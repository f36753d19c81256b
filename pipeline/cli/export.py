"""`export`: write a policy or reward-model artifact as a folder that needs nothing of this project (merged weights
or adapter and base, tokenizer, generation config, model card), and optionally push it to the Hub."""

from __future__ import annotations

from .common import stage_artifact, target_args


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "export", help="write a stage's model as a folder that needs nothing of this project (and push it to the Hub)",
        description="Export a policy or reward-model artifact: merged safetensors (or, with --adapter, the adapter and "
                    "a copy of its base), tokenizer with chat template, generation config and a model card (README.md "
                    "with the Hub's front matter: lineage, data licences, metrics, the gold evaluation table).")
    target_args(parser)
    parser.add_argument("--to", required=True, help="the folder to write (new, or empty)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="dtype of the exported weights "
                                                                                    "(default: as trained)")
    parser.add_argument("--adapter", action="store_true",
                        help="export the LoRA adapter and a copy of its base under base/ instead of merged weights")
    parser.add_argument("--push-to-hub", metavar="REPO", help="upload the export to this Hub repository (needs the "
                                                              "network and a token)")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository private")
    parser.set_defaults(handler=handle)


def handle(args) -> int:
    from pathlib import Path

    from ..artifacts.export import export, push_to_hub

    artifact = stage_artifact(args)
    out = export(artifact, Path(args.to), args.dtype, args.adapter)
    what = "a reward model" if artifact.produces != "policy" else "the adapter and a copy of its base" \
        if args.adapter else "a policy's full weights"
    print(f"exported {what} from {artifact.path} ({artifact.kind} stage) -> {out}; it loads with plain "
          f"{'peft' if args.adapter else 'transformers'} (see {out / 'README.md'})")
    if args.push_to_hub:
        print(f"uploaded: {push_to_hub(out, args.push_to_hub, args.private)}")
    return 0

"""`export`: write a policy or reward-model artifact as a folder that needs nothing of this project (merged weights
or adapter and base, tokenizer, generation config, model card), and optionally push it to the Hub."""

from __future__ import annotations


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "export", help="write a stage's model as a folder that needs nothing of this project (and push it to the Hub)",
        description="Export a policy or reward-model artifact: merged safetensors (or, with --adapter, the adapter and "
                    "a copy of its base), tokenizer with chat template, generation config and a model card (README.md "
                    "with the Hub's front matter: lineage, data licences, metrics, the gold evaluation table).")
    parser.add_argument("target", help="a stage folder (runs/rlhf/dpo), or a stage name with --recipe")
    parser.add_argument("--to", required=True, help="the folder to write (new, or empty)")
    parser.add_argument("--recipe", help="the recipe whose stage TARGET names (its output folder is searched)")
    parser.add_argument("--output-dir", help="with --recipe: where the run's artifacts are (default: from the recipe)")
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

    from ..artifacts.artifact import Artifact
    from ..artifacts.export import export, push_to_hub
    from ..errors import UsageError

    folder = Path(args.target)
    if args.recipe:
        from ..recipe import load_recipe

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

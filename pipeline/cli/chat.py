"""`chat`: talk to a stage's policy through its chat template, one question (--prompt) or a conversation."""

from __future__ import annotations

from .common import positive_float, positive_int, seed_value, stage_artifact, target_args

HELP_LINE = "(an empty line or /exit ends the conversation, /reset starts a new one)"


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "chat", help="talk to a stage's policy (one question with --prompt, or a conversation)",
        description="Load a policy artifact (sft, dpo, ppo, ...) with plain transformers/peft and answer through its "
                    "chat template: one answer to --prompt, or a conversation on the terminal that keeps its turns. "
                    f"{HELP_LINE}")
    target_args(parser)
    parser.add_argument("--prompt", help="answer this once and exit (default: a conversation on the terminal)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=128, help="most tokens an answer has "
                                                                                 "(default: 128)")
    parser.add_argument("--temperature", type=positive_float, default=0.7, help="sampling temperature (default: 0.7)")
    parser.add_argument("--top-p", type=positive_float, default=0.95, help="nucleus sampling (default: 0.95)")
    parser.add_argument("--greedy", action="store_true", help="the most likely token every time, no sampling")
    parser.add_argument("--seed", type=seed_value, default=0, help="seed of the sampling (default: 0)")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                        help="weights' dtype (auto: bf16 where this machine multiplies bf16 natively)")
    parser.set_defaults(handler=handle)


def handle(args) -> int:
    import sys

    from ..artifacts.policy import load_policy
    from ..errors import UsageError
    from ..evaluation.generation import generate
    from ..evaluation.settings import SamplingSettings
    from ..models.loading import load_tokenizer, resolved_dtype

    if args.top_p > 1:
        raise UsageError(f"--top-p must be at most 1, got {args.top_p}")
    artifact = stage_artifact(args)
    if artifact.produces != "policy":
        raise UsageError(f"{artifact.path}: a {artifact.kind} stage holds a {artifact.produces}, not a policy to "
                         "talk to")
    model = load_policy(artifact.path, resolved_dtype(args.dtype))
    tokenizer = load_tokenizer(str(artifact.path))
    if not tokenizer.chat_template:
        raise UsageError(f"{artifact.path}: the tokenizer has no chat template to talk through")
    sampling = SamplingSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                                do_sample=not args.greedy, batch_size=1)
    turns: list[dict] = []

    def answer(text: str, turn: int) -> str:
        turns.append({"role": "user", "content": text})
        (completion,) = generate(model, tokenizer, [list(turns)], sampling, seed=args.seed + turn, progress=False)
        turns.append({"role": "assistant", "content": completion.completion})
        return completion.completion

    if args.prompt is not None:
        print(answer(args.prompt, 0))
        return 0
    print(f"chatting with {artifact.path} {HELP_LINE}", file=sys.stderr)
    turn = 0
    while True:
        try:
            text = input("you> " if sys.stdin.isatty() else "").strip()  # piped input: answers only
        except EOFError:
            break
        if text in ("", "/exit"):
            break
        if text == "/reset":
            turns.clear()
            continue
        print(f"{artifact.manifest.get('stage', artifact.path.name)}> {answer(text, turn)}")
        turn += 1
    return 0

"""`data validate` and `data show`: check a data card row by row, or describe its rows (lengths, duplicates,
train/eval overlap, samples)."""

from __future__ import annotations


def add_parser(commands) -> None:
    parser = commands.add_parser("data", help="check or inspect a data card",
                                 description="Work with data cards (data_cards/*.yaml).")
    actions = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    validate = actions.add_parser("validate", help="materialise a card and check every row, its checksum and row "
                                                   "count")
    validate.add_argument("card", nargs="+")
    show = actions.add_parser("show", help="rows, token-length percentiles, duplicates, empty fields, train/eval "
                                           "overlap and samples")
    show.add_argument("card")
    show.add_argument("--tokenizer", help="model (folder, builtin:NAME) whose tokenizer counts tokens")
    parser.set_defaults(handler=handle)


def handle(args) -> int:
    from ..data.inspect import describe, validate_card

    if args.data_command == "validate":
        for card in args.card:
            for line in validate_card(card):
                print(line)
        return 0
    tokenizer = None
    if args.tokenizer:
        from ..models.loading import load_tokenizer
        from ..models.sources import resolve

        tokenizer = load_tokenizer(resolve(args.tokenizer))
    print(describe(args.card, tokenizer))
    return 0

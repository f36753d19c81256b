"""What stages read: chat rows for SFT, preference pairs, prompt lists. Every source (a card or a plain file) goes
through the same rule: rows checked, split disjoint by prompt (``pipeline.data.splits``), ``max_rows`` taken from
the training side after the split."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from ..errors import DataError
from .cards import card_splits, load_card
from .rows import check_chat_rows, check_rows, prompt_key, read_rows
from .settings import DataSettings
from .splits import split_rows, take_rows


def _file_splits(settings: DataSettings, seed: int, columns: tuple[str, ...] | None, check) -> tuple[list, list, str]:
    """(train, eval, format) of a plain data file and its optional eval file."""
    rows = read_rows(settings.path)
    fmt = check(rows, str(settings.path))
    if columns is None:
        columns = ("messages",) if fmt == "messages" else ("prompt", "completion")
    keep = lambda rs: [{c: r[c] for c in columns if c in r} for r in rs]  # noqa: E731
    if settings.eval_path is not None:
        eval_rows = read_rows(settings.eval_path)
        if check(eval_rows, str(settings.eval_path)) != fmt:
            raise DataError(str(settings.eval_path), f"eval data must have the same format as {settings.path} ({fmt})")
        trained = {prompt_key(r) for r in rows}
        leaked = [number for number, r in enumerate(eval_rows, start=1) if prompt_key(r) in trained]
        if leaked:
            shown = ", ".join(map(str, leaked[:5])) + (f" (+{len(leaked) - 5} more)" if len(leaked) > 5 else "")
            raise DataError(str(settings.eval_path), f"rows {shown} ask a prompt the training data "
                                                     f"({settings.path}) also asks: eval must be held out")
        train, evaluation = rows, eval_rows
    else:
        parts = split_rows(rows, settings.eval_fraction, seed, str(settings.path))
        train, evaluation = parts["train"], parts["eval"]
    return keep(take_rows(train, settings.max_rows)), keep(evaluation), fmt


def load_chat_splits(settings: DataSettings, seed: int, conversational: bool = False):
    """Train and eval ``datasets.Dataset`` (eval may be None) with only the columns TRL's SFTTrainer reads.
    ``conversational`` (the tokenizer has a chat template) turns string prompt/completion rows into one-turn
    conversations, rendered like the prompts the pipeline samples from."""
    from datasets import Dataset

    train, evaluation, fmt = chat_splits(settings, seed)
    if conversational and fmt == "prompt_completion" and has_string_rows(train):
        train, evaluation = as_conversations(train), as_conversations(evaluation)
    return Dataset.from_list(train), Dataset.from_list(evaluation) if evaluation else None, fmt


def chat_splits(settings: DataSettings, seed: int) -> tuple[list[dict], list[dict], str]:
    """(train rows, eval rows, format) of SFT data: every row checked, split by the one rule."""
    if settings.card is not None:
        card = load_card(settings.card)
        if card.format not in ("messages", "prompt_completion"):
            raise DataError(str(settings.card), f"this stage trains on messages or prompt_completion data; the card "
                                                f"holds {card.format} rows")
        splits = card_splits(card, str(settings.card))
        train, evaluation, fmt = take_rows(splits["train"], settings.max_rows), splits["eval"], card.format
    else:
        train, evaluation, fmt = _file_splits(settings, seed, None, check_chat_rows)
    if not train:
        raise DataError(str(settings.card or settings.path), "no training rows are left after the eval split")
    return train, evaluation, fmt


def _check_preferences(rows: list[dict], origin: str) -> str:
    check_rows(rows, "preference", origin)
    return "preference"


def preference_splits(settings: DataSettings | None, upstream_card: Path | None = None,
                      seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Train and eval preference pairs from a card or file (``settings``), or else from the data card an upstream
    preferences stage wrote (``upstream_card``)."""
    if settings is None:
        if upstream_card is None:
            raise DataError("data", "no preference data: neither `data:` nor an upstream preferences stage")
        splits = card_splits(load_card(upstream_card), str(upstream_card))
        return splits["train"], splits["eval"]
    if settings.card is not None:
        card = load_card(settings.card)
        if card.format != "preference":
            raise DataError(str(settings.card), f"this stage trains on preference pairs; the card holds {card.format} "
                                                "rows")
        splits = card_splits(card, str(settings.card))
        return take_rows(splits["train"], settings.max_rows), splits["eval"]
    train, evaluation, _ = _file_splits(settings, seed, ("prompt", "chosen", "rejected", "margin"),
                                        _check_preferences)
    return train, evaluation


def card_prompts(card_path: Path | str, split: Literal["train", "eval"], n: int | None = None) -> list:
    """The prompts of a prompt card's split, the first ``n`` of them (all when None). For "eval", a card without an
    eval split (eval_fraction 0) is used whole."""
    card = load_card(card_path)
    if card.format != "prompt":
        raise DataError(str(card_path), f"a prompt card is needed (format: prompt); this one holds {card.format} rows")
    splits = card_splits(card, str(card_path))
    rows = splits[split]
    if split == "eval" and not rows and card.splits.eval_fraction == 0:
        rows = splits["train"]
    prompts = [row["prompt"] for row in take_rows(rows, n)]
    if not prompts:
        raise DataError(str(card_path), f"the card has no {split} prompts (splits.eval_fraction is "
                                        f"{card.splits.eval_fraction:g})")
    return prompts


def as_conversations(rows: list[dict]) -> list[dict]:
    """Rows in string form (prompt, completion / chosen / rejected as text) as one-turn conversations: a user message
    and an assistant reply. With a chat template, the pipeline samples and evaluates string prompts as user messages
    through the template; training on them the same way keeps the two alike."""
    converted = []
    for row in rows:
        row = dict(row)
        if isinstance(row.get("prompt"), str):
            row["prompt"] = [{"role": "user", "content": row["prompt"]}]
        for key in ("completion", "chosen", "rejected"):
            if isinstance(row.get(key), str):
                row[key] = [{"role": "assistant", "content": row[key]}]
        converted.append(row)
    return converted


def as_chat_rows(tokenizer, *splits: list[dict]) -> tuple[list[dict], ...]:
    """``splits`` as one-turn conversations (``as_conversations``) where the tokenizer has a chat template and the
    rows are text, else as they are: the pipeline samples, evaluates and scores text prompts as user messages through
    the template, and a stage that trains on them renders them the same way."""
    if tokenizer.chat_template and splits and has_string_rows(splits[0]):
        return tuple(as_conversations(rows) for rows in splits)
    return splits


def has_string_rows(rows: list[dict]) -> bool:
    return any(isinstance(row.get("prompt"), str) for row in rows)

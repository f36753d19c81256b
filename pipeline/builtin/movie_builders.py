"""The movie-review builders of the demo recipe: the 10,605 human-rated snippets of the VADER paper
(``pipeline.builtin.movie_reviews``) as SFT, RL-prompt and eval-prompt sets.

About a tenth of the snippets are **held out** (``is_heldout``): eval prompts come from those only, and everything
used for training (SFT, RL prompts, preferences) comes from the rest, so no eval prompt is ever trained on.
"""

from __future__ import annotations

import hashlib
import logging

from ..data.builders import builder
from . import movie_reviews

log = logging.getLogger("pipeline")


PROMPT_TEMPLATE = "Continue this movie review: {start}"
"""The one wording of every movie-review prompt (SFT user turns, RL prompts and eval prompts alike)."""

HELDOUT_MODULUS = 10
"""A snippet is held out when int(sha256(id)) % HELDOUT_MODULUS == 0 (about 1 in 10: 1,060 of 10,605)."""


def _hash(text: str) -> int:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest(), 16)


def is_heldout(snippet_id: str) -> bool:
    """Whether a snippet belongs to the held-out (eval-only) part: decided by its id alone, so it never moves."""
    return _hash(str(snippet_id)) % HELDOUT_MODULUS == 0


def movie_prompt(words: list[str]) -> str:
    return PROMPT_TEMPLATE.format(start=" ".join(words))


def _snippets(prompt_words: int, min_words: int, heldout: bool) -> list[tuple[dict, list[str]]]:
    """(snippet, words) in file order, from one side of the held-out partition, with at least min_words words.

    Training sides also leave out any snippet whose prompt equals a held-out snippet's prompt (none do at 8 prompt
    words; shorter prompts collide), so an eval prompt never appears in training, not even from a different snippet.
    """
    if prompt_words < 1:
        raise ValueError(f"prompt_words must be at least 1, got {prompt_words}")
    if min_words < prompt_words:
        raise ValueError(f"min_words ({min_words}) must be at least prompt_words ({prompt_words})")
    rows = movie_reviews.movie_review_rows()
    side = [(row, row["text"].split()) for row in rows if is_heldout(row["id"]) == heldout]
    if not heldout:
        eval_prompts = {" ".join(row["text"].split()[:prompt_words]) for row in rows if is_heldout(row["id"])}
        before = len(side)
        side = [(row, words) for row, words in side if " ".join(words[:prompt_words]) not in eval_prompts]
        if len(side) != before:
            log.info("movie reviews: left out %d training snippets whose prompt equals a held-out one",
                     before - len(side))
    return [(row, words) for row, words in side if len(words) >= min_words]


def _subset(items: list[tuple[dict, list[str]]], count: int | None, salt: str) -> list[tuple[dict, list[str]]]:
    """A deterministic, order-independent pick of ``count`` items (by a salted hash of the id), kept in file order.

    The file lists the positive snippets first, so taking the first N would be all positive.
    """
    if count is None or count >= len(items):
        return items
    if count < 0:
        raise ValueError(f"a row count must not be negative, got {count}")
    chosen = set(sorted(range(len(items)), key=lambda i: _hash(f"{salt}:{items[i][0]['id']}"))[:count])
    return [item for i, item in enumerate(items) if i in chosen]


def _unique_prompts(items: list[tuple[dict, list[str]]], prompt_words: int) -> list[tuple[dict, list[str]]]:
    seen, out = set(), []
    for row, words in items:
        key = " ".join(words[:prompt_words])
        if key not in seen:
            seen.add(key)
            out.append((row, words))
    return out


@builder("movie_sft")
def movie_sft(prompt_words: int = 8, min_words: int = 14, max_rows: int | None = None) -> list[dict]:
    """Messages rows from non-held-out snippets of at least min_words words: the user turn asks to continue the
    first prompt_words words, the assistant turn is the rest of the snippet. max_rows picks a fixed subset."""
    items = _subset(_snippets(prompt_words, min_words, heldout=False), max_rows, "movie_sft")
    return [
        {
            "messages": [
                {"role": "user", "content": movie_prompt(words[:prompt_words])},
                {"role": "assistant", "content": " ".join(words[prompt_words:])},
            ]
        }
        for _, words in items
    ]


@builder("movie_prompts")
def movie_prompts(prompt_words: int = 8, min_words: int = 14, max_rows: int | None = None) -> list[dict]:
    """Prompt-only rows (RL prompts) from non-held-out snippets of at least min_words words, one per distinct
    prompt. max_rows picks a fixed subset."""
    items = _unique_prompts(_snippets(prompt_words, min_words, heldout=False), prompt_words)
    return [{"prompt": movie_prompt(words[:prompt_words])} for _, words in _subset(items, max_rows, "movie_prompts")]


@builder("movie_eval_prompts")
def movie_eval_prompts(prompt_words: int = 8, n: int | None = 256, min_words: int = 14) -> list[dict]:
    """Prompt-only rows from held-out snippets only (never used for training), one per distinct prompt;
    n picks a fixed subset (None: all of them)."""
    items = _unique_prompts(_snippets(prompt_words, min_words, heldout=True), prompt_words)
    return [{"prompt": movie_prompt(words[:prompt_words])} for _, words in _subset(items, n, "movie_eval_prompts")]

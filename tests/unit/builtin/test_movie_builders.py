"""The movie-review builders (on fake snippets, so no network): shapes, the held-out partition, card use."""

from __future__ import annotations

import pytest

from pipeline.builtin import movie_builders as builders
from pipeline.builtin import movie_reviews
from pipeline.data.cards import load_card, materialise
from pipeline.data.rows import rows_sha256
from pipeline.errors import DataError
from support import make_card


def fake_snippets() -> list[dict]:
    rows = []
    for i in range(1, 201):
        length = 6 + i % 20  # 6..25 words
        rows.append({"id": str(i), "rating": (i % 9) - 4.0, "text": " ".join(f"w{i}x{j}" for j in range(length))})
    return rows


@pytest.fixture
def snippets(monkeypatch):
    rows = fake_snippets()
    heldout = [r for r in rows if builders.is_heldout(r["id"])]
    assert heldout and len(heldout) < len(rows)
    # A training snippet that starts like a held-out one must not be trained on.
    copy = next(r for r in heldout if len(r["text"].split()) >= 14)
    twin = next(r for r in rows if not builders.is_heldout(r["id"]) and len(r["text"].split()) >= 14)
    twin["text"] = " ".join(copy["text"].split()[:8] + ["twin"] * 10)
    monkeypatch.setattr(movie_reviews, "movie_review_rows", lambda: [dict(r) for r in rows])
    return rows


def starts(text: str) -> str:
    assert text.startswith(builders.PROMPT_TEMPLATE.format(start=""))
    return text.removeprefix(builders.PROMPT_TEMPLATE.format(start=""))


def test_movie_sft_shape(snippets):
    rows = builders.movie_sft(prompt_words=8, min_words=14)
    assert rows
    by_start = {" ".join(s["text"].split()[:8]): s for s in snippets}
    for row in rows:
        user, assistant = row["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        source = by_start[starts(user["content"])]
        words = source["text"].split()
        assert len(words) >= 14 and assistant["content"] == " ".join(words[8:])
        assert not builders.is_heldout(source["id"])
    eligible = [s for s in snippets if not builders.is_heldout(s["id"]) and len(s["text"].split()) >= 14]
    assert len(rows) == len(eligible) - 1  # the twin of a held-out prompt is left out
    subset = builders.movie_sft(max_rows=10)
    assert len(subset) == 10 and subset == builders.movie_sft(max_rows=10)
    assert all(row in rows for row in subset)


def test_heldout_prompts_are_disjoint_from_training(snippets):
    train = {r["prompt"] for r in builders.movie_prompts(min_words=9)}
    train |= {r["messages"][0]["content"] for r in builders.movie_sft(min_words=9)}
    evaluation = builders.movie_eval_prompts(n=None, min_words=9)
    assert evaluation and all(set(r) == {"prompt"} for r in evaluation)
    assert not train & {r["prompt"] for r in evaluation}
    heldout_starts = {" ".join(s["text"].split()[:8]) for s in snippets if builders.is_heldout(s["id"])}
    assert all(starts(r["prompt"]) in heldout_starts for r in evaluation)
    assert len(builders.movie_eval_prompts(n=2, min_words=9)) == 2


def test_builder_card_materialises(snippets, tmp_path):
    rows = builders.movie_prompts(max_rows=5)
    path = make_card(tmp_path, source={"builder": {"name": "movie_prompts", "args": {"max_rows": 5}}},
                     format="prompt", rows=5, sha256=rows_sha256(rows))
    assert materialise(load_card(path), str(path)) == rows
    bad = make_card(tmp_path, "bad", source={"builder": {"name": "movie_prompts", "args": {"prompt_words": 0}}},
                    format="prompt")
    with pytest.raises(DataError, match=r"bad\.yaml \(builder movie_prompts\), field 'source\.builder\.args': "
                                        r"prompt_words must be at least 1"):
        materialise(load_card(bad), str(bad))

"""The movie-review snippets from the vaderSentiment source archive (offline: a fake archive), and the SmolLM2
builtin model entry."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from pipeline.builtin import movie_reviews
from pipeline.errors import PipelineError


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("PIPELINE_CACHE", str(root))
    return root


RAW = (
    "1\t2.5\tA ''great'' film  with    spaces\r\n"
    "2\t-0.6\tThe Ch\u00e2teau is dull\r\n"
    "3\t0.0\tFine.\r\n"
).encode("utf-8")


def test_parse_ground_truth_cleans_text_and_keeps_utf8():
    rows = movie_reviews.parse_ground_truth(RAW)
    assert rows == [
        {"id": "1", "rating": 2.5, "text": 'A "great" film with spaces'},
        {"id": "2", "rating": -0.6, "text": "The Ch\u00e2teau is dull"},
        {"id": "3", "rating": 0.0, "text": "Fine."},
    ]
    with pytest.raises(PipelineError, match="line 2: expected 3 tab-separated fields"):
        movie_reviews.parse_ground_truth(b"1\t1.0\tok\n2\t1.0\n")
    with pytest.raises(PipelineError, match="not UTF-8"):
        movie_reviews.parse_ground_truth(b"1\t1.0\tCh\xe2teau\n")


def _fake_sdist(path: Path, raw: bytes) -> Path:
    """A source tarball shaped like vaderSentiment's: the data tarball nested inside it."""

    def tar_bytes(members: dict[str, bytes]) -> bytes:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
        return buffer.getvalue()

    inner = tar_bytes({movie_reviews.MEMBER: raw})
    path.write_bytes(tar_bytes({f"vaderSentiment-3.3.2/{movie_reviews.INNER_ARCHIVE}": inner}))
    return path


def test_movie_review_rows_checks_the_count_and_caches(monkeypatch, tmp_path):
    sdist = _fake_sdist(tmp_path / "vaderSentiment-3.3.2.tar.gz", RAW)
    fetched = []
    monkeypatch.setattr(movie_reviews, "fetch_from_pypi", lambda req, sha, source: fetched.append(source) or sdist)
    with pytest.raises(PipelineError, match="expected 10605 rows, found 3"):
        movie_reviews.movie_review_rows()

    monkeypatch.setattr(movie_reviews, "EXPECTED_ROWS", 3)
    rows = movie_reviews.movie_review_rows()
    assert [r["id"] for r in rows] == ["1", "2", "3"] and fetched == [True, True]
    assert movie_reviews.movie_review_rows() == rows and len(fetched) == 2  # read from the cached jsonl


def test_builtin_models_resolve_through_their_registered_builders(monkeypatch, tmp_path):
    """builtin:NAME is resolved by importing the registered function, and only when asked for."""
    from pipeline.builtin import smollm2
    from pipeline.models.sources import BUILTIN_MODELS, check_source, resolve

    assert set(BUILTIN_MODELS) == {"tiny-llama", "smollm2-135m-instruct"}
    built = tmp_path / "smollm2-folder"
    monkeypatch.setattr(smollm2, "smollm2_path", lambda: built)
    assert resolve("builtin:smollm2-135m-instruct") == str(built)
    assert check_source("builtin:smollm2-135m-instruct") is None
    assert "unknown builtin model 'smollm3'" in check_source("builtin:smollm3")

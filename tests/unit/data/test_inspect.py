"""`data show` (describe) and `data validate` (validate_card)."""

from __future__ import annotations

from pipeline.data.inspect import describe
from pipeline.data.rows import rows_sha256
from support import make_card, numbered_rows, write_jsonl


def test_describe(tmp_path):
    rows = numbered_rows(20) + [numbered_rows(1)[0]]  # one duplicate row
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    path = make_card(tmp_path, source={"path": str(data)}, format="prompt_completion",
                     splits={"eval_fraction": 0.2, "seed": 1}, citation="Someone (2024).")
    text = describe(path)
    assert "rows: 21  (train 17, eval 4; eval_fraction 0.2, seed 1)" in text
    assert "lengths in whitespace words:" in text
    assert "p50" in text and "p90" in text and "p99" in text and "max" in text
    assert "train  prompt" in text and "eval   completion" in text
    assert "duplicate rows: 1" in text
    assert "empty fields: 0" in text
    assert "train/eval overlap (eval rows whose prompt is in train): 0" in text
    assert text.count("\n  row ") == 3 and "samples:" in text
    assert "cite: Someone (2024)." in text and f"sha256: {rows_sha256(rows)}" in text

    class Chars:  # a stand-in tokenizer: one token per character
        name_or_path = "chars"

        def encode(self, text, add_special_tokens=False):
            return list(text)

    flat = make_card(tmp_path, "flat", source={"path": str(data)}, format="prompt_completion")
    text = describe(flat, tokenizer=Chars())
    assert "lengths in tokens (chars):" in text
    # "question 0".."question 19" and "answer 0".."answer 19" (plus one more "question 0" / "answer 0"), in characters
    assert "  train  prompt          10     11     11     11" in text
    assert "  train  completion       8      9      9      9" in text

"""The data and eval commands as a user runs them."""

from __future__ import annotations

import json

from support import ROOT, run_cli


def test_data_validate_and_show():
    result = run_cli("data", "validate", "data_cards/tiny_chat.yaml", "data_cards/tiny_eval_prompts.yaml")
    assert result.returncode == 0, result.stderr
    assert "240 rows" in result.stdout and "32 rows" in result.stdout
    shown = run_cli("data", "show", "data_cards/tiny_chat.yaml", "--tokenizer", "builtin:tiny-llama")
    assert shown.returncode == 0, shown.stderr
    assert "p50" in shown.stdout and "overlap" in shown.stdout


def test_data_validate_refuses_a_tampered_card(tmp_path):
    card = (ROOT / "data_cards" / "tiny_chat.yaml").read_text().replace("rows: 240", "rows: 241")
    card = card.replace("../data/tiny/chat.jsonl", str(ROOT / "data" / "tiny" / "chat.jsonl"))
    (tmp_path / "card.yaml").write_text(card)
    result = run_cli("data", "validate", str(tmp_path / "card.yaml"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "241" in result.stderr and "240" in result.stderr


def test_eval_of_a_base_model_writes_eval_json(tmp_path):
    result = run_cli("eval", "builtin:tiny-llama", "--prompts", "data_cards/tiny_eval_prompts.yaml", "--n", "4",
                     "--max-new-tokens", "4", "--out", str(tmp_path / "ev"))
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert metrics["n"] == 4 and metrics["kl_mean"] == 0.0 and metrics["judge"] == "vader"
    assert len((tmp_path / "ev" / "eval_samples.jsonl").read_text().splitlines()) == 4


def test_eval_of_a_missing_model_is_a_clear_error(tmp_path):
    result = run_cli("eval", str(tmp_path / "nothing-here"), "--prompts", "data_cards/tiny_eval_prompts.yaml")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "nothing-here" in result.stderr

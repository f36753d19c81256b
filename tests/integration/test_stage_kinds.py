"""A new stage kind is two files, found without registering anything; a stage's fingerprint knows its code: a code
change reruns that stage and its downstream only, a comment-only change reruns nothing."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml

from support import run_cli

pytestmark = pytest.mark.slow  # whole chains, in fresh processes

CONFIG = '''
"""A toy kind: writes `pairs` preference pairs (or filters its upstream's)."""
from pathlib import Path
from typing import ClassVar, Literal

from pipeline.config.schema import StageConfig


class {cls}(StageConfig):
    kind: Literal["{kind}"] = "{kind}"
    pairs: int = 3
    """How many pairs to write."""

    produces: ClassVar[str] = "preferences"
    accepts: ClassVar[dict[str, bool]] = {accepts}


CONFIG = {cls}
'''

STAGE = '''
"""Run the toy kind."""
import json

import yaml

from pipeline.contract import PreferencesOutput, StageContext, StageResult

SUFFIX = "{suffix}"


def run(ctx: StageContext) -> StageResult:
    rows = [{{"prompt": f"q{{i}}", "chosen": f"good {{i}}{{SUFFIX}}", "rejected": f"bad {{i}}"}}
            for i in range(ctx.config.pairs)]
    if ctx.is_main:
        (ctx.out_dir / "pairs.jsonl").write_text("".join(json.dumps(r) + "\\n" for r in rows))
        card = {{"name": "toy", "description": "toy pairs", "license": "MIT", "source": {{"path": "pairs.jsonl"}},
                "format": "preference"}}
        (ctx.out_dir / "card.yaml").write_text(yaml.safe_dump(card))
    return StageResult(PreferencesOutput("card.yaml"), {{"pairs": len(rows), "suffix": SUFFIX}})
'''


@pytest.fixture
def kinds(tmp_path) -> Path:
    folder = tmp_path / "kinds"
    folder.mkdir()
    write_kind(folder, "toy", "ToyConfig", {}, "")
    write_kind(folder, "toyfilter", "ToyFilterConfig", {"preferences": True}, "")
    return folder


def write_kind(folder: Path, kind: str, cls: str, accepts: dict, suffix: str, comment: str = "") -> None:
    (folder / f"{kind}_config.py").write_text(textwrap.dedent(CONFIG.format(cls=cls, kind=kind, accepts=accepts)))
    (folder / f"{kind}.py").write_text(comment + textwrap.dedent(STAGE.format(suffix=suffix)))


@pytest.fixture
def recipe(tmp_path) -> Path:
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump({
        "name": "toy", "model": {"source": "builtin:tiny-llama", "dtype": "float32"},
        "output_dir": str(tmp_path / "out"),
        "stages": {"make": {"kind": "toy", "pairs": 4}, "filter": {"kind": "toyfilter", "from": "make"}},
    }))
    return path


def cli(kinds: Path, *args: str):
    return run_cli(*args, env={"PIPELINE_STAGE_PATH": str(kinds)})


def actions(result) -> dict[str, tuple[str, str]]:
    rows = {}
    for line in result.stdout.splitlines():
        parts = line.split(None, 8)  # stage kind from action params trainable mem time reason
        if len(parts) >= 4 and parts[0] in ("make", "filter"):
            rows[parts[0]] = (parts[3], parts[8] if len(parts) > 8 else "")
    return rows


def test_a_kind_in_another_folder_validates_plans_and_runs(kinds, recipe, tmp_path):
    assert cli(kinds, "validate", str(recipe)).returncode == 0
    unknown = run_cli("validate", str(recipe))  # without the folder the kind does not exist
    assert unknown.returncode == 2 and "unknown stage kind 'toy'" in unknown.stderr
    planned = cli(kinds, "plan", str(recipe))
    assert planned.returncode == 0, planned.stderr
    assert actions(planned) == {"make": ("run", "new"), "filter": ("run", "new")}
    ran = cli(kinds, "run", str(recipe))
    assert ran.returncode == 0, ran.stderr[-2000:]
    manifest = json.loads((tmp_path / "out" / "filter" / "manifest.json").read_text())
    assert manifest["kind"] == "toyfilter" and manifest["output"] == {"data_card": "card.yaml"}
    assert manifest["fingerprint_parts"]["code"].keys() >= {"stages/toyfilter", "stages/toyfilter_config",
                                                            "pipeline/contract/__init__"}
    bad = cli(kinds, "validate", str(recipe), "--set", "stages.make.pairs=many")
    assert bad.returncode == 2 and "stages.make.pairs: Input should be a valid integer" in bad.stderr


def test_code_changes_rerun_that_stage_and_downstream_only(kinds, recipe):
    assert cli(kinds, "run", str(recipe)).returncode == 0
    assert actions(cli(kinds, "plan", str(recipe))) == {"make": ("cached", "artifact matches"),
                                                          "filter": ("cached", "artifact matches")}

    write_kind(kinds, "toyfilter", "ToyFilterConfig", {"preferences": True}, "", comment="# only a comment\n")
    (kinds / "toyfilter.py").write_text((kinds / "toyfilter.py").read_text().replace('"""Run the toy kind."""',
                                                                                       '"""Another docstring."""'))
    assert actions(cli(kinds, "plan", str(recipe))) == {"make": ("cached", "artifact matches"),
                                                          "filter": ("cached", "artifact matches")}

    write_kind(kinds, "toyfilter", "ToyFilterConfig", {"preferences": True}, "!")
    assert actions(cli(kinds, "plan", str(recipe))) == {"make": ("cached", "artifact matches"),
                                                          "filter": ("run", "code changed (stages/toyfilter)")}

    write_kind(kinds, "toy", "ToyConfig", {}, "?")
    assert actions(cli(kinds, "plan", str(recipe))) == {
        "make": ("run", "code changed (stages/toy)"),
        "filter": ("run", "upstream make changed; code changed (stages/toyfilter)")}

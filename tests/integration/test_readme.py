"""Every quick command of the README (its code blocks' `python -m pipeline ...` lines on recipes/tiny.yaml) runs,
in order, from a fresh folder, and succeeds: the quickstart a newcomer follows works."""

from __future__ import annotations

import re
import shlex

import pytest

from support import ROOT, run_cli

pytestmark = pytest.mark.slow


def readme_commands() -> list[list[str]]:
    """The arguments after ``python -m pipeline`` of each README command on the tiny recipe, comments dropped."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("python -m pipeline ") and "recipes/tiny.yaml" in line:
                commands.append(shlex.split(line)[3:])
    return commands


def test_the_readme_shows_the_commands_a_newcomer_needs():
    verbs = [c[0] for c in readme_commands()]
    assert {"plan", "run", "report", "runs", "chat", "export"} <= set(verbs)
    assert verbs.index("plan") < verbs.index("run") < min(verbs.index(v) for v in ("report", "runs", "chat", "export"))


def test_every_quick_readme_command_succeeds(tmp_path):
    for args in readme_commands():
        args = [str(ROOT / a) if a.startswith("recipes/") else a for a in args]
        result = run_cli(*args, cwd=tmp_path, timeout=600)
        assert result.returncode == 0, f"{' '.join(args)}:\n{result.stderr[-2000:]}"
        if args[0] == "chat":
            assert result.stdout.strip(), "chat printed no answer"
    assert (tmp_path / "tiny-dpo" / "config.json").is_file() and (tmp_path / "runs" / "tiny" / "run.log").is_file()

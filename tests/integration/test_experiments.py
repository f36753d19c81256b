"""Experiments that accumulate: every variant kept, sweeps that share their upstreams, `runs` and `gc`, live logs,
trackers, and the HTML report with the reward-KL frontier (opened in headless Chromium)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.graph.html_report import frontier_points
from pipeline.graph.plan import make_plan
from pipeline.graph.variants import variants
from pipeline.recipe import load_recipe
from support import RECIPES, run_cli, sft_stage

pytestmark = pytest.mark.slow  # whole chains, several times

SHORT = ["stages.sft.train.max_steps=6", "stages.reward.train.max_steps=6", "stages.dpo.train.max_steps=4",
         "stages.ppo.train.max_steps=2", "stages.ppo.rollout_batch_size=16", "evaluate.n=4"]


def sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep") / "out"
    result = run_cli("run", str(RECIPES / "tiny.yaml"), "--output-dir", str(out), *sets(SHORT),
                     "--sweep", "stages.dpo.beta=0.1,0.3", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    (out.parent / "sweep.log").write_text(result.stderr)
    (out.parent / "sweep.out").write_text(result.stdout)
    return out


def test_the_end_of_a_run_says_what_each_stage_did_and_what_to_do_next(swept):
    printed = (swept.parent / "sweep.out").read_text()
    assert "ppo: done: score at step 1 " in printed and ", KL " in printed
    assert "reward: done: held-out pair accuracy " in printed
    assert "preferences: done: pairs " in printed
    assert "eval-ppo: done: gold " in printed
    assert f"python -m pipeline report {RECIPES / 'tiny.yaml'} --output-dir {swept} --set " in printed
    assert f"python -m pipeline chat STAGE --recipe {RECIPES / 'tiny.yaml'} --output-dir {swept}" in printed
    log = (swept / "run.log").read_text()
    assert "[sft] done in" in log and "[eval-ppo] done in" in log


def test_report_of_a_folder_without_evaluations_says_so_and_fails(tmp_path):
    result = run_cli("report", str(RECIPES / "tiny.yaml"), "--output-dir", str(tmp_path / "empty"))
    assert result.returncode == 1 and "no evaluation under" in result.stderr and result.stdout == ""


def test_the_trainers_progress_bars_are_named_by_stage(swept):
    log = (swept.parent / "sweep.log").read_text()
    for stage in ("sft", "reward", "dpo"):
        assert f"{stage}: training" in log, stage


def test_a_sweep_keeps_every_variant_and_shares_the_upstreams(swept):
    stored = variants(swept)
    by_stage = {}
    for v in stored:
        by_stage.setdefault(v.stage, []).append(v)
    assert len(by_stage["dpo"]) == 2 and len(by_stage["eval-dpo"]) == 2, "one per beta"
    assert len(by_stage["sft"]) == 1 and len(by_stage["reward"]) == 1 and len(by_stage["ppo"]) == 1, "shared"
    betas = sorted(v.artifact.manifest["config"]["beta"] for v in by_stage["dpo"])
    assert betas == [0.1, 0.3]
    log = (swept.parent / "sweep.log").read_text()
    for name in ("sft", "reward", "ppo"):  # computed once, then a cache hit for the second beta
        assert log.count(f"[{name}] running ") == 1, f"{name} ran {log.count(f'[{name}] running ')} times"
    assert log.count("[dpo] running ") == 2

    listed = run_cli("runs", str(RECIPES / "tiny.yaml"), "--output-dir", str(swept), *sets(SHORT))
    assert listed.returncode == 0, listed.stderr
    dpo_lines = [line for line in listed.stdout.splitlines() if line.startswith("dpo ")]
    assert len(dpo_lines) == 2
    assert any(line.rstrip().endswith("  same") for line in dpo_lines)
    assert any("config: beta 0.1 -> 0.3" in line for line in dpo_lines)
    header = listed.stdout.splitlines()[0]
    settings = [line[header.index("settings"):header.index("vs the recipe")].strip() for line in dpo_lines]
    assert sorted(settings) == ["beta 0.1", "beta 0.3"], "the settings column tells the variants apart"
    assert all("held-out acc" in line for line in dpo_lines)

    # the recipe as written (beta 0.1) was one of the variants: a plain run is fully cached
    plan = make_plan(load_recipe(RECIPES / "tiny.yaml", [f"output_dir={swept}", *SHORT]))
    assert {s.action for s in plan.stages} == {"cached"}, [(s.name, s.reason) for s in plan.stages]
    assert plan["dpo"].reason.startswith("stored variant ")
    again = run_cli("run", str(RECIPES / "tiny.yaml"), "--output-dir", str(swept), *sets(SHORT))
    assert again.returncode == 0 and "running" not in again.stderr

    points = frontier_points(swept)
    kinds = [p["kind"] for p in points]
    assert kinds.count("dpo") == 2 and {"base model", "sft", "ppo"} <= set(kinds)
    for p in points:  # the frontier is coloured by each variant's own repetition share
        stored = json.loads((swept / ".store" / p["evaluation"] / "eval.json").read_text())
        assert p["repetition"] == stored["repetition_share"], p


def test_a_sweep_keeps_the_checkpoints_of_its_other_variants(swept, tmp_path):
    # a sweep killed during its second variant: the first variant's run must not clear the second's checkpoints
    out = tmp_path / "copy"
    shutil.copytree(swept, out, symlinks=True)
    second = make_plan(load_recipe(RECIPES / "tiny.yaml", [f"output_dir={out}", *SHORT, "stages.dpo.beta=0.2"]))
    checkpoint = out / ".work" / f"dpo-{second['dpo'].fingerprint[:12]}" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    (checkpoint / "marker").write_text("a checkpoint of the killed variant")
    result = run_cli("run", str(RECIPES / "tiny.yaml"), "--output-dir", str(out), *sets(SHORT), "--only", "sft",
                     "--sweep", "stages.dpo.beta=0.1,0.2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (checkpoint / "marker").is_file(), "the beta-0.2 variant's checkpoint was removed"


def test_tensorboard_gets_every_training_stage_by_default(swept):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    seen = {}
    for folder in sorted((swept / "tensorboard").iterdir()):
        events = EventAccumulator(str(folder))
        events.Reload()
        seen[folder.name.rsplit("-", 1)[0]] = events.Tags()["scalars"]
    assert {"sft", "reward", "dpo", "ppo"} <= set(seen)
    assert any("loss" in tag for tag in seen["sft"]) and any("kl" in tag for tag in seen["ppo"])


def test_every_stage_keeps_its_log_as_it_goes(make_recipe, chat_data, tmp_path):
    path = make_recipe({"sft": sft_stage(chat_data, steps=6, train={"callbacks": ["support.callbacks:FailAtStep2"]})})
    result = run_cli("run", str(path))
    assert result.returncode != 0
    live = next((tmp_path / "out" / ".work").glob("sft-*/log_history.jsonl"))
    rows = [json.loads(line) for line in live.read_text().splitlines()]
    assert [row["step"] for row in rows] == [1] and "loss" in rows[0], "the log of a stage that failed at step 2"


def test_gc_removes_the_variants_no_recipe_names(swept, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(swept, out, symlinks=True)
    dry = run_cli("gc", str(RECIPES / "tiny.yaml"), "--output-dir", str(out), "--dry-run")
    assert dry.returncode == 0 and "would remove" in dry.stdout
    assert len([v for v in variants(out) if v.stage == "dpo"]) == 2, "a dry run removes nothing"
    # keep the recipe as written: the beta-0.3 variant and its evaluation go
    recipe = tmp_path / "tiny.yaml"
    text = (RECIPES / "tiny.yaml").read_text().replace("../data_cards/", f"{RECIPES.parent / 'data_cards'}/")
    recipe.write_text(text)
    kept = load_recipe(recipe, [f"output_dir={out}", *SHORT])
    from pipeline.graph.variants import collect

    removed, _ = collect(out, [make_plan(kept)])
    left = {v.stage: v for v in variants(out)}
    assert [v.stage for v in variants(out)].count("dpo") == 1 and left["dpo"].artifact.manifest["config"]["beta"] == 0.1
    assert any("dpo-" in str(p) for p in removed) and any("eval-dpo-" in str(p) for p in removed)


def test_the_report_on_a_fresh_machine_prints_no_library_chatter(swept, tmp_path):
    fresh_matplotlib = {"MPLCONFIGDIR": str(tmp_path / "mpl")}  # no font cache yet: matplotlib builds one
    result = run_cli("report", str(RECIPES / "tiny.yaml"), "--output-dir", str(swept), *sets(SHORT),
                     "--out", str(tmp_path / "report.html"), env=fresh_matplotlib)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "mpl").is_dir(), "matplotlib did not start from an empty config folder"
    assert "font cache" not in result.stderr + result.stdout


def test_the_html_report_opens_in_a_browser(swept, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium package is not installed (.ci/run installs it)")
    report = tmp_path / "report.html"
    result = run_cli("report", str(RECIPES / "tiny.yaml"), "--output-dir", str(swept), *sets(SHORT),
                     "--out", str(report))
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "report-frontier.png").is_file() and (tmp_path / "report-ppo.png").is_file()
    page = report.read_text()
    assert "http://" not in page and "https://" not in page, "self-contained"
    # the page as given, plus a check of every image once it has loaded
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", "<script>window.addEventListener('load', () => {"
                                  "const imgs = [...document.images]; const ok = imgs.filter(i => i.complete && "
                                  "i.naturalWidth > 0).length; document.title = `images ${ok}/${imgs.length}`;"
                                  "});</script></body>"))
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
             "--enable-logging=stderr", "--v=0"]
    dom = subprocess.run([*flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    title = dom.stdout.split("<title>")[1].split("</title>")[0]
    count = page.count("<img ")
    assert count >= 4 and title == f"images {count}/{count}", title
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line]
    assert not console, console
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,2000", report.as_uri()],
                   capture_output=True, timeout=120)
    import matplotlib.image

    pixels = matplotlib.image.imread(str(shot))
    assert pixels.std() > 0.05, "the screenshot is not blank"

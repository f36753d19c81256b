"""``report RECIPE --out report.html``: one self-contained HTML page (no network, images inline) and the PNGs beside
it: the gold table, the reward-KL frontier of every evaluated variant in the store, per-stage training curves and
sample continuations. Drawn with matplotlib (Agg)."""

from __future__ import annotations

import base64
import html
import io
import json
from datetime import datetime, timezone
from pathlib import Path

from ..artifacts.artifact import LOG_HISTORY, Artifact
from ..artifacts.outputs import EvaluationOutput
from ..training.trainer import LIVE_LOG
from .plan import STORE, Plan, flatten_settings
from .report import report_rows, share_text, shown_folder
from .variants import differing_keys, seed_free_parts, seed_lines, variants

CURVES = ("loss", "rewards/margins", "rewards/accuracies", "accuracy", "score", "gold", "kl", "kl_predicted",
          "kl_coef", "beta", "updates", "entropy", "clipfrac", "vf_loss", "reward", "reward_std", "pg_loss",
          "response_length", "repetition_share")
"""Logged quantities drawn when a stage logged them (whatever its kind); each with its held-out value (the trainer's
``eval_<name>``) beside the training one where the stage logged that."""
KL_CURVES = ("kl", "kl_predicted")
"""Drawn against the stage's KL target, when it has one, with the band of 20% either side."""
TARGET_BAND = 0.2
LABEL_KEYS = (("beta", "beta"), ("kl.target", "KL target"), ("kl.coef", "KL coef"), ("loss_type", "loss"),
              ("repetition_penalty", "repetition penalty"), ("num_generations", "G"), ("lora.r", "r"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return buffer.getvalue()


def _get(config: dict, dotted: str):
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def frontier_points(out_dir: Path) -> list[dict]:
    """One point per stored evaluation variant: gold mean (with its CI) against KL to the starting policy, with the
    evaluated variant's kind and key settings."""
    points = []
    store = Path(out_dir) / STORE
    for folder in sorted(store.iterdir()) if store.is_dir() else []:
        artifact = Artifact.read(folder)
        if artifact is None or not isinstance(artifact.output, EvaluationOutput):
            continue
        try:
            data = json.loads((folder / artifact.output.eval_file).read_text())
        except (OSError, ValueError):
            continue
        target = artifact.output.target
        kind, label, evaluated = "base model", "base", None
        if target != "base":
            upstream_fp = ((artifact.manifest.get("inputs") or {}).get("upstream") or {}).get(target, "")
            evaluated = Artifact.read(store / f"{target}-{upstream_fp[:12]}")
            kind = evaluated.kind if evaluated is not None else target
            label = variant_label(target, evaluated.manifest.get("config", {}) if evaluated is not None else {})
        points.append({"target": target, "kind": kind, "label": label, "kl": data["kl_mean"],
                       "gold": data["gold_mean"], "ci": data["gold_ci95"], "judge": data.get("judge"),
                       "repetition": data.get("repetition_share"), "evaluation": folder.name,
                       **_identity(evaluated or artifact)})
    return tell_apart(points)


def _identity(artifact: Artifact) -> dict:
    """What ``tell_apart`` may name of the variant an item shows: its settings (files by content, seeds left out: the
    label has the seed), its code's commit, its fingerprint."""
    config = seed_free_parts(artifact.manifest).get("config")
    return {"settings": flatten_settings(config) if isinstance(config, dict) else {},
            "commit": artifact.manifest.get("git_commit"), "variant": artifact.fingerprint[:8]}


def tell_apart(items: list[dict]) -> list[dict]:
    """Items (frontier points, training runs) whose labels collide are told apart by the settings that differ among
    them (with data files by content), else by the commit of their code ("ppo (KL target 10.0, code at 64532ad)": the
    same settings run by two versions of a stage), else by their variant's fingerprint."""
    def settings(item: dict, same: list[dict]) -> str | None:
        keys = differing_keys([other.get("settings", {}) for other in same])
        return ", ".join(f"{key} {item.get('settings', {}).get(key, '(unset)')}" for key in keys[:2]) or None

    for extra in (settings, lambda item, same: f"code at {item['commit'][:7]}" if item.get("commit") else None,
                  lambda item, same: f"variant {item['variant']}"):
        by_label: dict[str, list[dict]] = {}
        for item in items:
            by_label.setdefault(item["label"], []).append(item)
        for same in by_label.values():
            added = [extra(item, same) for item in same] if len(same) > 1 else []
            if len(set(added)) < 2:
                continue
            for item, text in zip(same, added):
                if text:
                    label = item["label"]
                    item["label"] = f"{label[:-1]}, {text})" if label.endswith(")") else f"{label} ({text})"
    return items


def variant_label(stage: str, config: dict) -> str:
    """The stage's name with the first two settings of LABEL_KEYS its config has (what tells sweep variants apart),
    and its seed where one is set (what tells a variant's seeds apart)."""
    settings = [f"{name} {_get(config, key)}" for key, name in LABEL_KEYS if _get(config, key) is not None][:2]
    if config.get("seed") is not None:
        settings.append(f"seed {config['seed']}")
    return stage + (f" ({', '.join(settings)})" if settings else "")


def overoptimisation_runs(out_dir: Path) -> list[dict]:
    """Every stored training run that logged the gold judge of its rollouts at each step (PPO's ``gold``): its label
    and its steps as (step, KL, reward-model score, gold), and the step where gold peaked."""
    runs = []
    store = Path(out_dir) / STORE
    for folder in sorted(store.iterdir()) if store.is_dir() else []:
        artifact = Artifact.read(folder)
        if artifact is None or isinstance(artifact.output, EvaluationOutput):
            continue
        history = logged_steps(folder)
        by_step = {row["step"]: row for row in history
                   if all(isinstance(row.get(k), (int, float)) for k in ("step", "kl", "score", "gold"))}
        if len(by_step) < 2:
            continue
        steps = [(s, by_step[s]["kl"], by_step[s]["score"], by_step[s]["gold"]) for s in sorted(by_step)]
        peak = max(steps, key=lambda row: row[3])
        runs.append({"label": variant_label(artifact.manifest.get("stage", folder.name),
                                            artifact.manifest.get("config") or {}),
                     "folder": folder.name, "steps": steps, "peak": peak,
                     **_identity(artifact)})
    return tell_apart(runs)


def overoptimisation_png(runs: list[dict]) -> bytes:
    """The reward model's score and the gold judge's, both on the step's own rollouts, against the KL along training:
    one line per run, a star where gold peaked. Gold falling while the score still rises is over-optimisation."""
    plt = _pyplot()
    fig, (proxy, gold) = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    every_kl = [row[1] for run in runs for row in run["steps"]]
    low, high = min(every_kl), max(every_kl)
    for i, run in enumerate(runs):
        colour = plt.get_cmap("tab10")(i % 10)
        kls = [row[1] for row in run["steps"]]
        proxy.plot(kls, [row[2] for row in run["steps"]], marker=".", color=colour, label=run["label"], alpha=0.8)
        gold.plot(kls, [row[3] for row in run["steps"]], marker=".", color=colour, label=run["label"], alpha=0.8)
        step, kl, _, best = run["peak"]
        gold.scatter([kl], [best], marker="*", s=160, color=colour, edgecolors="black", zorder=3)
        right_side = high > low and (kl - low) / (high - low) > 0.6  # the label would run off the axes
        gold.annotate(f"peak {best:.3f}, step {step}", (kl, best), textcoords="offset points",
                      xytext=(-8 if right_side else 8, 4), ha="right" if right_side else "left", fontsize=7)
    proxy.set_title("reward model's score of each step's rollouts", fontsize=9)
    gold.set_title("gold judge's score of the same rollouts (star: its peak)", fontsize=9)
    for ax in (proxy, gold):
        ax.set_xlabel("KL to the reference (nats per response, the step's rollouts)", fontsize=8)
        ax.grid(alpha=0.3)
    gold.legend(fontsize=7, loc="best")
    fig.suptitle("over-optimisation: proxy and gold along training", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _label_offsets(points: list[dict], width: float = 380.0, height: float = 270.0) -> list[float]:
    """Vertical offsets (points) for the labels of the frontier's points, so that labels of close variants (two DPO
    betas a hair apart) are stacked instead of printed over each other. Works in the axes' rough size in points."""
    kls, golds = [p["kl"] for p in points], [p["gold"] for p in points]
    x_span, y_span = (max(kls) - min(kls)) or 1.0, (max(golds) - min(golds)) or 1.0
    placed: list[tuple[float, float, float, float]] = []
    offsets = []
    for p in points:
        x = (p["kl"] - min(kls)) / x_span * width + 5
        y = (p["gold"] - min(golds)) / y_span * height
        box_width = 3.6 * len(p["label"])
        for offset in (4, -10, 16, -22, 28, -34, 40, -46):
            box = (x, x + box_width, y + offset, y + offset + 8)
            if not any(box[0] < b[1] and b[0] < box[1] and box[2] < b[3] and b[2] < box[3] for b in placed):
                break
        placed.append(box)
        offsets.append(offset)
    return offsets


def frontier_png(points: list[dict]) -> bytes:
    """Gold against KL, one marker shape per kind; each point filled by its repetition share (the share of
    continuations that repeat a content word 3+ times: gaming made visible), grey where an older evaluation did not
    measure it."""
    plt = _pyplot()
    from matplotlib import colors

    fig, ax = plt.subplots(figsize=(7.5, 5))
    kinds = sorted({p["kind"] for p in points})
    markers = "o^sDvP*X<>"
    shares = [p["repetition"] for p in points if p.get("repetition") is not None]
    scale = colors.Normalize(vmin=0.0, vmax=max(0.25, *shares) if shares else 0.25)
    cmap = plt.get_cmap("plasma")
    for i, kind in enumerate(kinds):
        mine = [p for p in points if p["kind"] == kind]
        ax.errorbar([p["kl"] for p in mine], [p["gold"] for p in mine],
                    yerr=[[p["gold"] - p["ci"][0] for p in mine], [p["ci"][1] - p["gold"] for p in mine]],
                    fmt="none", ecolor="0.55", capsize=3, zorder=1)
        fill = [cmap(scale(p["repetition"])) if p.get("repetition") is not None else "0.8" for p in mine]
        ax.scatter([p["kl"] for p in mine], [p["gold"] for p in mine], c=fill, marker=markers[i % len(markers)],
                   s=60, edgecolors="black", linewidths=0.6, label=kind, zorder=2)
    low, high = min(p["kl"] for p in points), max(p["kl"] for p in points)
    for p, offset in zip(points, _label_offsets(points)):
        right_side = high > low and (p["kl"] - low) / (high - low) > 0.6  # its label would run off the axes
        ax.annotate(p["label"], (p["kl"], p["gold"]), textcoords="offset points", xytext=(-5 if right_side else 5,
                    offset), ha="right" if right_side else "left", fontsize=7)
    if shares:
        bar = fig.colorbar(plt.cm.ScalarMappable(norm=scale, cmap=cmap), ax=ax)
        bar.set_label("repetition share (a content word 3+ times)", fontsize=8)
    judge = next((p["judge"] for p in points if p.get("judge")), "gold judge")
    ax.set_xlabel("KL to the starting policy (nats per completion)")
    ax.set_ylabel(f"gold score ({judge}), mean and 95% CI")
    ax.set_title("reward-KL frontier: every evaluated variant")
    ax.grid(alpha=0.3)
    # below the axes: inside, it covered the labels of the points in its corner
    legend = ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0.0, -0.12), ncol=min(len(kinds), 4),
                       frameon=False)
    for handle in legend.legend_handles:  # the legend names the marker shape; the fill is the colour bar's
        handle.set_facecolor("white")
    return _png(fig)


def kl_target(config: dict) -> float | None:
    """The KL a stage's controller holds (PPO's kl.target, GRPO/RLOO's beta_control.target), from the config its
    manifest recorded; None when its KL is not controlled to a target."""
    for key in ("kl.target", "beta_control.target"):
        value = _get(config, key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def curves_png(stage: str, history: list[dict], target: float | None = None) -> bytes | None:
    """The stage's logged curves; with ``target`` (see ``kl_target``) its KL curves show the target and the band
    20% either side, so that a reader sees whether the KL was held."""
    fig = curves_figure(stage, history, target)
    return None if fig is None else _png(fig)


def logged_steps(folder: Path) -> list[dict]:
    """Everything a stage logged: the live log the artifact keeps (it holds the evaluation after training, which the
    trainer's own log_history.json does not), else log_history.json."""
    live = folder / LIVE_LOG
    if live.is_file():
        rows = []
        for line in live.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:  # a line cut short by a crash
                continue
        return rows
    return json.loads((folder / LOG_HISTORY).read_text()) if (folder / LOG_HISTORY).is_file() else []


def _series(history: list[dict], key: str) -> list[tuple[float, float]]:
    """(step, value) of ``key``, one per step (a resumed stage logs its last steps again: the later value wins)."""
    by_step = {row["step"]: row[key] for row in history
               if isinstance(row.get(key), (int, float)) and not isinstance(row.get(key), bool)
               and row.get("step") is not None}
    return sorted(by_step.items())


def curves_figure(stage: str, history: list[dict], target: float | None = None):
    """One panel per logged quantity that has a curve (two points or more, training or held-out); a held-out value
    logged once (the evaluation at the end) is a marker on its quantity's panel, never a panel of its own."""
    drawn = {key: (_series(history, key), _series(history, f"eval_{key}")) for key in CURVES}
    keys = [k for k, (train, held_out) in drawn.items() if len(train) >= 2 or len(held_out) >= 2]
    if not keys:
        return None
    plt = _pyplot()
    columns = min(3, len(keys))
    rows = (len(keys) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 2.6 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        train, held_out = drawn[key]
        if train:
            ax.plot([p[0] for p in train], [p[1] for p in train], marker=".", label="training")
        if held_out:
            ax.plot([p[0] for p in held_out], [p[1] for p in held_out], marker="o", linestyle="--" if
                    len(held_out) > 1 else "none", color="tab:red", label=f"held-out {held_out[-1][1]:.3g}")
        if target is not None and key in KL_CURVES:
            ax.axhspan(target * (1 - TARGET_BAND), target * (1 + TARGET_BAND), color="tab:green", alpha=0.15,
                       label=f"target {target:g} ±{TARGET_BAND:.0%}")
            ax.axhline(target, color="tab:green", linestyle="--", linewidth=1)
        banded = target is not None and key in KL_CURVES
        if held_out or banded:
            ax.legend(fontsize=7, loc="best")
        _flat_stays_flat(ax, [] if banded else [p[1] for p in train + held_out])  # a band sets its own scale
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle(f"{stage}: training log", fontsize=10)
    fig.tight_layout()
    return fig


def _flat_stays_flat(ax, values: list[float]) -> None:
    """A quantity that barely moves (an entropy 6.2237-6.2248) is drawn on an axis a few per cent of its size wide,
    so it looks as flat as it is, and tick labels show values, not an offset."""
    ax.ticklabel_format(axis="y", useOffset=False)
    if not values:
        return
    low, high = min(values), max(values)
    size = max(abs(low), abs(high))
    if size > 0 and high - low < 0.01 * size:
        middle, half = (low + high) / 2, 0.05 * size
        ax.set_ylim(middle - half, middle + half)


def _img(name: str, data: bytes, alt: str) -> str:
    encoded = base64.b64encode(data).decode()
    return f'<figure><img src="data:image/png;base64,{encoded}" alt="{html.escape(alt)}" data-file="{name}">' \
           f"<figcaption>{html.escape(alt)} ({name})</figcaption></figure>"


def render(plan: Plan, out: Path) -> Path:
    """Write ``out`` (HTML) and its PNGs beside it; returns ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    images: list[tuple[str, bytes, str]] = []
    points = frontier_points(plan.out_dir)
    if points:
        images.append((f"{out.stem}-frontier.png", frontier_png(points), "reward-KL frontier"))
    runs = overoptimisation_runs(plan.out_dir)
    if runs:
        images.append((f"{out.stem}-overoptimisation.png", overoptimisation_png(runs), "proxy and gold against KL"))
    curves = []
    for stage in plan.stages:
        folder = shown_folder(plan, stage)
        artifact = Artifact.read(folder)
        history = logged_steps(folder) if artifact is not None else []
        if not history:
            continue
        png = curves_png(stage.name, history, kl_target(artifact.manifest.get("config") or {}))
        if png is not None:
            curves.append((f"{out.stem}-{stage.name}.png", png, f"{stage.name} ({stage.kind}) training curves"))
    images += curves
    for name, data, _ in images:
        (out.parent / name).write_bytes(data)

    rows = report_rows(plan)
    parts = ["<!doctype html><html><head><meta charset='utf-8'>",
             f"<title>{html.escape(plan.recipe.name)}: alignment pipeline report</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px;"
             "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
             "figure{margin:1.5em 0}figcaption{color:#666;font-size:13px}.sample{text-align:left;max-width:700px}"
             "</style></head><body>",
             f"<h1>Recipe {html.escape(plan.recipe.name)}</h1>",
             f"<p>Output folder {html.escape(str(plan.out_dir))}; written "
             f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.</p>"]
    if rows:
        parts += [f"<h2>Gold evaluation</h2><p>Judge <code>{html.escape(str(rows[0].get('judge')))}</code>, "
                  f"n={rows[0].get('n')}; KL to each stage's starting policy; 95% bootstrap intervals.</p>",
                  "<table><tr><th>target</th><th>kind</th><th>gold mean</th><th>95% CI</th><th>KL</th>"
                  "<th>distinct-1</th><th>distinct-2</th><th>repeats a word 3+ times</th><th>length</th></tr>"]
        for r in rows:
            parts.append(f"<tr><td>{html.escape(r['target'])}</td><td>{html.escape(r['kind'])}</td>"
                         f"<td>{r['gold_mean']:.3f}</td><td>[{r['gold_ci95'][0]:.3f}, {r['gold_ci95'][1]:.3f}]</td>"
                         f"<td>{r['kl_mean']:.2f}</td><td>{r['distinct_1']:.3f}</td><td>{r['distinct_2']:.3f}</td>"
                         f"<td>{share_text(r.get('repetition_share'))}</td><td>{r['mean_length']:.1f}</td></tr>")
        parts.append("</table>")
    if points:
        parts += ["<h2>Reward against KL</h2>", "<p>Every evaluated variant in the store (sweeps included): gold "
                  "score against the KL to the policy it started from.</p>", _img(*images[0])]
        parts += ["<table><tr><th>variant</th><th>kind</th><th>KL</th><th>gold mean</th><th>evaluation</th></tr>"]
        for p in sorted(points, key=lambda p: (p["kind"], p["kl"])):
            parts.append(f"<tr><td>{html.escape(p['label'])}</td><td>{html.escape(p['kind'])}</td>"
                         f"<td>{p['kl']:.2f}</td><td>{p['gold']:.3f}</td><td>{html.escape(p['evaluation'])}</td></tr>")
        parts.append("</table>")
    seed_rows = seed_lines(variants(plan.out_dir))
    if seed_rows:
        parts += ["<h2>Across seeds</h2>", "<p>Evaluations of variants that differ in their seed alone (run "
                  "--seeds): the mean over the seeds and its 95% t-interval, with the seeds' lowest and highest "
                  "value.</p>",
                  "<ul>", *(f"<li>{html.escape(line)}</li>" for line in seed_rows), "</ul>"]
    if runs:
        figure = next(image for image in images if image[0].endswith("overoptimisation.png"))
        parts += ["<h2>Over-optimisation</h2>", "<p>Each step's rollouts scored by the reward model the run optimises "
                  "and by the gold judge, against the KL at that step: where gold stops following the reward model, "
                  "the policy is gaming it.</p>", _img(*figure),
                  "<table><tr><th>run</th><th>steps</th><th>gold first</th><th>gold peak</th><th>at step</th>"
                  "<th>KL there</th><th>gold last</th><th>score last</th><th>folder</th></tr>"]
        for run in runs:
            first, last, (step, kl, _, best) = run["steps"][0], run["steps"][-1], run["peak"]
            parts.append(f"<tr><td>{html.escape(run['label'])}</td><td>{len(run['steps'])}</td><td>{first[3]:.3f}</td>"
                         f"<td>{best:.3f}</td><td>{step}</td><td>{kl:.2f}</td><td>{last[3]:.3f}</td>"
                         f"<td>{last[2]:.3f}</td><td>{html.escape(run['folder'])}</td></tr>")
        parts.append("</table>")
    if curves:
        parts.append("<h2>Training curves</h2>")
        parts += [_img(*image) for image in curves]
    samples = []
    for r in rows:
        path = shown_folder(plan, plan[r["node"]]) / "eval_samples.jsonl"
        if path.is_file():
            for line in path.read_text().splitlines()[:4]:
                row = json.loads(line)
                samples.append((r["target"], row))
    if samples:
        parts += ["<h2>Sample continuations</h2>", "<table><tr><th>policy</th><th>prompt</th><th>continuation</th>"
                  "<th>gold</th></tr>"]
        for target, row in samples:
            parts.append(f"<tr><td>{html.escape(target)}</td><td class='sample'>{html.escape(str(row['prompt']))}"
                         f"</td><td class='sample'>{html.escape(str(row['completion']))}</td>"
                         f"<td>{row['gold']:.3f}</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    out.write_text("\n".join(parts), encoding="utf-8")
    return out

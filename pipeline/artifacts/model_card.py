"""Model cards: a README.md with the Hub's YAML front matter that says what an artifact is (its lineage of stages and
their settings, the data cards with licences and citations, training metrics, the gold evaluation with confidence
intervals and KL, library versions, the recipe excerpt that made it, and what to watch out for).

Written into every stage folder when the stage commits, and again by ``export`` with the evaluations that ran since.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from .artifact import MANIFEST, Artifact
from .outputs import EvaluationOutput

BUILTIN_BASES = {
    "builtin:smollm2-135m-instruct": {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "license": "apache-2.0"},
    "builtin:tiny-llama": {"base_model": None, "license": "apache-2.0"},
}
"""What the Hub should know about the builtin models: the upstream model id and its licence."""

KEY_SETTINGS = ("lora", "beta", "loss_type", "kl", "max_length", "ppo_epochs", "rollout_batch_size", "num_generations",
                "k", "judge", "pairs", "min_margin", "use_margin")
TRAIN_SETTINGS = ("max_steps", "epochs", "learning_rate", "batch_size", "gradient_accumulation_steps")
HEADLINE = ("train_loss", "eval_loss", "global_step", "eval_accuracy", "eval_rewards/accuracies", "score_first",
            "score_last", "kl_last", "kl_coef_final", "reward_first", "reward_last", "pairs")


def _store(artifact_path: Path) -> Path:
    """The folder holding every stored variant (the artifact's own folder's parent, through the stage link)."""
    return Path(artifact_path).resolve().parent


def _ancestor(artifact_path: Path, ancestor: dict) -> Artifact | None:
    store = _store(artifact_path)
    return Artifact.read(store / f"{ancestor['stage']}-{ancestor['fingerprint'][:12]}") or \
        Artifact.read(store / ancestor["stage"])


def evaluations_of(artifact: Artifact) -> list[dict]:
    """eval.json of the evaluations of exactly this variant, and of the base model with the same settings, found
    among the stored variants beside it."""
    own, bases = [], []
    stage = artifact.manifest.get("stage", artifact.path.name)
    for manifest_path in sorted(_store(artifact.path).glob(f"*/{MANIFEST}")):
        other = Artifact.read(manifest_path.parent)
        if other is None or not isinstance(other.output, EvaluationOutput):
            continue
        upstream = (other.manifest.get("inputs") or {}).get("upstream") or {}
        if other.output.target == stage and upstream.get(stage) == artifact.fingerprint:
            own.append(other)
        elif other.output.target == "base":
            bases.append(other)
    settings = lambda a: {k: v for k, v in (a.manifest.get("config") or {}).items() if k != "from"}  # noqa: E731
    chosen = own[-1:]
    if chosen:
        matching = [b for b in bases if settings(b) == settings(chosen[0])]
        chosen = (matching or bases)[-1:] + chosen
    rows = []
    for other in chosen:
        try:
            data = json.loads((other.path / other.output.eval_file).read_text())
        except (OSError, ValueError):
            continue
        samples = other.path / other.output.samples_file
        repetition = data.get("repetition_share")
        rows.append({**data, "target": other.output.target,
                     "repetition": repetition if repetition is not None else _repetition_share(samples)})
    return rows


def _repetition_share(samples: Path) -> float | None:
    """Share of completions that repeat a content word three or more times (a sign of reward gaming), from the
    samples of evaluations written before eval.json carried it."""
    from ..evaluation.metrics import repetition_share

    try:
        texts = [json.loads(line)["completion"] for line in samples.read_text().splitlines() if line.strip()]
    except (OSError, ValueError, KeyError):
        return None
    return repetition_share(texts) if texts else None


def _settings(config: dict) -> str:
    shown = []
    for key in KEY_SETTINGS:
        value = config.get(key)
        if value is None:
            continue
        if key == "lora" and isinstance(value, dict):
            value = f"r={value.get('r')}" + (f", layers {value['layers'][0]}..{value['layers'][-1]}"
                                              if value.get("layers") else "")
        elif key == "kl" and isinstance(value, dict):
            value = f"coef {value.get('coef')}" + (f", target {value['target']}" if value.get("target") else "")
        shown.append(f"{key} {value}")
    train = config.get("train") or {}
    shown += [f"{key} {train[key]}" for key in TRAIN_SETTINGS if train.get(key) not in (None, -1)]
    if config.get("lora", "absent") is None:
        shown.insert(0, "full fine-tuning")
    return "; ".join(shown) or "-"


def _data_cards(manifest: dict) -> list[dict]:
    from ..config.problems import read_yaml_mapping

    cards = []
    for path in (manifest.get("inputs") or {}).get("data") or {}:
        if not path.endswith((".yaml", ".yml")) or not Path(path).is_file():
            continue
        try:
            card = read_yaml_mapping(path, "data card", "")
        except Exception:  # a card that no longer reads is left out of the model card, not an error
            continue
        cards.append({"name": card.get("name", Path(path).stem), "license": card.get("license", "?"),
                      "citation": " ".join(str(card.get("citation") or "").split()),
                      "description": " ".join(str(card.get("description") or "").split())})
    return cards


def render(artifact_path: Path, manifest: dict, metrics: dict, evaluations: list[dict] | None = None,
           name: str | None = None) -> str:
    """The README.md of an artifact folder (or of its export)."""
    kind = manifest.get("kind", "?")
    stage = manifest.get("stage", artifact_path.name)
    recipe_name = manifest.get("recipe", "?")
    config = manifest.get("config") or {}
    model_inputs = (manifest.get("inputs") or {}).get("model") or {}
    source = (manifest.get("fingerprint_parts") or {}).get("model", {}).get("source") or model_inputs.get("source")
    builtin = BUILTIN_BASES.get(str(source), {})
    cards = _data_cards(manifest)
    for ancestor in manifest.get("lineage") or []:
        other = _ancestor(artifact_path, ancestor)
        if other is not None:
            cards += [c for c in _data_cards(other.manifest) if c["name"] not in {x["name"] for x in cards}]
    evaluations = evaluations or []
    own = next((e for e in evaluations if e["target"] == stage), None)

    front: dict = {"library_name": "peft" if (artifact_path / "adapter_config.json").exists() else "transformers",
                   "tags": ["alignment-pipeline", kind, *(["lora"] if config.get("lora") else [])]}
    if builtin.get("base_model"):
        front["base_model"] = builtin["base_model"]
    licences = sorted({builtin.get("license") or "unknown", *[c["license"].lower() for c in cards]})
    front["license"] = licences[0] if len(licences) == 1 else "other"
    if cards:
        front["datasets"] = [c["name"] for c in cards]
    if own is not None:
        front["model-index"] = [{"name": name or f"{recipe_name}-{stage}", "results": [{
            "task": {"type": "text-generation"},
            "dataset": {"name": "held-out evaluation prompts", "type": "custom"},
            "metrics": [
                {"type": "gold_mean", "value": round(own["gold_mean"], 4),
                 "name": f"gold judge {own.get('judge')} mean (95% CI {own['gold_ci95'][0]:.3f} to "
                         f"{own['gold_ci95'][1]:.3f})"},
                {"type": "kl", "value": round(own["kl_mean"], 4), "name": "KL to the starting policy (nats)"},
            ]}]}]
    what = " ".join(str(manifest.get("description") or f"The artifact of a {kind} stage.").split())
    lines = ["---", yaml.safe_dump(front, sort_keys=False, width=110).strip(), "---", "",
             f"# {name or f'{recipe_name} / {stage}'}", "",
             f"Made by stage `{stage}` (kind `{kind}`) of recipe `{recipe_name}` of the alignment pipeline"
             + (f", starting from {builtin['base_model']}" if builtin.get("base_model") else
                f", starting from `{source}`" if source else "") + f". {what}", ""]

    lines += ["## Lineage", "", "| stage | kind | settings |", "|---|---|---|"]
    for ancestor in reversed(manifest.get("lineage") or []):
        other = _ancestor(artifact_path, ancestor)
        settings = _settings(other.manifest.get("config") or {}) if other is not None else "-"
        lines.append(f"| {ancestor['stage']} | {ancestor['kind']} | {settings} |")
    lines += [f"| **{stage}** | {kind} | {_settings(config)} |", ""]

    if cards:
        lines += ["## Data", ""]
        for card in cards:
            lines.append(f"- **{card['name']}** ({card['license']}): {card['description'][:300]}"
                         + (f" Cite: {card['citation']}" if card["citation"] else ""))
        lines.append("")

    shown = {k: metrics[k] for k in HEADLINE if k in metrics}
    if shown:
        lines += ["## Training", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in shown.items()]
        lines.append("")

    lines += ["## Evaluation", ""]
    if evaluations:
        first = evaluations[0]
        lines += [f"Gold judge `{first.get('judge')}` on {first.get('n')} held-out prompts; KL to each policy's "
                  "starting point, from the samples' token log-probabilities; 95% bootstrap intervals.", "",
                  "| model | gold mean | 95% CI | KL | distinct-2 | repeats a word 3+ times |",
                  "|---|---|---|---|---|---|"]
        for row in evaluations:
            label = "base model" if row["target"] == "base" else row["target"]
            repetition = f"{row['repetition']:.0%}" if row.get("repetition") is not None else "-"
            lines.append(f"| {label} | {row['gold_mean']:.3f} | [{row['gold_ci95'][0]:.3f}, {row['gold_ci95'][1]:.3f}] "
                         f"| {row['kl_mean']:.2f} | {row['distinct_2']:.3f} | {repetition} |")
        lines.append("")
    else:
        lines += ["Not evaluated yet: the recipe's `evaluate:` section writes eval-<stage>/ beside this folder "
                  "(`python -m pipeline report RECIPE` prints the table; `export` puts it into the card).", ""]

    produces = manifest.get("produces")
    lines += ["## Use", "", "```python"]
    if (artifact_path / "adapter_config.json").exists() and produces == "policy":
        lines += ["from peft import AutoPeftModelForCausalLM", "from transformers import AutoTokenizer",
                  "model = AutoPeftModelForCausalLM.from_pretrained(FOLDER)  # the adapter and the base it names"]
    elif produces == "reward_model":
        lines += ["from transformers import AutoModelForSequenceClassification, AutoTokenizer",
                  "model = AutoModelForSequenceClassification.from_pretrained(FOLDER)  # reward = logits[0, 0]"]
    else:
        lines += ["from transformers import AutoModelForCausalLM, AutoTokenizer",
                  "model = AutoModelForCausalLM.from_pretrained(FOLDER)"]
    lines += ["tokenizer = AutoTokenizer.from_pretrained(FOLDER)  # with the chat template it was trained with",
              "```", ""]

    lines += ["## Limitations", ""]
    lines.append("- Trained and evaluated on the data above only; the gold judge is itself a model of what is good "
                 "and can be gamed, so read its score next to the KL and the samples.")
    if own is not None and own.get("repetition") is not None and own["repetition"] > 0.05:
        lines.append(f"- {own['repetition']:.0%} of the evaluated samples repeat a word three or more times (reward "
                     "gaming): see eval_samples.jsonl of the evaluation.")
    if produces == "policy" and {"reward_model", "preferences"} & set((manifest.get("upstream") or {}).values()):
        lines.append("- Optimised against a learned reward or preference signal: expect it to exploit that "
                     "signal's blind spots.")
    lines.append("")

    packages = manifest.get("packages") or {}
    lines += ["## Made with", "",
              ", ".join(f"{k} {v}" for k, v in packages.items() if v) + f"; git commit {manifest.get('git_commit')}",
              "", "Stage settings (the recipe excerpt, resolved):", "", "```yaml",
              yaml.safe_dump({stage: config}, sort_keys=False, width=110).strip(), "```", ""]
    return "\n".join(lines)

"""The `preferences` stage: the upstream policy samples k completions per prompt, a judge scores them, and clear
winners and losers become prompt/chosen/rejected pairs, written with their own data card."""

from __future__ import annotations

import json
import logging

import yaml

from pipeline.contract import PreferencesOutput, StageContext, StageResult
from pipeline.data.cards import load_card
from pipeline.data.loading import card_prompts
from pipeline.data.pairs import PairCounts, build_pairs
from pipeline.data.rows import rows_sha256
from pipeline.errors import PipelineError
from pipeline.evaluation.generation import generate_sharded
from pipeline.evaluation.judges import make_judge
from pipeline.training.distributed import to_process_device

from .preferences_config import PreferencesStageConfig

log = logging.getLogger("pipeline")

PAIRS_FILE = "pairs.jsonl"
CARD_FILE = "card.yaml"


def run(ctx: StageContext) -> StageResult:
    config: PreferencesStageConfig = ctx.config
    prompts = card_prompts(config.prompts, "train", config.n_prompts)
    # Every process samples its share of the batches (the completions one process would sample); the main one
    # gathers them, judges and writes the pairs.
    source = ctx.policy_source()
    tokenizer, model = source.tokenizer(), to_process_device(source.load())
    repeated = [p for p in prompts for _ in range(config.k)]
    samples = generate_sharded(model, tokenizer, repeated, config.sampling, ctx.seed, f"{ctx.name}: sampling",
                               ctx.process_index, ctx.num_processes)
    del model
    if not ctx.is_main:
        return StageResult(PreferencesOutput(CARD_FILE))
    judge_spec = config.judge
    if judge_spec == "reward":
        judge_spec = f"reward:{ctx.upstream_of('reward_model').path}"
    judge = make_judge(judge_spec)
    scores = judge.score(repeated, [s.completion for s in samples])

    counts = PairCounts()
    pairs: list[dict] = []
    for i, prompt in enumerate(prompts):
        group = [(samples[j].completion, scores[j]) for j in range(i * config.k, (i + 1) * config.k)]
        for pair in build_pairs(prompt, group, config.pairs, config.min_margin, counts):
            pairs.append({"prompt": [{"role": "user", "content": pair["prompt"]}],
                          "chosen": [{"role": "assistant", "content": pair["chosen"]}],
                          "rejected": [{"role": "assistant", "content": pair["rejected"]}],
                          "margin": pair["margin"], "chosen_score": pair["chosen_score"],
                          "rejected_score": pair["rejected_score"]})
    if not pairs:
        raise PipelineError(f"stage '{ctx.name}': no pair cleared min_margin={config.min_margin} "
                            f"({counts.near_ties} near-ties, {counts.identical} identical); lower it or raise k")
    (ctx.out_dir / PAIRS_FILE).write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
    with (ctx.out_dir / "samples.jsonl").open("w") as handle:
        for sample, score in zip(samples, scores):
            handle.write(json.dumps({"prompt": sample.prompt, "completion": sample.completion, "score": score,
                                     "eos": sample.eos}, ensure_ascii=False) + "\n")
    _write_card(ctx, config, pairs, judge_spec)
    metrics = {**counts.as_metrics(), "samples": len(samples), "judge": judge_spec,
               "mean_score": sum(scores) / len(scores)}
    log.info("[%s] %d pairs from %d prompts x %d samples (%d near-ties, %d identical, %d with an empty completion "
             "dropped)", ctx.name, counts.kept, counts.prompts, config.k, counts.near_ties, counts.identical,
             counts.empty)
    return StageResult(PreferencesOutput(CARD_FILE), metrics)


def _write_card(ctx: StageContext, config: PreferencesStageConfig, pairs: list[dict], judge: str) -> None:
    """A data card for the pairs, so any stage or tool reads them like every other dataset."""
    canonical = [{k: p[k] for k in ("prompt", "chosen", "rejected", "margin")} for p in pairs]
    card = {
        "name": f"{ctx.recipe.name}-{ctx.name}",
        "description": f"Preference pairs made by stage '{ctx.name}' of recipe '{ctx.recipe.name}': {config.k} "
                       f"samples per prompt from the upstream policy, judged by {judge}, {config.pairs} pairs with "
                       f"a score margin of at least {config.min_margin}. Lineage: manifest.json beside this card.",
        "license": "same as the prompts' card: " + load_card(config.prompts).license,
        "source": {"path": PAIRS_FILE},  # beside the card: the artifact folder can move
        "format": "preference",
        "splits": {"eval_fraction": config.eval_fraction, "seed": ctx.seed},
        "rows": len(pairs),
        "sha256": rows_sha256(canonical),
    }
    (ctx.out_dir / CARD_FILE).write_text(yaml.safe_dump(card, sort_keys=False, width=110))

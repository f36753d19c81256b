"""The `evaluate` stage: gold evaluation of the upstream policy (or of the base model) on held-out prompts.

Every process samples its share of the prompt batches (the same batches and seeds as one process would use); the
main process gathers them, judges and writes eval.json and eval_samples.jsonl. The KL reference is the policy the
evaluated stage started from (none for the base model: KL 0).
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.contract import EvaluationOutput, StageContext, StageResult
from pipeline.contract.context import artifact_source, base_source
from pipeline.data.loading import card_prompts
from pipeline.evaluation.evaluate import evaluate, write_samples
from pipeline.store.atomic import write_json
from pipeline.training.distributed import to_process_device

from .evaluate_config import EvaluateStageConfig

log = logging.getLogger("pipeline")
BASE = "base"


def run(ctx: StageContext) -> StageResult:
    config: EvaluateStageConfig = ctx.config
    upstream = ctx.upstream_of("policy")
    target = next((n for n, a in ctx.upstream.items() if a is upstream), BASE) if upstream is not None else BASE
    output = EvaluationOutput(target)
    if upstream is None:
        policy, reference = base_source(ctx.recipe, ctx.base_model_path), None
    else:
        policy = artifact_source(ctx.recipe, upstream.path)
        start = upstream.policy.start
        reference = artifact_source(ctx.recipe, Path(start.resolve(upstream.path))) if start.is_artifact \
            else base_source(ctx.recipe, ctx.base_model_path)
    prompts = card_prompts(config.prompts, "eval", config.n)
    if ctx.is_main:
        log.info("[%s] gold evaluation of %s on %d prompts (judge %s%s)", ctx.name, target, len(prompts), config.judge,
                 f"; sampling shared by {ctx.num_processes} processes" if ctx.num_processes > 1 else "")
    tokenizer = policy.tokenizer()
    policy_model = to_process_device(policy.load())
    reference_model = to_process_device(reference.load()) if reference is not None else None
    reward_paths = {name: str(ctx.upstream[name].path) for name in config.judge_stages(ctx.upstream)}
    metrics, samples = evaluate(policy_model, reference_model, tokenizer, prompts, config, reward_paths,
                                rank=ctx.process_index, world=ctx.num_processes)
    if not ctx.is_main:
        return StageResult(output)
    write_samples(ctx.out_dir / output.samples_file, samples)
    write_json(ctx.out_dir / output.eval_file, {"target": target, **metrics})
    log.info("[%s] gold_mean %.3f [%.3f, %.3f], kl %.3f, repeats a word 3+ times %.0f%%", ctx.name,
             metrics["gold_mean"], *metrics["gold_ci95"], metrics["kl_mean"], 100 * metrics["repetition_share"])
    for name, scored in metrics.get("judges", {}).items():
        log.info("[%s] judge %s: %.3f [%.3f, %.3f]", ctx.name, name, scored["mean"], *scored["ci95"])
    return StageResult(output, metrics)

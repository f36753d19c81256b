#!/usr/bin/env bash
# The GPU check: one command for a machine with one NVIDIA GPU and no network, about 8 minutes of wall time.
#
#   bash bench/gpu_check.sh [--wheels DIR] [--out DIR]   # on the GPU machine
#   bash bench/gpu_check.sh --dry-run [--out DIR]        # anywhere: every step on CPU, tiny sizes (CI runs this)
#
# 1. installs the wheels of DIR (default .whl/core; made by bench/gpu_wheels.sh where PyPI is reachable) into a
#    target folder put first on PYTHONPATH, and checks that every package the pipeline needs imports;
# 2. runs the tests marked `gpu` (tests/gpu: bf16 in every stage kind, gradient checkpointing with LoRA, QLoRA on
#    CUDA when bitsandbytes is there, PPO's reference drift, generation on the GPU, DeepSpeed ZeRO-2/3 in one
#    process); with --dry-run they are collected and skipped (no CUDA);
# 3. runs the tiny chain under launch/gpu_1.yaml, then sft/dpo/ppo under launch/gpu_zero3.yaml with one process
#    (--dry-run: validates and plans both launches instead);
# 4. runs bench/gpu_bench.py (tokens/s, peak GPU memory, MFU against the measured bf16 matmul rate, our step time
#    over plain TRL's for SFT and DPO) on a locally built ~0.5B Llama (--dry-run: the tiny model on CPU);
# 5. writes OUT/gpu_check.json (each step: command, exit status, seconds) and OUT/gpu_check.md (the steps and the
#    bench table), and prints the summary. It exits non-zero when a step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DRY=0
WHEELS=.whl/core
OUT=${OUT:-/tmp/gpu-check}
PY=${PY:-python3}
[ -x .venv/bin/python ] && [ "${PY}" = python3 ] && PY=.venv/bin/python

while [ $# -gt 0 ]; do
    case $1 in
        --dry-run) DRY=1 ;;
        --wheels) WHEELS=$2; shift ;;
        --out) OUT=$2; shift ;;
        -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
mkdir -p "$OUT"
STEPS="$OUT/steps.jsonl"
: > "$STEPS"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 TRL_EXPERIMENTAL_SILENCE=1

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to OUT/NAME.log, record the outcome
    local name=$1 limit=$2; shift 2
    local started=$SECONDS
    echo "== $name: $*"
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    local took=$(( SECONDS - started ))
    "$PY" -c 'import json, sys; print(json.dumps({"step": sys.argv[1], "rc": int(sys.argv[2]), "seconds": int(sys.argv[3]),
              "command": sys.argv[4:]}))' "$name" "$rc" "$took" "$@" >> "$STEPS"
    if [ "$rc" -eq 0 ]; then echo "   ok ($took s)"; else echo "   FAILED (exit $rc, $took s): see $OUT/$name.log"; tail -5 "$OUT/$name.log"; fi
    return 0
}

# 1. wheels
shopt -s nullglob
wheels=("$WHEELS"/*.whl)
if [ ${#wheels[@]} -gt 0 ]; then
    echo "== wheels: ${#wheels[@]} in $WHEELS"
    if [ $DRY = 1 ]; then
        printf '   %s\n' "${wheels[@]##*/}"
    else
        SITE=${SITE:-/tmp/gpu-site}
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}" \
            || { echo "installing the wheels of $WHEELS failed" >&2; exit 2; }
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    fi
elif [ $DRY = 1 ]; then
    echo "== wheels: none in $WHEELS; the packages installed here are used"
else
    echo "no wheels in $WHEELS: run bench/gpu_wheels.sh where PyPI is reachable and carry the folder" >&2
    exit 2
fi
export PYTHONPATH="$ROOT:$ROOT/tests${PYTHONPATH:+:$PYTHONPATH}"
step imports 120 "$PY" -c "import torch, transformers, trl, peft, accelerate, datasets, pydantic, deepspeed, yaml, safetensors
print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')
print('transformers', transformers.__version__, 'trl', trl.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__, 'deepspeed', deepspeed.__version__)"

# 2. the gpu tests (skipped without CUDA: the dry run checks that they are collected)
step gpu-tests 300 "$PY" -m pytest -q -m gpu tests/gpu -p no:cacheprovider -rs

# 3. the tiny chain on one GPU, and ZeRO-3 with one process
if [ $DRY = 1 ]; then
    step launch-gpu1 120 "$PY" -m pipeline validate recipes/tiny.yaml --launch launch/gpu_1.yaml
    step launch-zero3 120 "$PY" -m pipeline validate recipes/tiny.yaml --launch launch/gpu_zero3.yaml
    step plan-zero3 120 "$PY" -m pipeline plan recipes/tiny.yaml --output-dir "$OUT/tiny-zero3" --only sft \
        --only preferences --only reward --only dpo --only ppo --set evaluate=null
else
    step chain-gpu1 150 "$PY" -m accelerate.commands.launch --config_file launch/gpu_1.yaml -m pipeline run \
        recipes/tiny.yaml --output-dir "$OUT/tiny-gpu1"
    step chain-zero3 150 "$PY" -m accelerate.commands.launch --config_file launch/gpu_zero3.yaml --num_processes 1 \
        -m pipeline run recipes/tiny.yaml --output-dir "$OUT/tiny-zero3" --only sft --only preferences \
        --only reward --only dpo --only ppo --set evaluate=null
fi

# 4. the figures
if [ $DRY = 1 ]; then
    step bench 300 "$PY" bench/gpu_bench.py --out "$OUT/bench" --dry-run
else
    step bench 240 "$PY" bench/gpu_bench.py --out "$OUT/bench"
fi

# 5. the summary
"$PY" - "$OUT" "$DRY" <<'EOF'
import json, sys
from pathlib import Path
out, dry = Path(sys.argv[1]), sys.argv[2] == "1"
steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
bench = out / "bench" / "gpu_bench.md"
summary = {"dry_run": dry, "steps": steps, "failed": [s["step"] for s in steps if s["rc"] != 0]}
if (out / "bench" / "gpu_bench.json").exists():
    summary["bench"] = json.loads((out / "bench" / "gpu_bench.json").read_text())
(out / "gpu_check.json").write_text(json.dumps(summary, indent=2))
lines = [f"# GPU check{' (dry run)' if dry else ''}", "", "| step | exit | seconds |", "|---|---|---|"]
lines += [f"| {s['step']} | {s['rc']} | {s['seconds']} |" for s in steps]
if bench.exists():
    lines += ["", bench.read_text()]
(out / "gpu_check.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
print(f"\nwritten: {out / 'gpu_check.json'}, {out / 'gpu_check.md'}")
sys.exit(1 if summary["failed"] else 0)
EOF

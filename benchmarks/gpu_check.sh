#!/usr/bin/env bash
# The stage cores on one GPU at Stable Diffusion 1.5 size, in one prepared run of at most
# BUDGET_S seconds (520: under 9 minutes with the summary; 900 with SMOKE=1); no downloads:
# `tiny:sd15-size` is SD 1.5's architecture with random weights, built on the spot.
#
#   bash benchmarks/gpu_check.sh                  # on a CUDA box with torch, diffusers, peft...
#   SMOKE=1 bash benchmarks/gpu_check.sh          # CPU: the same commands on tiny:sd
#
# Where the box lacks diffusers / pydantic, put their wheels (and their missing dependencies)
# in .whl/; they are installed to /tmp/site first. Each check writes $OUT/<check>.log and
# $OUT/<check>.json (OUT defaults to /tmp/selma-gpu-check) and a line of $OUT/checks.jsonl
# (exit code, seconds, time limit). Each check has its own time limit, cut to what is left of
# BUDGET_S, and a failure does not stop the next. serve_http (the request through Ray Serve
# over HTTP) runs only where Ray and httpx import. At the end benchmarks/gpu_summary.py writes
# summary.json to $OUT and to $RESULTS/<date>-<gpu>/ with the logs (RESULTS: benchmarks/results,
# or $OUT/results with SMOKE=1). Through a remote runner that only returns $OUT, pass
# RESULTS=$OUT/results and copy that folder into benchmarks/results/ afterwards.
# PEAK_TFLOPS overrides the table of device peaks (the MFU keys are null on a CPU without it).
# The checks run most wanted first, so a run out of BUDGET_S loses the last ones; ONLY="name
# name..." runs just those (e.g. a second run for the checks the first had no time left for).
set -u
START=$SECONDS
OUT=${OUT:-/tmp/selma-gpu-check}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH="${PWD}${PYTHONPATH:+:$PYTHONPATH}"
if ! python3 -c "import diffusers, pydantic" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="$PWD:/tmp/site"
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 SELMA_RAY_CACHE=${SELMA_RAY_CACHE:-/tmp/selma-cache}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}

if [ "${SMOKE:-0}" = 1 ]; then  # a shared CPU box can be slow: twice the limits, 15 minutes
  SMOKE_FLAG=--smoke RESULTS=${RESULTS:-$OUT/results} BUDGET_S=${BUDGET_S:-900} SCALE=2
  MODEL=tiny:sd RES=64 STEPS=4 UNET="--tiny" GPUS=0
  # inductor's code generation takes minutes of a small CPU: SMOKE_COMPILE=1 for the real one
  BACKEND=aot_eager && [ "${SMOKE_COMPILE:-0}" = 1 ] && BACKEND=inductor
  TRAIN="--batch-size 2 --gradient-accumulation 2 --steps 2 --warmup 1 --pairs 8 --rank 4"
  IMAGES="--n 6 --batch-size 2" INVARIANCE="--n 6 --batch-size 2 --steps 4 --task-splits 2 6"
  SERVE_N="--n 4 --warmup 1"
else
  SMOKE_FLAG="" RESULTS=${RESULTS:-benchmarks/results} BUDGET_S=${BUDGET_S:-520} SCALE=1
  MODEL=tiny:sd15-size RES=512 STEPS=30 UNET="" GPUS=1
  BACKEND=inductor
  # the sd15 preset's step at half its accumulation (same micro-batch, half the time a rung)
  TRAIN="--batch-size 16 --gradient-accumulation 2 --steps 5 --warmup 2 --pairs 32 --rank 128"
  IMAGES="--n 16 --batch-size 8" INVARIANCE="--n 16 --batch-size 8 --steps 20 --task-splits 8 24"
  SERVE_N="--n 6 --warmup 1"
fi
PEAK=${PEAK_TFLOPS:+--peak-tflops $PEAK_TFLOPS}
# the training step before [throughput] item 0 (the ladder's first rung) and after it
TRAIN_BEFORE="--mixed-precision fp16 --gradient-checkpointing --no-fused-optimizer"
TRAIN_AFTER="--mixed-precision bf16 --channels-last"

log_check() {  # name, exit code (or null), seconds, limit, skipped reason (optional)
  local skipped=${5:+, \"skipped\": \"$5\"}
  printf '{"check": "%s", "exit": %s, "seconds": %s, "limit_s": %s%s}\n' \
    "$1" "$2" "$3" "$4" "$skipped" >>"$OUT/checks.jsonl"
}
check() {  # name, time limit (s), command...
  local name=$1 limit=$(($2 * SCALE))
  shift 2
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then
    log_check "$name" null 0 "$limit" "not in ONLY"
    return
  fi
  local left=$((BUDGET_S - (SECONDS - START) - 10))
  if [ "$left" -lt 20 ]; then
    echo "=== $name: skipped, ${left} s left of BUDGET_S=$BUDGET_S"
    log_check "$name" null 0 "$limit" "no time left"
    return
  fi
  [ "$left" -lt "$limit" ] && limit=$left
  echo "=== $name (limit $limit s): $*"
  local start=$SECONDS
  timeout -k 10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "--- $name: exit $rc after $((SECONDS - start)) s"
  log_check "$name" "$rc" "$((SECONDS - start))" "$limit"
  grep -v -E "Loading|Writing model shards|it/s\]|^\s*$|warn|Warn" "$OUT/$name.log" | tail -n 16
}

rm -f "$OUT/checks.jsonl" "$OUT"/*.json
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
  --format=csv,noheader
python3 benchmarks/gpu_summary.py "$OUT" --record-env $SMOKE_FLAG

check build 90 python3 -c "from selma_ray.models import resolve_model as r; print(r('$MODEL'))"
check unet_bf16 60 python3 benchmarks/gpu_unet.py $UNET $PEAK --json "$OUT/unet_bf16.json"
check train_step 150 python3 benchmarks/train_step.py --model "$MODEL" --resolution "$RES" \
  $TRAIN $TRAIN_BEFORE --ladder $PEAK --json "$OUT/train_step.json"
check images 75 python3 benchmarks/images.py --model "$MODEL" --steps "$STEPS" \
  --resolution "$RES" $IMAGES --core --no-ray --no-bare --json "$OUT/images.json"
check batch_invariance 75 python3 benchmarks/batch_invariance.py --model "$MODEL" \
  --resolution "$RES" $INVARIANCE --no-exact --json "$OUT/batch_invariance.json"
check train_compiled 200 python3 benchmarks/train_step.py --model "$MODEL" --resolution "$RES" \
  $TRAIN $TRAIN_AFTER --compile --compile-backend "$BACKEND" --cached-only $PEAK \
  --json "$OUT/train_compiled.json"
check unet_compile 150 python3 benchmarks/gpu_unet.py $UNET $PEAK --compile \
  --compile-backend "$BACKEND" --json "$OUT/unet_compile.json"
check serve_switch 120 python3 benchmarks/serve.py --model "$MODEL" --size "$RES" \
  --steps "$STEPS" $SERVE_N --skip-serve --hotswap both --json "$OUT/serve_switch.json"
check images_channels_last 75 python3 benchmarks/images.py --model "$MODEL" --steps "$STEPS" \
  --resolution "$RES" $IMAGES --core --core-mode batched --no-ray --no-bare --channels-last \
  --json "$OUT/images_channels_last.json"
check images_fuse_qkv 75 python3 benchmarks/images.py --model "$MODEL" --steps "$STEPS" \
  --resolution "$RES" $IMAGES --core --core-mode batched --no-ray --no-bare --fuse-qkv \
  --json "$OUT/images_fuse_qkv.json"
check serve_switch_fused 120 python3 benchmarks/serve.py --model "$MODEL" --size "$RES" \
  --steps "$STEPS" $SERVE_N --skip-serve --hotswap on --fuse-qkv \
  --json "$OUT/serve_switch_fused.json"
if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" serve_http "* ]]; then
  log_check serve_http null 0 0 "not in ONLY"
elif python3 -c "import ray, httpx" 2>/dev/null; then
  check serve_http 100 python3 benchmarks/serve.py --model "$MODEL" --size "$RES" \
    --steps "$STEPS" $SERVE_N --skip-direct --concurrency 1 --num-gpus "$GPUS" \
    --json "$OUT/serve_http.json"
else
  log_check serve_http null 0 0 "ray or httpx not importable"
fi

echo "=== summary after $((SECONDS - START)) s"
python3 benchmarks/gpu_summary.py "$OUT" --results "$RESULTS" $PEAK

#!/usr/bin/env bash
# The stage cores on one GPU at Stable Diffusion 1.5 size, in one prepared run (no Ray, no
# downloads: `tiny:sd15-size` is SD 1.5's architecture with random weights, built on the spot).
#
#   bash benchmarks/gpu_check.sh                  # on a CUDA box with torch, diffusers, peft...
#   SMOKE=1 bash benchmarks/gpu_check.sh          # CPU: the same commands on tiny:sd, seconds
#
# Where the box lacks diffusers / pydantic, put their wheels (and their missing dependencies)
# in .whl/; they are installed to /tmp/site first. Logs go to $OUT (or
# /tmp/selma-gpu-check), one per check; each check has its own time limit and a failure does not
# stop the next. The order puts the slowest (torch.compile) last.
set -u
OUT=${OUT:-/tmp/selma-gpu-check}
mkdir -p "$OUT"
export PYTHONPATH="${PWD}${PYTHONPATH:+:$PYTHONPATH}"
if ! python3 -c "import diffusers, pydantic" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="$PWD:/tmp/site"
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 SELMA_RAY_CACHE=${SELMA_RAY_CACHE:-/tmp/selma-cache}

if [ "${SMOKE:-0}" = 1 ]; then
  MODEL=tiny:sd RES=64 STEPS=4 TRAIN_BATCH=2 RANK=4 N=4 UNET="--tiny" MP=no GC=""
else
  MODEL=tiny:sd15-size RES=512 STEPS=30 TRAIN_BATCH=16 RANK=128 N=16 UNET="" MP=fp16
  GC="--gradient-checkpointing"
fi

check() {
  local name=$1 limit=$2
  shift 2
  echo "=== $name: $*"
  local start=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  echo "--- $name: exit $? after $((SECONDS - start)) s"
  grep -v -E "Loading|Writing model shards|it/s\]|^\s*$|warn|Warn" "$OUT/$name.log" | tail -n 16
}

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
  --format=csv,noheader
python3 -c "import torch, diffusers, transformers, peft; print('torch', torch.__version__, \
'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'peft', \
peft.__version__, 'cuda', torch.cuda.is_available())"

check build 300 python3 -c "from selma_ray.models import resolve_model as r; print(r('$MODEL'))"
check unet_bf16 120 python3 benchmarks/gpu_unet.py $UNET --json
check unet_fp16 120 python3 benchmarks/gpu_unet.py $UNET --dtype fp16 --json
check train_step 240 python3 benchmarks/train_step.py --model "$MODEL" --resolution "$RES" \
  --batch-size "$TRAIN_BATCH" --steps 6 --warmup 2 --pairs 32 --mixed-precision "$MP" \
  --rank "$RANK" $GC
check images 240 python3 benchmarks/images.py --model "$MODEL" --n "$N" --steps "$STEPS" \
  --resolution "$RES" --batch-size 8 --core --no-ray
check batch_invariance 200 python3 benchmarks/batch_invariance.py --model "$MODEL" \
  --resolution "$RES" --steps 20 --n 8 --batch-size 4
check serve_switch 240 python3 benchmarks/serve.py --model "$MODEL" --size "$RES" \
  --steps "$STEPS" --n 8 --warmup 2 --skip-serve --hotswap both --json "$OUT/serve_switch.json"
check unet_compile 240 python3 benchmarks/gpu_unet.py $UNET --compile --json

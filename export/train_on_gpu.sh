#!/usr/bin/env bash
# Train deeplabv3plus on a bare GPU machine (PyTorch with CUDA, OpenCV, onnx; no data, no network)
# from the pieces export/pack_training_data.py makes.  Several runs share the GPU side by side, the
# machine's cores split between their batch-making workers; each ends by its --time-budget-s.
#
#   export/train_on_gpu.sh PIECES_DIR SECONDS NAME 'train_deeplab args' [NAME 'args' ...]
#   export/train_on_gpu.sh --smoke PIECES_DIR     # a few seconds on what the pieces there hold
#
# Each run's best.pt (the model only: ~11 MB at width 1) and train.log are copied to $OUT (or
# ./gpu-runs) as NAME-best.pt / NAME-train.log; nvidia-smi's utilisation every 10 s to gpu.log.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-runs}
mkdir -p "$out"
work=/tmp/backdrop-train
mkdir -p "$work"
python=${PYTHON:-python3}
device=${DEVICE:-cuda}  # DEVICE=cpu tries the script on a machine without one

if [ "${1:-}" = "--smoke" ]; then
    # the first piece alone: val, backgrounds and the first training pairs (tar stops at the cut)
    cat "$2"/pack.tar.* | tar x -C "$work" 2>/dev/null || true
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    common=(--data-dir "$work/data" --device "$device" --amp --workers 2 --threads 1 --limit 128 --batch 32
            --crop 224 --val-every 1 --val-long-side 320)
    PYTHONUNBUFFERED=1 timeout 240 "$python" -m export.train_deeplab "${common[@]}" --out "$work/smoke-a" \
        --width 1.0 --aspp 256 --epochs 50 --time-budget-s 12 > "$out/smoke-a.log" 2>&1 &
    a=$!
    PYTHONUNBUFFERED=1 timeout 240 "$python" -m export.train_deeplab "${common[@]}" --out "$work/smoke-b" \
        --width 1.0 --aspp 256 --epochs 3 --init-onnx service/inference/weights/deeplabv3plus.onnx \
        > "$out/smoke-b.log" 2>&1 &
    b=$!
    status=0
    wait $a || status=$?
    wait $b || status=$?
    tail -n 4 "$out"/smoke-*.log | cut -c1-400
    exit $status
fi

pieces=$1 budget=$2
shift 2
[ -d "$work/data/portraits/train" ] && [ -d "$work/caches" ] || cat "$pieces"/pack.tar.* | tar x -C "$work"
[ -d "$work/caches" ] || { echo "the pack is incomplete: no caches/ in $pieces/pack.tar.*"; exit 1; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
{ nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv -l 10 || true; } > "$out/gpu.log" 2>&1 &
smi=$!
runs=$(($# / 2))
workers=$(( ($(nproc) - runs) / runs ))
names=() pids=()
while [ $# -ge 2 ]; do
    name=$1 args=$2
    shift 2
    mkdir -p "$work/$name"
    cp -r "$work/caches/." "$work/$name/"  # the teacher's alphas: no RVM here
    # shellcheck disable=SC2086 # the run's arguments are words
    PYTHONUNBUFFERED=1 timeout -s INT $((${budget%.*} + 90)) "$python" -m export.train_deeplab \
        --data-dir "$work/data" --out "$work/$name" --device "$device" --amp --workers "$workers" --threads 1 \
        --time-budget-s "$budget" $args > "$work/$name/stdout.log" 2>&1 &
    names+=("$name") pids+=($!)
done
# each run's best so far, copied out every 20 s: a call cut short by its caller's limit still returns it
{ while sleep 20; do
    for name in "${names[@]}"; do
        [ -f "$work/$name/best.pt" ] && cp -u "$work/$name/best.pt" "$out/$name-best.pt"
    done
done; } &
copier=$!
status=0
for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || { status=$?; echo "${names[$i]} ended with $status"; }
done
kill $smi $copier 2>/dev/null || true
for name in "${names[@]}"; do
    cp "$work/$name/best.pt" "$out/$name-best.pt" 2>/dev/null || echo "$name: no best.pt"
    cp "$work/$name/train.log" "$out/$name-train.log" 2>/dev/null || true
    echo "== $name"; grep -v '"epoch"' "$work/$name/stdout.log" | tail -n 8 | cut -c1-600
    grep '"miou"' "$work/$name/train.log" | tail -n 3 | cut -c1-300
done
exit $status

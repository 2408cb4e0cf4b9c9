#!/bin/bash
# On the GPU machine: unpack bench/gpu_machine/bundle.sh's pieces (once), put the CUDA libraries of
# the machine's Python (nvidia-* wheels, e.g. torch's) on the library path, and run bench/gpu.py.
#
#   bash bench/gpu_machine/run.sh PIECES_DIR [bench/gpu.py arguments]
#
# The figures and the log go to $OUT (or bench/out/gpu) as gpu.json and gpu.log.
set -uo pipefail
pieces=$1; shift
site=${SITE_DIR:-/tmp/backdrop-site}
out=${OUT:-bench/out/gpu}
mkdir -p "$site" "$out"
if [ ! -f "$site/.unpacked" ]; then
  cat "$pieces"/site.tar.xz.* | xz -dc -T0 | tar x -C "$site" && touch "$site/.unpacked" || { echo "unpack failed"; exit 3; }
fi
export PYTHONPATH=$site PYTHONUNBUFFERED=1
sp=$(python3 -c "import site; print(site.getsitepackages()[0])")
libs=$(find "$sp/nvidia" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)
export LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export BACKDROP_DATA_DIR=${BACKDROP_DATA_DIR:-$pieces/data}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 bench/gpu.py --json "$out/gpu.json" "$@" 2>&1 | grep -v "No registered plugin EP device" | tee "$out/gpu.log"

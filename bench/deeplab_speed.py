"""deeplabv3plus speed on onnxruntime CPU: frames per second at 256×256.

Two figures: the bare ONNX session on a (1, 3, 256, 256) input, and the service model
(``DeepLabV3Plus.predict``: resize, pad, run, sigmoid, resize back) on 256×256 RGB frames in
batches of ``--batch``, as the settings configure it (flip average, working sizes: the defaults, or
``BACKDROP_DEEPLAB_FLIP_AVERAGE`` / ``BACKDROP_DEEPLAB_LONG_SIDES``); ``--threads`` intra-op threads
(default 2), inter-op 1.

    .venv/bin/python bench/deeplab_speed.py [--threads 2] [--seconds 10] [--batch 4] [--model PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.config import get_settings  # noqa: E402


def _rate(fn, n_per_call: int, seconds: float) -> float:
    for _ in range(3):
        fn()
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        calls += 1
    return calls * n_per_call / (time.perf_counter() - t0)


def main(argv=None) -> dict:
    import onnxruntime as ort

    from service.inference.models.deeplab import DeepLabV3Plus

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--model", type=Path, default=None)
    args = ap.parse_args(argv)

    settings = get_settings().model_copy(
        update={"intra_op_threads": args.threads, "inter_op_threads": 1, "providers": ["CPUExecutionProvider"]}
    )
    model = DeepLabV3Plus(settings)
    path = args.model or model.weights_path
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((1, 3, 256, 256), dtype=np.float32)
    onnx_fps = _rate(lambda: sess.run(None, {"image": x}), 1, args.seconds)

    model._session = sess
    frames = np.random.default_rng(0).integers(0, 256, (args.batch, 256, 256, 3), dtype=np.uint8)
    model_fps = _rate(lambda: model.predict(frames), args.batch, args.seconds)
    res = {"model": str(path), "threads": args.threads, "input": "256x256", "onnx_fps": round(onnx_fps, 1),
           "service_model_fps": round(model_fps, 1), "batch": args.batch,
           "flip_average": settings.deeplab_flip_average, "long_sides": settings.deeplab_long_sides}
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()

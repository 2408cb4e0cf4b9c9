"""Measure the activation scales of RVM's int8 decoder (``service/inference/rvm_int8.py``) and write
them to ``service/inference/weights/rvm_int8_scales.json``.

    .venv/bin/python -m export.rvm_int8_calibrate [--every 4] [--frames 40]

Calibration frames: every ``--every``-th frame (after the first) of desk.mp4, walking-audio.mp4 and
talking-head.mp4 under the data folder's ``videos/``, ``--frames`` of each, run in order through the
float cut graph so that each frame comes with the recurrent state it has in a job; the DAVIS clips
(``videos_gt``), on which ``bench/pipeline.py`` measures the int8 graph's IoU, are not used.  ONNX
Runtime's min/max calibration over these gives each quantised activation's scale and zero point:
numbers of ours (the graph they apply to is RVM's and is never committed).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.config import get_settings  # noqa: E402
from service.inference.models.rvm import RVM, downsample_ratio  # noqa: E402
from service.inference.rvm_int8 import SCALES, quantize  # noqa: E402
from service.inference.rvm_lowres import lowres_path, shrink  # noqa: E402

CLIPS = ("desk.mp4", "walking-audio.mp4", "talking-head.mp4")


def calibration_feeds(videos: Path, cut: Path, every: int, frames: int, long_side: int) -> list[dict[str, np.ndarray]]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(cut), providers=["CPUExecutionProvider"])
    feeds = []
    for name in CLIPS:
        rec = [np.zeros((1, 1, 1, 1), np.float32)] * 4
        kept = 0
        with av.open(str(videos / name)) as container:
            for n, frame in enumerate(container.decode(video=0)):
                image = frame.to_ndarray(format="rgb24")
                h, w = image.shape[:2]
                feed = {"src_sm": shrink(image, downsample_ratio(h, w, long_side)),
                        "r1i": rec[0], "r2i": rec[1], "r3i": rec[2], "r4i": rec[3]}
                rec = session.run(None, feed)[2:]
                if n and n % every == 0:
                    feeds.append(feed)
                    kept += 1
                    if kept == frames:
                        break
    return feeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--every", type=int, default=4, help="calibrate on every n-th frame of each clip")
    parser.add_argument("--frames", type=int, default=40, help="calibration frames from each clip")
    parser.add_argument("--out", type=Path, default=SCALES)
    args = parser.parse_args()
    settings = get_settings()
    weights = RVM(settings).weights_path
    with tempfile.TemporaryDirectory() as tmp:
        cut = lowres_path(weights, Path(tmp))
        feeds = calibration_feeds(Path(settings.data_dir) / "videos", cut, args.every, args.frames, settings.rvm_long_side)
        scales = quantize(cut, Path(tmp) / "int8.onnx", feeds=feeds)
    record = {
        "what": "scale and zero point (uint8) of each activation quantised by service/inference/rvm_int8.py",
        "calibration": {"clips": list(CLIPS), "every": args.every, "frames_each": args.frames,
                        "long_side": settings.rvm_long_side, "method": "onnxruntime MinMax"},
        "activations": {name: {"scale": s, "zero_point": z} for name, (s, z) in sorted(scales.items())},
    }
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"{len(scales)} activations from {len(feeds)} frames -> {args.out}")


if __name__ == "__main__":
    main()

"""End-to-end throughput of the pipeline against a naive loop and the decode+encode floor.

    .venv/bin/python bench/pipeline.py [--clips desk.mp4 walking-sideways.mp4 talking-head.mp4]
                                      [--memory-clip one-by-one-person-detection.mp4]

For each clip, in one run on the same machine:
  (a) Backdrop's pipeline (decode, inference and encode overlapped in three stages) with its
      defaults (for rvm: no edge correction), and "+refine" with the edge correction on;
  (b) a naive reference loop with the same model and encoder: decode one frame → matte → blend →
      encode, one frame at a time, in one thread (see ``run_naive``);
  (c) decode + encode alone, no inference: the cost every pipeline pays on top of the model;
  (m) the model alone on frames already decoded into memory: the ceiling for (a) and (b).
Prints frames/s for each and the ratios (a)/(b) and (a)/(c).  Then the peak resident memory of
one pipeline run over a long clip, measured in a child process so nothing else counts.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.config import get_settings  # noqa: E402
from service.inference.models import get_model  # noqa: E402
from service.inference.models.rvm import downsample_ratio  # noqa: E402
from service.media.background import open_background  # noqa: E402
from service.media.decode import iter_frames  # noqa: E402
from service.media.encode import VideoWriter  # noqa: E402
from service.media.probe import probe_video  # noqa: E402
from service.pipeline import ReplaceOptions, replace_background  # noqa: E402

BACKGROUND = "#3a6ea5"


def run_pipeline(path: Path, out: Path, refine: bool) -> int:
    return replace_background(path, BACKGROUND, out, ReplaceOptions(edge_refine=refine or None)).frames


def run_naive(path: Path, out: Path) -> int:
    """The home-made script Backdrop competes with: the same ONNX model (same weights, providers and
    downsample ratio) in a default onnxruntime session, numpy pre/post-processing and blend, the
    same decoder and encoder; one frame at a time, in one thread."""
    import onnxruntime as ort

    info = probe_video(path)
    model = get_model("rvm")
    session = ort.InferenceSession(str(model.weights_path), providers=model.providers)
    ratio = np.array([downsample_ratio(info.height, info.width, get_settings().rvm_long_side)], np.float32)
    rec = [np.zeros((1, 1, 1, 1), np.float32)] * 4
    bg = open_background(BACKGROUND, info.width, info.height)
    writer = VideoWriter(out, "mp4", info, audio=False)
    n = 0
    for frame in iter_frames(info):
        src = frame.image.transpose(2, 0, 1)[None].astype(np.float32) / 255.0
        fgr, pha, *rec = session.run(
            None, {"src": src, "r1i": rec[0], "r2i": rec[1], "r3i": rec[2], "r4i": rec[3], "downsample_ratio": ratio}
        )
        a = pha[0, 0][..., None]
        back = bg.frames(frame.image[None], [0.0])[0].astype(np.float32)
        composed = a * fgr[0].transpose(1, 2, 0) * 255.0 + (1.0 - a) * back
        writer.write(np.clip(composed + 0.5, 0, 255).astype(np.uint8)[None], [frame.pts], [frame.duration])
        n += 1
    writer.close()
    return n


def run_floor(path: Path, out: Path) -> int:
    info = probe_video(path)
    writer = VideoWriter(out, "mp4", info, audio=False)
    n = 0
    for frame in iter_frames(info):
        writer.write(frame.image[None], [frame.pts], [frame.duration])
        n += 1
    writer.close()
    return n


def model_alone(path: Path, frames: int = 48, warmup: int = 8) -> int:
    """The model's own ceiling: ``predict`` on frames already decoded into memory, batch by batch."""
    info = probe_video(path)
    images = []
    for frame in iter_frames(info):
        images.append(frame.image)
        if len(images) == frames + warmup:
            break
    model = get_model("rvm")
    batch = get_settings().batch_size
    stack = np.stack(images)
    _, state = model.predict(stack[:warmup], model.new_state())
    start = time.perf_counter()
    for i in range(warmup, len(stack), batch):
        _, state = model.predict(stack[i : i + batch], state)
    return round((len(stack) - warmup) / (time.perf_counter() - start))


def timed(fn, *args) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    frames = fn(*args)
    return frames / (time.perf_counter() - start)


def peak_memory(path: Path) -> float:
    """Peak RSS in MB of a child process that runs the pipeline over ``path`` (its own VmHWM: the
    rusage of children would count the parent's pages that a fork copied before the exec)."""
    code = (
        "import sys, tempfile, pathlib; sys.path.insert(0, sys.argv[2]);"
        "from service.pipeline import replace_background;"
        "d = tempfile.mkdtemp(); replace_background(pathlib.Path(sys.argv[1]), '#3a6ea5', pathlib.Path(d) / 'o.mp4');"
        "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')))"
    )
    root = str(Path(__file__).resolve().parent.parent)
    done = subprocess.run([sys.executable, "-c", code, str(path), root], check=True, capture_output=True, text=True)
    return int(done.stdout.split()[-1]) / 1024


def machine() -> str:
    import onnxruntime as ort

    cpu = platform.machine()
    with open("/proc/cpuinfo") as f:  # Linux: the CPU's model name
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    providers = get_model("rvm").providers
    return f"{os.cpu_count()} cores {cpu}, onnxruntime {ort.__version__} {providers[0]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", nargs="+", default=["desk.mp4", "walking-sideways.mp4", "talking-head.mp4"])
    parser.add_argument("--memory-clip", default="one-by-one-person-detection.mp4")
    parser.add_argument("--no-memory", action="store_true")
    args = parser.parse_args()
    videos = Path(get_settings().data_dir) / "videos"
    print(f"machine: {machine()}")
    header = f"{'clip':<24}{'size':>11}{'(a) ours':>10}{'(a) +refine':>13}{'(b) naive':>11}{'(c) floor':>11}{'(m) model':>11}{'a/b':>7}{'a/c':>7}"
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for name in args.clips:
            path = videos / name
            info = probe_video(path)
            get_model("rvm")  # loaded before timing starts
            a = timed(run_pipeline, path, out / "a.mp4", False)
            ar = timed(run_pipeline, path, out / "ar.mp4", True)
            b = timed(run_naive, path, out / "b.mp4")
            c = timed(run_floor, path, out / "c.mp4")
            m = model_alone(path)
            size = f"{info.width}x{info.height}"
            print(f"{name:<24}{size:>11}{a:>10.1f}{ar:>13.1f}{b:>11.1f}{c:>11.1f}{m:>11d}{a / b:>7.2f}{a / c:>7.2f}")
    print("frames per second, end to end (decode → matte → composite → encode); (m): the model alone on")
    print("frames already in memory, the ceiling for (a) and (b)")
    if not args.no_memory:
        mb = peak_memory(videos / args.memory_clip)
        print(f"peak memory, {args.memory_clip} ({probe_video(videos / args.memory_clip).duration_s:.0f} s): {mb:.0f} MB")


if __name__ == "__main__":
    main()

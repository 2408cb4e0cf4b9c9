"""What libx264's preset (the ``x264_preset`` setting) trades: encode speed against file size and picture.

Every preset encodes the same decoded frames (yuv420p, held in memory, so decoding is not timed) at
the mp4 format's ``crf 18`` through the service's own ``VideoWriter``, one after another on the same
threads; then each output is decoded and compared with the frames it was given.

* frames/s: frames over the encoder's wall time (best of ``--runs``; the machine may be shared);
* size: bytes of the whole file, and its ratio to ``veryfast`` (the default);
* PSNR Y / SSIM Y: the luma plane against the encoder's input, mean over frames (SSIM: 8-bit,
  Gaussian window σ 1.5, as Wang et al. 2004).

The speed ratio is the point: on a GPU worker without NVENC (H100, H200) libx264 is the device path's
limit, and the preset is its lever.  On the CPU path the encoder is a few per cent of a job.

    .venv/bin/python bench/x264_presets.py [--clip bench/out/clips/walking-1920x1080.mp4] [--threads 2]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import av
import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.media.encode import X264_PRESETS, VideoWriter, format_spec  # noqa: E402
from service.media.probe import probe_video  # noqa: E402

HERE = Path(__file__).resolve().parent


def decoded_i420(path: Path, limit: int) -> list[np.ndarray]:
    frames = []
    with av.open(str(path)) as src:
        for frame in src.decode(video=0):
            frames.append(frame.to_ndarray(format="yuv420p"))
            if len(frames) >= limit:
                break
    return frames


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    blur = lambda x: cv2.GaussianBlur(x, (11, 11), 1.5)  # noqa: E731
    ma, mb = blur(a), blur(b)
    va, vb, cov = blur(a * a) - ma * ma, blur(b * b) - mb * mb, blur(a * b) - ma * mb
    s = ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2))
    return float(s.mean())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255**2 / mse)


def encode(frames: list[np.ndarray], info, preset: str, threads: int, path: Path) -> float:
    writer = VideoWriter(path, "mp4", info, audio=False, threads=threads,
                         spec=format_spec("mp4", preset))
    step = max(1, round(1 / (info.fps * info.time_base)))
    start = time.perf_counter()
    for i, frame in enumerate(frames):
        writer.write(frame[None], [i * step], layout="yuv420p")
    writer.close()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clip", type=Path, default=HERE / "out" / "clips" / "walking-1920x1080.mp4")
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--threads", type=int, default=0, help="encoder threads (0 = FFmpeg's choice)")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--presets", nargs="+", default=["ultrafast", "superfast", "veryfast", "faster"],
                    choices=X264_PRESETS)
    args = ap.parse_args()
    info = probe_video(args.clip)
    if info.width % 2 or info.height % 2:
        sys.exit(f"{args.clip}: needs an even frame size")
    frames = decoded_i420(args.clip, args.frames)
    print(f"{args.clip.name}: {len(frames)} frames {info.width}x{info.height}, crf 18, "
          f"{args.threads or 'auto'} threads; {platform.processor() or platform.machine()}, "
          f"{len(__import__('os').sched_getaffinity(0))} cores")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            out = Path(tmp) / f"{preset}.mp4"
            seconds = min(encode(frames, info, preset, args.threads, out) for _ in range(args.runs))
            got = decoded_i420(out, len(frames))
            h, w = info.height, info.width
            ys = [(g[:h], f[:h]) for g, f in zip(got, frames, strict=True)]
            rows[preset] = (len(frames) / seconds, out.stat().st_size,
                            float(np.mean([psnr(g, f) for g, f in ys])),
                            float(np.mean([ssim(g, f) for g, f in ys[::4]])))
            assert w == got[0].shape[1]
    base = rows.get("veryfast")
    print(f"{'preset':<10} {'frames/s':>9} {'speed':>6} {'bytes':>10} {'size':>6} {'PSNR Y':>7} {'SSIM Y':>7}")
    for preset, (fps, size, p, s) in rows.items():
        speed = f"{fps / base[0]:.2f}x" if base else "-"
        ratio = f"{size / base[1]:.2f}x" if base else "-"
        print(f"{preset:<10} {fps:>9.1f} {speed:>6} {size:>10} {ratio:>6} {p:>7.2f} {s:>7.4f}")


if __name__ == "__main__":
    main()

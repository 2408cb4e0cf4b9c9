"""Backdrop against the home-made loop, as whole processes, and the quality of each speed option.

    .venv/bin/python bench/pipeline.py [--clips A.mp4 B.mp4 ...] [--runs 2] [--no-iou]
                                      [--memory-clip one-by-one-person-detection.mp4]

Timing: for each clip, ``backdrop replace CLIP -b '#3a6ea5' -o OUT -q`` and ``bench/homemade.py``
(the 40-line script a user would write around the same ONNX file: a default onnxruntime session,
the same low-resolution pass, decode -> model -> blend -> libx264 one frame at a time, audio copied)
run as separate processes, in turn, ``--runs`` times each; the best wall time of each counts, start-up
(imports, session creation) included.  Each process reports its own peak resident memory (VmHWM from
/proc/self/status at exit: ru_maxrss would carry the forked parent's pages across exec).

Clips: by default three sizes made from the shared clips (640x360 from desk.mp4, 1280x720 and
1920x1080 from walking-sideways.mp4 with its audio), written once under bench/out/clips; ``--clips``
takes any files instead (held-out clips).

Quality: mean IoU of alpha > 0.5 against the ground truth of the shared DAVIS clips (videos_gt) for
the fp32 published graph run frame by frame (the reference) and for each speed option, with each
option's difference from the reference; the options are Backdrop's own settings (the cut graph in
float and with its decoder in int8, ``rvm_int8``; as served: whichever ``rvm_int8=auto`` picks on
this CPU), and the cut of a video into parts run side by side (``service.segments``: each part after
the first starts from a fresh state after ``chunk_warmup_frames`` warm-up frames; the DAVIS clips
are 35-100 frames, so 2 and 4 parts put far more seams in a clip than the 96-frame least a real cut
needs).
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.config import get_settings  # noqa: E402

BACKGROUND = "#3a6ea5"
OUT = ROOT / "bench" / "out" / "clips"
#: (name, source clip under videos/, width, height, most frames)
DEFAULT_CLIPS = [
    ("desk-640x360.mp4", "desk.mp4", 640, 360, 300),
    ("walking-1280x720.mp4", "walking-sideways.mp4", 1280, 720, 238),
    ("walking-1920x1080.mp4", "walking-sideways.mp4", 1920, 1080, 120),
]
#: A child process: run the command, then write its own peak memory (kB) to the file in argv[1].
_PEAK = (
    "import sys, runpy; out = sys.argv.pop(1); kind = sys.argv.pop(1)\n"
    "try:\n"
    "    if kind == 'ours':\n"
    "        from service.startup import main; code = main(sys.argv[1:])\n"
    "    else:\n"
    "        sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__'); code = 0\n"
    "finally:\n"
    "    hwm = next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:'))\n"
    "    open(out, 'w').write(hwm)\n"
    "sys.exit(code)\n"
)


def make_clip(source: Path, target: Path, width: int, height: int, frames: int) -> Path:
    """``source`` scaled to width x height (libx264, its audio copied), at most ``frames`` frames."""
    import av

    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".part.mp4")
    with av.open(str(source)) as inp, av.open(str(tmp), "w") as out:
        vin = inp.streams.video[0]
        ain = inp.streams.audio[0] if inp.streams.audio else None
        vout = out.add_stream("libx264", rate=vin.average_rate)
        vout.width, vout.height, vout.pix_fmt = width, height, "yuv420p"
        vout.options = {"preset": "fast", "crf": "20"}
        aout = out.add_stream_from_template(ain) if ain else None
        n, end = 0, None
        for packet in inp.demux(*[s for s in (vin, ain) if s]):
            if packet.stream is ain:
                if packet.dts is not None and (end is None or packet.pts * packet.time_base < end):
                    packet.stream = aout
                    out.mux(packet)
                continue
            for frame in packet.decode():
                if n >= frames:
                    end = end if end is not None else frame.pts * frame.time_base
                    continue
                scaled = frame.reformat(width=width, height=height, format="yuv420p")
                scaled.pts, scaled.time_base = frame.pts, frame.time_base
                out.mux(vout.encode(scaled))
                n += 1
        out.mux(vout.encode(None))
    tmp.replace(target)
    return target


def run_process(kind: str, clip: Path, out: Path, env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, peak MB) of one whole process: ``ours`` (backdrop replace) or ``homemade``."""
    from service.inference.models.rvm import RVM

    with tempfile.NamedTemporaryFile("r", suffix=".hwm") as peak:
        if kind == "ours":
            args = ["ours", "replace", str(clip), "-b", BACKGROUND, "-o", str(out), "-q"]
        else:
            weights = RVM(get_settings()).weights_path
            args = ["homemade", str(ROOT / "bench" / "homemade.py"), str(clip), str(out), str(weights),
                    "--long-side", str(get_settings().rvm_long_side), "--color", BACKGROUND[1:]]
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", _PEAK, peak.name, *args], check=True, env=env, cwd=ROOT)
        wall = time.perf_counter() - start
        return wall, int(open(peak.name).read()) / 1024


def frame_count(path: Path) -> tuple[int, str]:
    from service.media.probe import probe_video

    info = probe_video(path)
    return info.frames, f"{info.width}x{info.height}"


def davis_iou(options: list[tuple[str, dict[str, object], int]]) -> list[tuple[str, float, list[float]]]:
    """Mean IoU of alpha > 0.5 against the DAVIS masks, frame by frame, for each (name, settings,
    parts).  With parts > 1 each clip is cut where ``service.segments`` cuts a video (``part_bounds``):
    every part after the first starts from a fresh state on ``chunk_warmup_frames`` frames before it
    (their output dropped), as the parts running side by side do."""
    import av

    from service.inference.models.rvm import RVM
    from service.segments import part_bounds

    gt_dir = Path(get_settings().data_dir) / "videos_gt"
    names = sorted(p.stem for p in gt_dir.glob("*.mp4") if not p.stem.endswith("_mask"))

    def frames(path: Path, fmt: str) -> list[np.ndarray]:
        with av.open(str(path)) as c:
            return [f.to_ndarray(format=fmt) for f in c.decode(video=0)]

    clips = [(frames(gt_dir / f"{n}.mp4", "rgb24"), frames(gt_dir / f"{n}_mask.mp4", "gray")) for n in names]
    results = []
    for label, update, parts in options:
        settings = get_settings().model_copy(update={"providers": ["CPUExecutionProvider"], **update})
        model = RVM(settings)
        warmup = settings.chunk_warmup_frames
        per_clip = []
        for images, masks in clips:
            n = min(len(images), len(masks))
            bounds = part_bounds(n, parts, warmup) or [0, n]  # as plan_segments cuts: equal model work
            ious = []
            for k in range(len(bounds) - 1):
                state = model.new_state()
                for i in range(max(0, bounds[k] - warmup) if k else 0, bounds[k + 1]):
                    matte, state = model.predict(images[i][None], state)
                    if i < bounds[k]:
                        continue  # warm-up: output dropped
                    pred, gt = matte.alpha[0] > 0.5, masks[i] > 127
                    union = (pred | gt).sum()
                    ious.append((pred & gt).sum() / union if union else 1.0)
            per_clip.append(float(np.mean(ious)))
        results.append((label, float(np.mean(per_clip)), per_clip))
    return results


def machine() -> str:
    import onnxruntime as ort

    cpu = platform.machine()
    with open("/proc/cpuinfo") as f:  # Linux: the CPU's model name
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    load = os.getloadavg()[0]
    return f"{os.cpu_count()} cores {cpu}, onnxruntime {ort.__version__}, load average at start {load:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", nargs="+", type=Path, help="clips to time (default: three sizes made from the shared clips)")
    parser.add_argument("--runs", type=int, default=2, help="runs of each process per clip, in turn (best counts)")
    parser.add_argument("--memory-clip", default="one-by-one-person-detection.mp4",
                        help="a long clip under videos/ whose peak memory is measured for ours alone ('' = none)")
    parser.add_argument("--no-iou", action="store_true", help="skip the DAVIS quality table")
    parser.add_argument("--no-timing", action="store_true", help="only the DAVIS quality table")
    args = parser.parse_args()
    videos = Path(get_settings().data_dir) / "videos"
    print(f"machine: {machine()}")
    if not args.no_timing:
        timing(args, videos)
    if not args.no_iou:
        quality()


def timing(args: argparse.Namespace, videos: Path) -> None:
    clips = args.clips or [make_clip(videos / src, OUT / name, w, h, n) for name, src, w, h, n in DEFAULT_CLIPS]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    header = f"{'clip':<28}{'size':>11}{'frames':>8}{'ours s':>9}{'home s':>9}{'speed-up':>10}{'ours MB':>9}{'home MB':>9}"
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        # one untimed run first: the cut graph is made and optimised once per machine, into the cache
        run_process("ours", clips[0], Path(tmp) / "warm.mp4", env)
        for clip in clips:
            frames, size = frame_count(clip)
            ours, home = [], []
            try:
                for _ in range(args.runs):
                    ours.append(run_process("ours", clip, Path(tmp) / "ours.mp4", env))
                    home.append(run_process("homemade", clip, Path(tmp) / "home.mp4", env))
            except subprocess.CalledProcessError as e:  # one clip's failure (its traceback above) ends its row only
                failed = "ours" if len(ours) == len(home) else "home-made"
                print(f"{clip.name:<28}{size:>11}{frames:>8}   {failed} failed (exit status {e.returncode})", flush=True)
                continue
            o, h = min(t for t, _ in ours), min(t for t, _ in home)
            om, hm = max(m for _, m in ours), max(m for _, m in home)
            print(f"{clip.name:<28}{size:>11}{frames:>8}{o:>9.1f}{h:>9.1f}{h / o:>9.2f}x{om:>9.0f}{hm:>9.0f}", flush=True)
        print("wall seconds of the whole process (start-up included), best of", args.runs, "runs taken in turn;")
        print("speed-up = home-made / ours; MB = peak resident memory (VmHWM) of the process")
        if args.memory_clip:
            clip = videos / args.memory_clip
            frames, size = frame_count(clip)
            _, mb = run_process("ours", clip, Path(tmp) / "long.mp4", env)
            print(f"peak memory of ours over {args.memory_clip} ({size}, {frames} frames): {mb:.0f} MB")


def quality() -> None:
    """The DAVIS IoU of the fp32 published graph and of each speed option."""
    from service.inference.rvm_int8 import int8_wanted

    served = "int8" if int8_wanted(get_settings().rvm_int8) else "float"  # rvm_int8=auto: int8 where the CPU has AVX2
    options: list[tuple[str, dict[str, object], int]] = [
        ("fp32 published graph, whole", {"rvm_cpu_lowres": False}, 1),
        ("cut graph, float", {"rvm_int8": "off"}, 1),
        ("cut graph, int8 decoder", {"rvm_int8": "on"}, 1),
        (f"as served ({served}), 2 parts", {}, 2),
        (f"as served ({served}), 4 parts", {}, 4),
        ("cut graph, float, rvm_long_side 288", {"rvm_long_side": 288, "rvm_int8": "off"}, 1),
        ("cut graph, float, rvm_long_side 256", {"rvm_long_side": 256, "rvm_int8": "off"}, 1),
    ]
    results = davis_iou(options)
    reference = results[0][1]
    print(f"\n{'option':<40}{'mean IoU':>10}{'vs fp32':>10}   per clip (DAVIS videos_gt, alpha > 0.5)")
    for label, mean, per_clip in results:
        print(f"{label:<40}{mean:>10.4f}{mean - reference:>+10.4f}   {' '.join(f'{x:.3f}' for x in per_clip)}")


if __name__ == "__main__":
    main()

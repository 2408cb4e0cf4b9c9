"""Long videos in chunks (issue 16): one worker against two, and the matte at the seams against the
sequential run.

    .venv/bin/python bench/chunks.py [--clip PATH] [--width 384] [--chunk-seconds 30] [--warmups 0,2,4,8,16]

The clip (default: the 139 s ``one-by-one-person-detection.mp4``, people walking past one by one,
downscaled to ``--width`` so that the runs fit in a few minutes on two cores; a keyframe a second)
goes through ``backdrop run`` (Redis, the API, the video worker, as ``make run`` starts them) in
three configurations, each run on a fresh stack, output ``matte``, ``--rounds`` times in alternating
order (the fastest round of each is compared):

1. chunking off, ``BACKDROP_WORKER_CONCURRENCY=1``: the sequential baseline;
2. ``BACKDROP_CHUNK_SECONDS`` on, concurrency 1: the cost of cutting and joining;
3. chunking on, concurrency 2: two chunks at once (the most chunk leases seen at once is printed).

Wall time is the job's own (``started_at`` → ``finished_at``: the cut, the chunks, the join).  The
mattes of 2 and 3 are compared with 1 frame by frame (IoU of alpha > 0.5), over the whole clip and
on the 10 frames after each seam.  Then, in this process, the warm-up sweep: for each W, every seam
is processed from W frames before it to 30 frames after it, and those 30 frames are compared with
the sequential run's.  Prints a JSON summary and writes bench/out/chunks.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def alpha(path: Path) -> np.ndarray:
    from videoutil import alpha_channel

    return alpha_channel(path) > 0.5


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    union = (a | b).sum((1, 2))
    return np.where(union > 0, (a & b).sum((1, 2)) / np.maximum(union, 1), 1.0)  # type: ignore[no-any-return]


def run_stack(clip: Path, work: Path, chunk_s: float, concurrency: int, warmup: int) -> dict[str, Any]:
    """One job through a fresh ``backdrop run``; its wall time, chunks, and most chunks at once."""
    port, rport = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKDROP_")}
    env.update({
        "BACKDROP_PORT": str(port), "BACKDROP_REDIS_URL": f"redis://127.0.0.1:{rport}/0",
        "BACKDROP_STORAGE_DIR": str(work / "objects"), "BACKDROP_SPOOL_DIR": str(work / "spool"),
        "BACKDROP_CHUNK_SECONDS": str(chunk_s), "BACKDROP_WORKER_CONCURRENCY": str(concurrency),
        "BACKDROP_CHUNK_WARMUP_FRAMES": str(warmup), "BACKDROP_PROGRESS_INTERVAL_S": "1",
        "PYTHONPATH": str(ROOT),
    })
    if os.environ.get("BACKDROP_DATA_DIR"):
        env["BACKDROP_DATA_DIR"] = os.environ["BACKDROP_DATA_DIR"]
    log = open(work / "stack.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "service.startup", "run"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=60, trust_env=False) as c:
            deadline = time.monotonic() + 180
            while True:
                try:
                    if c.get("/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"backdrop run did not come up; see {work / 'stack.log'}")
                time.sleep(0.5)
            with open(clip, "rb") as f:
                r = c.post("/jobs", files={"video": (clip.name, f)}, data={"output_format": "matte"})
            r.raise_for_status()
            jid = r.json()["id"]
            rc = redis.Redis(port=rport)
            most = 0
            while True:
                job = c.get(f"/jobs/{jid}").json()
                most = max(most, len(list(rc.scan_iter(match=f"backdrop:lease:{jid}:c*"))))
                if job["status"] in ("succeeded", "failed", "canceled"):
                    break
                time.sleep(0.25)
            if job["status"] != "succeeded":
                raise SystemExit(f"job {job['status']}: {job['error']}")
            raw = json.loads(rc.get(f"backdrop:job:{jid}") or b"{}")
            out = work / "matte.mp4"
            out.write_bytes(c.get(f"/jobs/{jid}/result").content)
            from datetime import datetime

            wall = (datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["started_at"]))
            return {"wall_s": round(wall.total_seconds(), 1), "frames": job["result"]["frames"],
                    "chunks": raw.get("progress", {}).get("chunks_total", 0), "most_chunks_at_once": most,
                    **task_seconds(work / "stack.log"), "output": str(out)}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def task_seconds(log: Path) -> dict[str, Any]:
    """Celery's own timings from the stack's log: the cut (process_job of a chunked job), each chunk,
    the join."""
    import re

    text = log.read_text(errors="replace")

    def times(task: str) -> list[float]:
        return [float(x) for x in re.findall(rf"backdrop\.{task}\[[^\]]+\] succeeded in ([0-9.]+)s", text)]

    return {"process_job_s": times("process_job"), "chunk_s": times("process_chunk"), "join_s": times("join_chunks")}


def warmup_sweep(clip: Path, sequential: np.ndarray, chunk_s: float, warmups: list[int], work: Path,
                 after: int = 30) -> dict[str, Any]:
    """IoU of the ``after`` frames following each seam, processed with W warm-up frames, against
    the sequential run."""
    from service.media.chunks import chunk_info, chunk_pts, plan_chunks, split_video
    from service.media.probe import probe_video
    from service.pipeline import ReplaceOptions, Window, replace_background

    info = probe_video(clip)
    order = chunk_pts(clip)
    out: dict[str, Any] = {}
    for w in warmups:
        plan = plan_chunks(info, chunk_s, w)
        assert plan is not None
        parts = split_video(info, plan, work / f"w{w}")
        scores: list[float] = []
        t0 = time.monotonic()
        for span, part in zip(plan.chunks[1:], parts[1:], strict=True):
            k = order.index(span.start_pts)
            end = order[min(len(order) - 1, k + after)]
            o = work / f"w{w}" / f"seam-{span.index}.mp4"
            replace_background(part, None, o, ReplaceOptions(output_format="matte"),
                               window=Window(chunk_info(info, part), span.model_from_pts, span.start_pts, end))
            scores.extend(iou(alpha(o), sequential[k : k + after]).tolist())
        out[str(w)] = {"mean_iou": round(float(np.mean(scores)), 4), "worst_iou": round(float(np.min(scores)), 4),
                       "first_frame_mean_iou": round(float(np.mean(scores[::after])), 4),
                       "seconds": round(time.monotonic() - t0, 1)}
        print(f"warm-up {w}: {out[str(w)]}", flush=True)
    return out


def main() -> None:
    from service.config import Settings

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", type=Path, default=None)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--rounds", type=int, default=2, help="rounds of the three runs, in alternating order")
    p.add_argument("--chunk-seconds", type=float, default=30.0)
    p.add_argument("--warmup", type=int, default=Settings.model_fields["chunk_warmup_frames"].default,
                   help="warm-up frames of the service runs (default: the setting's)")
    p.add_argument("--warmups", default="0,2,4,8,16,32", help="the sweep's warm-ups")
    a = p.parse_args()
    from chunkclip import build_clip

    from service.config import get_settings

    src = a.clip or Path(get_settings().data_dir) / "videos" / "one-by-one-person-detection.mp4"
    tmp = Path(tempfile.mkdtemp(prefix="bench-chunks-"))
    clip = tmp / "clip.mp4"
    import av

    with av.open(str(src)) as c:
        fps = round(float(c.streams.video[0].average_rate or 10))
        seconds = float(c.duration or 0) / 1e6
    build_clip(src, clip, seconds, a.width, gop=fps, fps=fps)  # the clip once through, re-encoded smaller
    results: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, no GPU (onnxruntime CPU)",
        "clip": f"{src.name} at {a.width} px wide, {seconds:.0f} s, {fps} frames/s, a keyframe a second",
        "chunk_seconds": a.chunk_seconds, "warmup": a.warmup,
        "note": "other sessions shared the machine's 2 cores during these runs: wall times are noisy",
    }
    configs = [("sequential", 0.0, 1), ("chunked_1", a.chunk_seconds, 1), ("chunked_2", a.chunk_seconds, 2)]
    every: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in configs}
    for r in range(a.rounds):  # alternating order: the other load on the machine drifts
        for name, chunk_s, conc in configs if r % 2 == 0 else configs[::-1]:
            work = tmp / f"{name}-{r}"
            work.mkdir()
            t = time.monotonic()
            run = run_stack(clip, work, chunk_s, conc, a.warmup)
            every[name].append(run)
            print(f"{name} round {r}: {run} ({time.monotonic() - t:.0f} s with start-up)", flush=True)
    runs = {name: {**min(rs, key=lambda x: x["wall_s"]), "walls_s": [x["wall_s"] for x in rs]}
            for name, rs in every.items()}
    results["runs"] = runs  # each config's fastest round, and every round's wall time
    seq = alpha(Path(runs["sequential"]["output"]))
    from service.media.chunks import plan_chunks
    from service.media.probe import probe_video

    info = probe_video(clip)
    plan = plan_chunks(info, a.chunk_seconds, a.warmup)
    assert plan is not None
    seams: list[int] = []
    pos = 0
    for c in plan.chunks[:-1]:
        pos += c.frames
        seams.extend(range(pos, pos + 10))
    starts = [0]
    for c in plan.chunks[:-1]:
        starts.append(starts[-1] + c.frames)
    for name in ("chunked_1", "chunked_2"):
        mine = alpha(Path(runs[name]["output"]))
        s = iou(mine, seq)
        union = (mine | seq).sum((1, 2))
        big = union >= 0.01 * seq.shape[1] * seq.shape[2]  # someone covers at least 1% of the frame
        worst = [{"frame": int(k), "iou": round(float(s[k]), 3), "union_px": int(union[k]),
                  "frames_after_seam": int(k - max(x for x in starts if x <= k))} for k in np.argsort(s)[:5]]
        results[f"{name}_vs_sequential"] = {
            "mean_iou": round(float(s.mean()), 4), "worst_iou": round(float(s.min()), 4),
            "seam_mean_iou": round(float(s[seams].mean()), 4), "seam_worst_iou": round(float(s[seams].min()), 4),
            "mean_iou_union_over_1pct": round(float(s[big].mean()), 4),
            "worst_iou_union_over_1pct": round(float(s[big].min()), 4),
            "worst_frames": worst,
        }
    results["wall_ratio_sequential_over_chunked_2"] = round(runs["sequential"]["wall_s"] / runs["chunked_2"]["wall_s"], 3)
    results["wall_ratio_chunked_1_over_chunked_2"] = round(runs["chunked_1"]["wall_s"] / runs["chunked_2"]["wall_s"], 3)
    results["wall_ratio_chunked_1_over_sequential"] = round(runs["chunked_1"]["wall_s"] / runs["sequential"]["wall_s"], 3)
    minutes = seconds / 60
    # the whole machine is the unit of cost (two slots share its two cores)
    results["machine_seconds_per_video_minute"] = {k: round(v["wall_s"] / minutes, 1) for k, v in runs.items()}
    results["warmup_sweep"] = warmup_sweep(clip, seq, a.chunk_seconds, [int(x) for x in a.warmups.split(",")], tmp)
    print(json.dumps(results, indent=2))
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / "chunks.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

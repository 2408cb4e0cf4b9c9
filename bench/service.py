"""Service benchmark: status-poll latency at a fixed request rate, and the end-to-end time of one
job through the service against the same clip through ``replace_background`` directly.

    .venv/bin/python bench/service.py [--clip PATH] [--rate 50] [--seconds 10]

Starts its own stack (redis-server, the API under uvicorn, one Celery worker) on free loopback ports
with a temporary local store; prints a JSON summary and writes it to bench/out/service.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[k]


def poll_latency(url: str, rate: float, seconds: float, threads: int = 4) -> dict[str, float]:
    """GET ``url`` at ``rate`` requests/s in total (open loop per thread) for ``seconds``."""
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    per = rate / threads

    t_start = time.perf_counter() + 0.1

    def run(offset: float) -> None:
        with httpx.Client(timeout=10, trust_env=False) as c:
            n = 0
            while n / per < seconds:
                delay = t_start + offset + n / per - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                t = time.perf_counter()
                r = c.get(url)
                dt = time.perf_counter() - t
                with lock:
                    if r.status_code == 200:
                        lat.append(dt * 1000)
                    else:
                        errors[0] += 1
                n += 1

    ts = [threading.Thread(target=run, args=(i / rate,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return {
        "requests": len(lat), "errors": errors[0], "rate_per_s": rate,
        "p50_ms": round(percentile(lat, 50), 2), "p99_ms": round(percentile(lat, 99), 2),
        "max_ms": round(max(lat), 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clip", type=Path, default=None, help="input video (default: the first ASL clip)")
    ap.add_argument("--background", default="#2a5599")
    ap.add_argument("--rate", type=float, default=50.0, help="status polls per second")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each poll-latency run")
    ap.add_argument("--repeat", type=int, default=2, help="service/direct pairs (medians are reported)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-service-"))
    redis_port, api_port = free_port(), free_port()
    os.environ.update({
        "BACKDROP_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "BACKDROP_PORT": str(api_port),
        "BACKDROP_STORAGE_DIR": str(tmp / "objects"),
        "BACKDROP_QUEUE_NAME": "bench",
    })
    from service.config import get_settings
    from service.local_stack import LocalStack

    settings = get_settings()
    clip = args.clip or sorted((Path(settings.data_dir) / "videos" / "asl").glob("*.mkv"))[0]
    stack = LocalStack(settings, log=lambda m: print(m, file=sys.stderr))
    base = f"http://127.0.0.1:{api_port}"
    out: dict[str, object] = {
        "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, no GPU assumed",
        "clip": clip.name,
    }
    from service.inference.models import get_model
    from service.pipeline import ReplaceOptions, replace_background

    def direct() -> float:
        # the same clip through the pipeline in this process, model loaded beforehand (as in a warm worker)
        get_model(settings.model, settings)
        t0 = time.perf_counter()
        replace_background(clip, args.background, tmp / "direct.mp4", ReplaceOptions(), settings=settings)
        return time.perf_counter() - t0

    def through_service(c: httpx.Client, busy_polls: dict[str, object] | None) -> dict[str, float]:
        # one job end to end: upload → queued → running → succeeded → download
        t0 = time.perf_counter()
        with open(clip, "rb") as f:
            r = c.post("/jobs", files={"video": (clip.name, f)}, data={"background_color": args.background})
        r.raise_for_status()
        job = r.json()
        t_accept = time.perf_counter() - t0
        poller = None
        if busy_polls is not None:  # status polls at the fixed rate while the worker is busy
            poller = threading.Thread(
                target=lambda: busy_polls.update(poll_latency(f"{base}/jobs/{job['id']}", args.rate, args.seconds))
            )
            poller.start()
        started = None
        while job["status"] in ("queued", "running"):
            time.sleep(0.05)
            job = c.get(f"/jobs/{job['id']}").json()
            if started is None and job["status"] == "running":
                started = time.perf_counter() - t0
        if job["status"] != "succeeded":
            raise SystemExit(f"job failed: {job['error']}")
        data = c.get(f"/jobs/{job['id']}/result").content
        total = time.perf_counter() - t0
        if poller is not None:
            poller.join()
        return {"end_to_end_s": total, "accept_s": t_accept, "queue_wait_s": (started or t_accept) - t_accept,
                "frames": job["result"]["frames"], "bytes": len(data)}

    runs: list[dict[str, float]] = []
    directs: list[float] = []
    busy: dict[str, object] = {}
    try:
        stack.start()
        if not stack.wait_ready(180):
            raise SystemExit("the stack did not become ready")
        with httpx.Client(base_url=base, timeout=120, trust_env=False) as c:
            for i in range(args.repeat):  # alternate service and direct runs: the machine is shared
                runs.append(through_service(c, busy if i == 0 else None))
                directs.append(direct())
            last = c.get("/jobs", params={"limit": 1}).json()["data"][0]["id"]
            out["poll_latency_idle"] = poll_latency(f"{base}/jobs/{last}", args.rate, args.seconds)
            out["poll_latency_busy"] = busy
    finally:
        stack.stop()

    med = statistics.median
    t_service = med(r["end_to_end_s"] for r in runs)
    t_direct = med(directs)
    out["service"] = {
        "end_to_end_s": round(t_service, 2),
        "runs_s": [round(r["end_to_end_s"], 2) for r in runs],
        "accept_s": round(med(r["accept_s"] for r in runs), 3),
        "queue_wait_s": round(med(r["queue_wait_s"] for r in runs), 3),
        "frames": runs[0]["frames"],
    }
    out["direct"] = {"seconds": round(t_direct, 2), "runs_s": [round(d, 2) for d in directs],
                     "fps": round(runs[0]["frames"] / t_direct, 2)}
    out["overhead_ratio"] = round(t_service / t_direct, 3)
    text = json.dumps(out, indent=2)
    print(text)
    (ROOT / "bench" / "out").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "out" / "service.json").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

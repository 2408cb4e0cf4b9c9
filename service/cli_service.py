"""The service side of the ``backdrop`` command: ``run`` (the local stack) and ``submit`` (a small
client: upload a video and a background, follow the job, download the result).

``service.cli`` calls ``add_commands(subparsers)``; each command's ``func(args)`` returns an exit code.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any


def _run(args: argparse.Namespace) -> int:
    from service.config import get_settings
    from service.local_stack import LocalStack

    settings = get_settings()
    if args.port is not None:
        settings = settings.model_copy(update={"port": args.port})
    return LocalStack(settings, worker=not args.no_worker).run()


def _problem(r: Any) -> str:
    try:
        body = r.json()
        return f"{body.get('code', r.status_code)}: {body.get('detail', r.text)}"
    except ValueError:
        return f"HTTP {r.status_code}: {r.text[:200]}"


def _submit(args: argparse.Namespace) -> int:
    import httpx

    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    data: dict[str, str] = {
        "model": args.model, "output_format": args.format, "composite": args.composite,
        "harmonize": str(args.harmonize),
    }
    if args.callback_url:
        data["callback_url"] = args.callback_url
    bg = args.background or "blur"
    files: dict[str, Any] = {}
    video = Path(args.video)
    with httpx.Client(base_url=args.api, headers=headers, timeout=args.timeout, trust_env=False) as client:
        with open(video, "rb") as vf:
            files["video"] = (video.name, vf)
            if bg == "blur":
                data["background_blur"] = "true"
            elif bg.startswith("#"):
                data["background_color"] = bg
            else:
                bgf = open(bg, "rb")  # noqa: SIM115 - closed below
                files["background"] = (Path(bg).name, bgf)
            try:
                r = client.post("/jobs", files=files, data=data)
            finally:
                if "background" in files:
                    files["background"][1].close()
        if r.status_code != 202:
            print(f"backdrop submit: {_problem(r)}", file=sys.stderr)
            return 2
        job = r.json()
        print(f"job {job['id']} queued")
        if args.no_wait:
            return 0
        last = ""
        while job["status"] in ("queued", "running"):
            time.sleep(args.poll)
            r = client.get(f"/jobs/{job['id']}")
            if r.status_code != 200:
                print(f"backdrop submit: {_problem(r)}", file=sys.stderr)
                return 2
            job = r.json()
            line = f"{job['status']} {job['progress']['frames_done']}/{job['progress']['frames_total']} frames"
            if line != last and not args.quiet:
                print(line, file=sys.stderr)
                last = line
        if job["status"] != "succeeded":
            err = job.get("error") or {}
            print(f"backdrop submit: job {job['status']}: {err.get('code')}: {err.get('message')}", file=sys.stderr)
            return 1
        out = Path(args.output or f"{video.stem}-backdrop{Path(job['result']['url'] or '.mp4').suffix or '.mp4'}")
        with client.stream("GET", f"/jobs/{job['id']}/result", follow_redirects=True) as resp:
            if resp.status_code != 200:
                resp.read()
                print(f"backdrop submit: {_problem(resp)}", file=sys.stderr)
                return 2
            tmp = out.with_name(out.name + ".part")
            with open(tmp, "wb") as f:
                for chunk in resp.iter_bytes(1024 * 1024):
                    f.write(chunk)
            os.replace(tmp, out)
        print(f"{out}: {job['result']['frames']} frames, {job['result']['size']} bytes")
    return 0


def add_commands(subparsers: Any) -> None:
    """Register ``run`` and ``submit`` on ``backdrop``'s subparsers."""
    run = subparsers.add_parser("run", help="run Redis, the API and a worker on this machine")
    run.add_argument("--port", type=int, default=None, help="API port (default: BACKDROP_PORT, 8000)")
    run.add_argument("--no-worker", action="store_true", help="start Redis and the API only")
    run.set_defaults(func=_run)

    sub = subparsers.add_parser("submit", help="send a video to a running service and fetch the result")
    sub.add_argument("video", help="the input video")
    sub.add_argument("-b", "--background", help="an image or video file, #RRGGBB, or blur (default)")
    sub.add_argument("-o", "--output", help="where the result goes (default: VIDEO-backdrop.EXT)")
    sub.add_argument("--api", default=os.environ.get("BACKDROP_API_URL", "http://127.0.0.1:8000"),
                     help="the service URL (env BACKDROP_API_URL)")
    sub.add_argument("--key", default=os.environ.get("BACKDROP_API_KEY"), help="API key (env BACKDROP_API_KEY)")
    sub.add_argument("--model", default="rvm")
    sub.add_argument("--format", default="mp4", help="mp4, webm, mov, matte or greenscreen")
    sub.add_argument("--composite", default="alpha", choices=["alpha", "poisson"])
    sub.add_argument("--harmonize", type=float, default=0.0)
    sub.add_argument("--callback-url", dest="callback_url")
    sub.add_argument("--no-wait", action="store_true", help="print the job id and return")
    sub.add_argument("--poll", type=float, default=1.0, help="seconds between status polls")
    sub.add_argument("--timeout", type=float, default=300.0, help="HTTP timeout, seconds")
    sub.add_argument("-q", "--quiet", action="store_true")
    sub.set_defaults(func=_submit)

"""The service side of the ``backdrop`` command: ``run`` (the local stack) and ``submit`` (a small
client: upload a video and a background, follow the job, download the result).

``service.cli`` calls ``add_commands(subparsers)``; each command's ``func(args)`` returns an exit code.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from service.options import OUTPUT_FORMATS


def _run(args: argparse.Namespace) -> int:
    from service.config import get_settings
    from service.local_stack import LocalStack

    settings = get_settings()
    if args.port is not None:
        settings = settings.model_copy(update={"port": args.port})
    return LocalStack(settings, worker=not args.no_worker).run()


def _submit(args: argparse.Namespace) -> int:
    """Submit through ``service.client`` (retries with one Idempotency-Key, typed errors), follow
    the job, download the result."""
    from service.cli import output_format
    from service.cli_stdio import STDIO, info_stream, piped
    from service.client import ApiError, Backdrop, JobFailed
    from service.pipeline import check_output

    fmt = output_format(args.format, Path(args.output) if args.output else None)
    options = {"model": args.model, "output_format": fmt, "composite": args.composite,
               "harmonize": args.harmonize, "callback_url": args.callback_url}
    last = {"line": ""}

    def progress(job: dict[str, Any]) -> None:
        line = f"{job['status']} {job['progress'].get('frames_done')}/{job['progress'].get('frames_total')} frames"
        if line != last["line"] and not args.quiet:
            print(line, file=sys.stderr)
            last["line"] = line

    info = info_stream(args.output)
    with Backdrop(args.api, args.key, timeout=args.timeout) as bd, \
            piped(args.video, args.output) as (video, output):
        if output is not None and args.output != STDIO:
            # refused before the upload, as backdrop replace refuses it: the same output rules
            output = check_output(Path(output), [Path(p) for p in (video, args.background) if p and Path(p).is_file()])
        try:
            job = bd.submit(video, args.background or "blur", **options)
            print(f"job {job['id']} queued", file=info)
            if args.no_wait:
                return 0
            job = bd.wait(job["id"], progress=progress, poll_s=args.poll)
            result: dict[str, Any] = job["result"] if isinstance(job.get("result"), dict) else {}
            suffix = Path(str(result.get("url") or ".mp4")).suffix.split("?")[0] or ".mp4"
            stem = Path(args.video).stem if "://" not in args.video and args.video != STDIO else job["id"]
            out = bd.download(job["id"], output or f"{stem}-backdrop{suffix}")
        except JobFailed as e:
            print(f"backdrop submit: job {e.job['status']}: {e.code}: {e.detail}", file=sys.stderr)
            return 1
        except ApiError as e:
            print(f"backdrop submit: {e.code}: {e.detail or e.title}", file=sys.stderr)
            return 2
        except (FileNotFoundError, IsADirectoryError, PermissionError) as e:  # a file named that cannot be used
            print(f"backdrop submit: cannot open {e.filename}: {e.strerror}", file=sys.stderr)
            return 2
    print(f"{args.output if args.output == STDIO else out}: {result.get('frames')} frames, "
          f"{result.get('size')} bytes", file=info)
    return 0


def add_commands(subparsers: Any) -> None:
    """Register ``run`` and ``submit`` on ``backdrop``'s subparsers."""
    run = subparsers.add_parser("run", help="run Redis, the API and a worker on this machine")
    run.add_argument("--port", type=int, default=None, help="API port (default: BACKDROP_PORT, 8000)")
    run.add_argument("--no-worker", action="store_true", help="start Redis and the API only")
    run.set_defaults(func=_run)

    sub = subparsers.add_parser("submit", help="send a video to a running service and fetch the result")
    sub.add_argument("video", help="the input video: a file, an http(s) URL (fetched by the service) or - (standard input)")
    sub.add_argument("-b", "--background", help="an image or video file or http(s) URL, #RRGGBB, or blur / blur:STRENGTH (0.05-1; default blur)")
    sub.add_argument("-o", "--output", help="where the result goes (default: VIDEO-backdrop.EXT; - for standard output)")
    sub.add_argument("--api", default=os.environ.get("BACKDROP_API_URL", "http://127.0.0.1:8000"),
                     help="the service URL (env BACKDROP_API_URL)")
    sub.add_argument("--key", default=os.environ.get("BACKDROP_API_KEY"), help="API key (env BACKDROP_API_KEY)")
    sub.add_argument("--model", default="rvm")
    sub.add_argument("--format", default=None, choices=list(OUTPUT_FORMATS),
                     help="output format (default: the one -o's suffix names, .webm, .mov, .mp4; else mp4)")
    sub.add_argument("--composite", default="alpha", choices=["alpha", "poisson"])
    sub.add_argument("--harmonize", type=float, default=0.0)
    sub.add_argument("--callback-url", dest="callback_url")
    sub.add_argument("--no-wait", action="store_true", help="print the job id and return")
    sub.add_argument("--poll", type=float, default=1.0, help="seconds between status polls")
    sub.add_argument("--timeout", type=float, default=300.0, help="HTTP timeout, seconds")
    sub.add_argument("-q", "--quiet", action="store_true")
    sub.set_defaults(func=_submit)

"""``backdrop run`` brings up Redis, the API and a worker; ``backdrop submit`` drives a job through
it; SIGTERM stops all three."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from stack import ROOT, base_env, count_frames, data_path, free_port, make_env, wait_for

from service.cli_service import add_commands


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="backdrop")
    add_commands(p.add_subparsers(dest="command", required=True))
    return p


def test_commands_are_registered() -> None:
    args = parser().parse_args(["submit", "in.mp4", "-b", "#00ff00", "--api", "http://127.0.0.1:1"])
    assert args.func.__name__ == "_submit" and args.background == "#00ff00"
    assert parser().parse_args(["run", "--port", "8123"]).port == 8123


def test_submit_reports_problems(tmp_path: Path) -> None:
    # nothing listens there: a connection error, not a traceback of ours
    args = parser().parse_args(["submit", str(tmp_path / "missing.mp4"), "--api", f"http://127.0.0.1:{free_port()}"])
    with pytest.raises((FileNotFoundError, httpx.HTTPError)):
        args.func(args)


@pytest.mark.slow
def test_run_submit_and_stop(tmp_path: Path) -> None:
    redis_port, api_port = free_port(), free_port()
    env = make_env(base_env(f"redis://127.0.0.1:{redis_port}/0", tmp_path, BACKDROP_PORT=str(api_port)))
    log = open(tmp_path / "stack.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "service.local_stack"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{api_port}"

        def ready() -> bool:
            try:
                return httpx.get(url + "/readyz", timeout=2, trust_env=False).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 90, 0.5, "the local stack")
        clip = sorted(data_path("videos", "asl").glob("*.mkv"))[0]
        out = tmp_path / "result.mp4"
        args = parser().parse_args(["submit", str(clip), "-b", "#224466", "-o", str(out), "--api", url,
                                    "--poll", "0.3", "-q"])
        assert args.func(args) == 0
        assert count_frames(out)[0] == count_frames(clip)[0]
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        log.close()
    assert code == 0, (tmp_path / "stack.log").read_text()[-3000:]
    for port in (redis_port, api_port):
        import socket

        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open after stop"

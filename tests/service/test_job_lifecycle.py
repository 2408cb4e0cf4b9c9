"""Every job ends, through real parts (redis-server, Celery workers, the light worker's beat running
the reaper): a job that kills its worker every time, one that hangs past its hard limit, Redis
restarted under a running job."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from stack import ApiServer, base_env, free_port, redis_binary, settings_from, wait_for
from test_end_to_end import Receiver, asl_clip, objects_of, poll, submit

pytestmark = pytest.mark.slow


def _callback(receiver: Receiver, job_id: str) -> dict[str, Any]:
    wait_for(lambda: any(s == 200 for s, _, _ in receiver.calls), 30, 0.2, "the callback")
    payload = json.loads(next(b for s, b, _ in receiver.calls if s == 200))
    assert payload["id"] == job_id
    return payload  # type: ignore[no-any-return]


def test_a_job_that_kills_its_worker_fails_worker_lost_after_the_cap(
    redis_url: str, tmp_path: Path, worker_factory: Any
) -> None:
    env = base_env(redis_url, tmp_path, BACKDROP_JOB_LEASE_S="1.5", BACKDROP_MAX_ATTEMPTS="3",
                   BACKDROP_WEBHOOK_ALLOW_PRIVATE="true")
    worker = worker_factory(dict(env, BACKDROP_FAULT_INJECTION="crash"))
    receiver = Receiver()
    try:
        with ApiServer(settings_from(env)) as api, api.client() as c:
            worker.wait_ready()
            job = submit(c, asl_clip(), background_color="#000000", callback_url=receiver.url)
            done = poll(c, job["id"], {"succeeded", "failed"}, 120)
            assert done["status"] == "failed" and done["error"]["code"] == "worker_lost", (done, worker.log())
            assert done["attempts"] == 3
            assert _callback(receiver, job["id"])["error"]["code"] == "worker_lost"
            # it stays failed: no message brings it back, and nothing is left running
            time.sleep(4)
            again = c.get(f"/jobs/{job['id']}").json()
            assert again["status"] == "failed" and again["attempts"] == 3
            assert redis.Redis.from_url(redis_url).zcard("backdrop:running") == 0
            assert worker.proc is not None and worker.proc.poll() is None  # the worker itself lives on
            # each killed process's work folder went with the process that took its place
            assert not list(Path(env["BACKDROP_SPOOL_DIR"]).glob("job-*")), worker.log()
    finally:
        receiver.close()


def test_a_job_past_its_hard_limit_ends_time_limit(redis_url: str, tmp_path: Path, worker_factory: Any) -> None:
    env = base_env(redis_url, tmp_path, BACKDROP_TASK_TIME_BASE_S="2", BACKDROP_TASK_TIME_PER_VIDEO_S="0",
                   BACKDROP_TASK_TIME_GRACE_S="2", BACKDROP_JOB_LEASE_S="1.5",
                   BACKDROP_WEBHOOK_ALLOW_PRIVATE="true")
    worker = worker_factory(dict(env, BACKDROP_FAULT_INJECTION="hang"))
    receiver = Receiver()
    try:
        with ApiServer(settings_from(env)) as api, api.client() as c:
            worker.wait_ready()
            job = submit(c, asl_clip(), background_color="#000000", callback_url=receiver.url)
            done = poll(c, job["id"], {"succeeded", "failed"}, 60)
            assert done["status"] == "failed" and done["error"]["code"] == "time_limit", (done, worker.log())
            assert done["attempts"] == 1  # not tried again
            assert _callback(receiver, job["id"])["error"]["code"] == "time_limit"
            assert objects_of(api.settings.storage_dir, job["id"]) == ["input.mkv"]
    finally:
        receiver.close()


class RedisProcess:
    """A redis-server with an append-only file, so its data outlives a restart on the same port."""

    def __init__(self, folder: Path):
        self.port, self.folder = free_port(), folder
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisProcess:
        self.proc = subprocess.Popen(
            [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        wait_for(lambda: _pings(client), 10, 0.1, "redis-server")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def test_redis_restarted_under_a_running_job(tmp_path: Path, worker_factory: Any) -> None:
    server = RedisProcess(tmp_path).start()
    url = f"redis://127.0.0.1:{server.port}/0"
    env = base_env(url, tmp_path, BACKDROP_JOB_LEASE_S="3")
    try:
        worker = worker_factory(dict(env, BACKDROP_FAULT_INJECTION="slow"))  # still running as Redis stops
        with ApiServer(settings_from(env)) as api, api.client() as c:
            worker.wait_ready()
            job = submit(c, asl_clip(), background_blur="true")
            try:
                seen = wait_for(lambda: (j := c.get(f"/jobs/{job['id']}").json())["progress"]["frames_done"] > 0
                                or j["status"] in ("failed", "canceled") and j, 120, 0.2, "progress")
            except AssertionError:  # seen once in a dozen full runs, not alone: say where the job was
                seen = c.get(f"/jobs/{job['id']}").json()
            assert seen is True, (seen, worker.log()[-4000:])
            server.stop()
            r = c.get(f"/jobs/{job['id']}")  # the API answers the outage cleanly
            assert r.status_code == 503 and r.headers["content-type"] == "application/problem+json", r.text
            time.sleep(4)
            server.start()
            done = poll(c, job["id"], {"succeeded", "failed", "canceled"}, 180)
            assert done["status"] == "succeeded" or (
                done["status"] == "failed" and done["error"]["code"] != "internal_error"
            ), (done, worker.log())
            wait_for(lambda: redis.Redis.from_url(url).zcard("backdrop:running") == 0, 30, 0.5, "nothing running")
    finally:
        server.stop()

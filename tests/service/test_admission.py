"""Back-pressure under concurrency (service/admission.py and POST /jobs): places in the queue are
reserved atomically before an upload is accepted, released when the request fails, bounded per
tenant; the per-process upload cap; Redis going away under a request.  Real redis-server processes,
real uploads of a real clip, the API served by uvicorn."""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis
from stack import (
    API_KEY,
    OTHER_KEY,
    ApiServer,
    _pings,
    auth_env,
    base_env,
    data_path,
    free_port,
    redis_binary,
    settings_from,
    wait_for,
)

from service.admission import Admission
from service.errors import QueueFull, QuotaExceeded
from service.jobs import Job, JobStatus, JobStore


def clip() -> Path:
    return sorted(data_path("videos", "asl").glob("*.mkv"))[0]


def assert_problem(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == code


def post(c: httpx.Client, video: Path, **fields: str) -> httpx.Response:
    data = {"background_color": "#00ff00", **fields}
    with open(video, "rb") as f:
        return c.post("/jobs", files={"video": (video.name, f, "application/octet-stream")}, data=data)


def queued(url: str) -> int:
    return int(redis.Redis.from_url(url).zcard("backdrop:queued"))


# --- the reservation itself ----------------------------------------------------------------------
def test_reservations_are_atomic_and_bounded(redis_url: str) -> None:
    settings = settings_from(base_env(redis_url, Path("/tmp"), BACKDROP_MAX_QUEUE_DEPTH="5",
                                      BACKDROP_TENANT_MAX_QUEUED="100"))
    adm = Admission(JobStore.from_settings(settings), settings)

    def try_reserve(_: int) -> bool:
        try:
            adm.reserve("t")
            return True
        except QueueFull:
            return False

    with ThreadPoolExecutor(16) as pool:
        taken = list(pool.map(try_reserve, range(60)))
    assert sum(taken) == 5
    assert adm.reserved_count() == 5


def test_commit_counts_the_job_and_release_gives_the_place_back(redis_url: str) -> None:
    settings = settings_from(base_env(redis_url, Path("/tmp"), BACKDROP_MAX_QUEUE_DEPTH="2",
                                      BACKDROP_TENANT_MAX_QUEUED="100"))
    store = JobStore.from_settings(settings)
    adm = Admission(store, settings)
    a, b = adm.reserve("t"), adm.reserve("t")
    with pytest.raises(QueueFull):
        adm.reserve("t")
    b.release()
    b.release()  # twice is harmless
    job = Job(owner="t")
    store.create(job)
    a.commit(job.id)
    a.release()  # after commit: nothing to give back
    assert adm.reserved_count() == 0 and store.queue_depth() == 1
    c = adm.reserve("t")  # one queued + one reserved = the depth
    with pytest.raises(QueueFull):
        adm.reserve("t")
    c.release()
    store.transition(job.id, JobStatus.RUNNING)  # a job leaving the queue frees its place
    adm.reserve("t")
    adm.reserve("t")


def test_tenant_quota_counts_only_that_tenants_queued_jobs(redis_url: str) -> None:
    settings = settings_from(base_env(redis_url, Path("/tmp"), BACKDROP_MAX_QUEUE_DEPTH="100",
                                      BACKDROP_TENANT_MAX_QUEUED="2"))
    store = JobStore.from_settings(settings)
    adm = Admission(store, settings)
    ids = []
    for _ in range(2):
        res = adm.reserve("alice")
        job = Job(owner="alice")
        store.create(job)
        res.commit(job.id)
        ids.append(job.id)
    with pytest.raises(QuotaExceeded):
        adm.reserve("alice")
    adm.reserve("bob").release()  # another tenant is not held back
    store.transition(ids[0], JobStatus.CANCELED)  # no hook needed: the next admission sees it left
    adm.reserve("alice")


def test_reservations_of_a_dead_process_lapse(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import service.admission as admission

    monkeypatch.setattr(admission, "RESERVATION_TTL_S", 0.5)
    settings = settings_from(base_env(redis_url, Path("/tmp"), BACKDROP_MAX_QUEUE_DEPTH="1"))
    adm = Admission(JobStore.from_settings(settings), settings)
    adm.reserve("t")  # never committed nor released: its process died
    with pytest.raises(QueueFull):
        adm.reserve("t")
    time.sleep(0.7)
    adm.reserve("t")
    assert adm.reserved_count() == 1


# --- through the API -----------------------------------------------------------------------------
def test_concurrent_posts_never_exceed_the_queue_depth(redis_url: str, tmp_path: Path) -> None:
    env = base_env(redis_url, tmp_path, **auth_env(), BACKDROP_MAX_QUEUE_DEPTH="3",
                   BACKDROP_TENANT_MAX_QUEUED="100", BACKDROP_MAX_CONCURRENT_UPLOADS="64")
    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        r = redis.Redis.from_url(redis_url)
        while not stop.is_set():
            seen.append(int(r.zcard("backdrop:queued")))
            time.sleep(0.005)

    with ApiServer(settings_from(env)) as server:
        watcher = threading.Thread(target=watch)
        watcher.start()

        def one(i: int) -> httpx.Response:
            with server.client(API_KEY if i % 2 else OTHER_KEY) as c:
                return post(c, clip())

        try:
            with ThreadPoolExecutor(30) as pool:
                answers = list(pool.map(one, range(30)))
        finally:
            stop.set()
            watcher.join()
    codes = sorted((r.status_code, r.json().get("code", "")) for r in answers)
    assert codes.count((202, "")) == 3, codes
    assert codes.count((503, "queue_full")) == 27, codes
    assert all(int(r.headers["retry-after"]) > 0 for r in answers if r.status_code == 503)
    assert max(seen) <= 3 and queued(redis_url) == 3
    assert redis.Redis.from_url(redis_url).zcard("backdrop:admission:reserved") == 0


def test_failed_requests_give_their_place_back(redis_url: str, tmp_path: Path) -> None:
    env = base_env(redis_url, tmp_path, BACKDROP_MAX_QUEUE_DEPTH="1")
    with ApiServer(settings_from(env)) as server, server.client() as c:
        for bad in ({"background_color": "red"}, {"output_format": "webm", "harmonize": "1"}):
            assert post(c, clip(), **bad).status_code == 422
        text = tmp_path / "notes.txt"
        text.write_text("not a video\n" * 50)
        assert_problem(post(c, text), 415, "not_a_video")
        assert post(c, clip()).status_code == 202
        assert_problem(post(c, clip()), 503, "queue_full")


def test_tenant_quota(redis_url: str, tmp_path: Path) -> None:
    env = base_env(redis_url, tmp_path, **auth_env(), BACKDROP_TENANT_MAX_QUEUED="2")
    with ApiServer(settings_from(env)) as server, server.client(API_KEY) as alice, server.client(OTHER_KEY) as bob:
        first = post(alice, clip())
        assert first.status_code == 202 and post(alice, clip()).status_code == 202
        r = post(alice, clip())
        assert_problem(r, 429, "quota_exceeded")
        assert int(r.headers["retry-after"]) > 0
        assert post(bob, clip()).status_code == 202  # another tenant is not held back
        assert alice.delete(f"/jobs/{first.json()['id']}").status_code == 204  # canceled: a place again
        assert post(alice, clip()).status_code == 202


class GiveUp(Exception):
    """The client abandons its upload half-way."""


def _slow_body(video: Path, boundary: str, gate: threading.Event, started: threading.Event,
               give_up: bool = False) -> Iterator[bytes]:
    """A multipart body that sends its first part, then waits for ``gate`` before the rest (or,
    with ``give_up``, drops the connection there)."""
    yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"background_blur\"\r\n\r\ntrue\r\n"
           f"--{boundary}\r\nContent-Disposition: form-data; name=\"video\"; filename=\"v.mkv\"\r\n"
           "Content-Type: application/octet-stream\r\n\r\n").encode()
    data = video.read_bytes()
    yield data[:1000]
    started.set()
    gate.wait(30)
    if give_up:
        raise GiveUp
    yield data[1000:]
    yield f"\r\n--{boundary}--\r\n".encode()


class SlowPost:
    """A POST /jobs in a thread whose upload stalls after its first bytes until ``resume()``."""

    def __init__(self, server: ApiServer, key: str | None = None, give_up: bool = False):
        self.gate, self.started = threading.Event(), threading.Event()
        self.response: httpx.Response | None = None
        boundary = uuid.uuid4().hex

        def run() -> None:
            with server.client(key) as c, contextlib.suppress(GiveUp):
                self.response = c.post(
                    "/jobs", content=_slow_body(clip(), boundary, self.gate, self.started, give_up),
                    headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
                )

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert self.started.wait(10)
        # the server is inside the upload: it holds a slot and has reserved the job's place
        r = redis.Redis.from_url(server.settings.redis_url)
        wait_for(lambda: r.zcard("backdrop:admission:reserved") >= 1, 10, what="the upload's reservation")

    def resume(self) -> httpx.Response:
        self.gate.set()
        self.thread.join(30)
        assert self.response is not None
        return self.response

    def abandon(self) -> None:
        self.gate.set()
        self.thread.join(30)
        assert self.response is None


def test_concurrent_upload_cap(redis_url: str, tmp_path: Path) -> None:
    env = base_env(redis_url, tmp_path, BACKDROP_MAX_CONCURRENT_UPLOADS="1")
    with ApiServer(settings_from(env)) as server:
        slow = SlowPost(server)
        with server.client() as c:
            r = post(c, clip())
            assert_problem(r, 503, "busy")
            assert int(r.headers["retry-after"]) > 0
            assert c.get("/jobs").status_code == 200  # the event loop still answers meanwhile
            first = slow.resume()
            assert first.status_code == 202, first.text
            assert post(c, clip()).status_code == 202  # the slot was given back


def test_an_abandoned_upload_gives_back_its_place_and_its_slot(redis_url: str, tmp_path: Path) -> None:
    env = base_env(redis_url, tmp_path, BACKDROP_MAX_CONCURRENT_UPLOADS="1", BACKDROP_MAX_QUEUE_DEPTH="1")
    with ApiServer(settings_from(env)) as server, server.client() as c:
        slow = SlowPost(server, give_up=True)
        assert redis.Redis.from_url(redis_url).zcard("backdrop:admission:reserved") == 1
        slow.abandon()
        wait_for(lambda: redis.Redis.from_url(redis_url).zcard("backdrop:admission:reserved") == 0, 10,
                 what="the reservation to be released")
        assert post(c, clip()).status_code == 202  # both the upload slot and the queue place are free
        assert not any(Path(env["BACKDROP_SPOOL_DIR"]).glob("upload-*")), "spooled upload left behind"


# --- Redis going away ----------------------------------------------------------------------------
@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A redis-server of this test's own, so the test can stop it."""
    port = free_port()
    proc = subprocess.Popen(
        [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    wait_for(lambda: _pings(redis.Redis.from_url(url)), 10, what="redis-server")
    yield url, proc
    if proc.poll() is None:
        proc.terminate()
        proc.wait(10)


def test_redis_down_is_503_dependency_unavailable(own_redis: tuple[str, subprocess.Popen[bytes]],
                                                   tmp_path: Path) -> None:
    url, proc = own_redis
    env = base_env(url, tmp_path, **auth_env())
    with ApiServer(settings_from(env)) as server, server.client(API_KEY) as c:
        job = post(c, clip())
        assert job.status_code == 202, job.text
        slow = SlowPost(server, API_KEY)  # its place is reserved, its upload under way
        proc.terminate()
        proc.wait(10)
        answers = [slow.resume(), c.get(f"/jobs/{job.json()['id']}"), c.get("/jobs"), post(c, clip()),
                   c.delete(f"/jobs/{job.json()['id']}")]
        for r in answers:
            assert_problem(r, 503, "dependency_unavailable")
            assert int(r.headers["retry-after"]) > 0
        assert not any(Path(env["BACKDROP_SPOOL_DIR"]).glob("upload-*")), "spooled uploads left behind"

"""Inputs by URL (``video_url``, ``background_url``): judged at POST, fetched by the worker through
the address guard, with precise codes for every way a fetch goes wrong.  Every server here listens on
loopback; private addresses are allowed by the test's settings where a fetch must succeed."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from stack import API_KEY, ApiServer, auth_env, base_env, data_path, settings_from, wait_for
from test_end_to_end import asl_clip

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "media"))
import bombs  # noqa: E402

from service import webhooks  # noqa: E402
from service.config import Settings  # noqa: E402
from service.errors import FetchFailed, FetchRefused, FetchTimeout, FetchTooLarge  # noqa: E402
from service.fetch import MAX_REDIRECTS, check_fetch_url, fetch_to_file  # noqa: E402


class Upstream:
    """An HTTP server on ``host`` serving named files, errors, redirects, a slow answer and a drip;
    it records the paths it was asked for."""

    def __init__(self, files: dict[str, bytes], host: str = "127.0.0.1"):
        self.files, self.hits = files, []
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                upstream.hits.append(self.path)
                path, _, query = self.path.partition("?")
                if path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", query.removeprefix("to="))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif path == "/slow":
                    time.sleep(3)
                    self._send(b"late")
                elif path == "/drip":
                    self.send_response(200)
                    self.end_headers()  # no Content-Length: the body runs until the connection closes
                    for _ in range(40):
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        time.sleep(0.1)
                elif path == "/unsized":
                    self.send_response(200)
                    self.end_headers()
                    self.wfile.write(upstream.files["/big"])
                elif path in upstream.files:
                    self._send(upstream.files[path])
                else:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

            def _send(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    u = Upstream({"/clip.mkv": asl_clip().read_bytes(), "/bg.jpg": data_path("backgrounds", "bg_1.jpg").read_bytes(),
                  "/big": b"y" * 5000})
    yield u
    u.close()


def fetch_settings(**extra: Any) -> Settings:
    return Settings(fetch_allow_private=True, fetch_timeout_s=0.5, fetch_deadline_s=1.5, **extra)


# --- the fetch itself, in process --------------------------------------------------------------------
def test_fetch_writes_the_body_and_follows_a_few_redirects(upstream: Upstream, tmp_path: Path) -> None:
    dest = tmp_path / "clip"
    url = f"{upstream.url}/redirect?to=/redirect?to=/clip.mkv"
    assert fetch_to_file(url, dest, fetch_settings()) == asl_clip().stat().st_size
    assert dest.read_bytes() == asl_clip().read_bytes()
    chain = "/clip.mkv"
    for _ in range(MAX_REDIRECTS + 1):
        chain = f"/redirect?to={chain}"
    with pytest.raises(FetchFailed, match="redirected more than"):
        fetch_to_file(upstream.url + chain, dest, fetch_settings())


def test_a_404_upstream_is_fetch_failed_with_its_status(upstream: Upstream, tmp_path: Path) -> None:
    with pytest.raises(FetchFailed) as e:
        fetch_to_file(f"{upstream.url}/missing.mp4", tmp_path / "x", fetch_settings())
    assert e.value.code == "fetch_failed" and e.value.upstream_status == 404 and "404" in e.value.message


def test_an_oversized_upstream_is_fetch_too_large(upstream: Upstream, tmp_path: Path) -> None:
    settings = fetch_settings(max_upload_bytes=1000)
    for path in ("/big", "/unsized"):  # declared too large, and found too large while reading
        with pytest.raises(FetchTooLarge) as e:
            fetch_to_file(f"{upstream.url}{path}", tmp_path / "x", settings)
        assert e.value.code == "fetch_too_large"
    assert (tmp_path / "x").stat().st_size <= 1000 + 64 * 1024  # stopped at the cap, not read whole
    assert fetch_to_file(f"{upstream.url}/big", tmp_path / "y", fetch_settings(max_upload_bytes=5000)) == 5000


def test_a_slow_upstream_is_fetch_timeout(upstream: Upstream, tmp_path: Path) -> None:
    t0 = time.monotonic()
    with pytest.raises(FetchTimeout):  # no answer within fetch_timeout_s
        fetch_to_file(f"{upstream.url}/slow", tmp_path / "x", fetch_settings())
    with pytest.raises(FetchTimeout, match="longer than allowed"):  # a byte every 0.1 s: past the deadline
        fetch_to_file(f"{upstream.url}/drip", tmp_path / "x", fetch_settings())
    assert time.monotonic() - t0 < 4


def test_a_redirect_to_a_private_address_is_refused(
    upstream: Upstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """127.0.0.1 stands for the public internet here (the guard is told so, nothing else changes);
    the upstream redirects to 127.0.0.2, a loopback address where another server listens: the hop is
    judged like the URL itself and refused, and that server is never reached."""
    judge = webhooks.is_public_address
    monkeypatch.setattr(webhooks, "is_public_address", lambda a: str(a) == "127.0.0.1" or judge(a))
    inside = Upstream({"/clip.mkv": b"secret"}, host="127.0.0.2")
    try:
        settings = Settings(fetch_allow_private=False, fetch_timeout_s=2)
        assert fetch_to_file(f"{upstream.url}/redirect?to=/bg.jpg", tmp_path / "ok", settings) > 0
        with pytest.raises(FetchRefused, match="127.0.0.2") as e:
            fetch_to_file(f"{upstream.url}/redirect?to={inside.url}/clip.mkv", tmp_path / "x", settings)
        assert e.value.code == "fetch_refused"
        assert inside.hits == []
    finally:
        inside.close()


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1/clip.mp4", "http://[::ffff:127.0.0.1]/x", "http://[64:ff9b::a9fe:a9fe]/",
     "http://169.254.169.254/latest/meta-data", "ftp://example.com/clip.mp4", "http://user:pw@example.com/x",
     "file:///etc/passwd", "not a url", "http://xn--/"],
)
def test_urls_refused_under_the_default_settings(url: str) -> None:
    with pytest.raises(FetchRefused):
        check_fetch_url(url, Settings())


def form(**fields: str) -> dict[str, tuple[None, str]]:
    """Text fields sent as multipart/form-data (as a browser form would), with no file."""
    return {k: (None, v) for k, v in fields.items()}


# --- through the API and a real worker -----------------------------------------------------------------
def test_a_private_url_is_refused_at_post_under_the_default_settings(
    redis_url: str, tmp_path: Path, upstream: Upstream
) -> None:
    env = base_env(redis_url, tmp_path, **auth_env())
    with ApiServer(settings_from(env)) as api, api.client(API_KEY) as c:
        for body in ({"video_url": f"{upstream.url}/clip.mkv", "background_blur": True},
                     {"video_url": "https://93.184.216.34/clip.mp4", "background_url": f"{upstream.url}/bg.jpg"},
                     {"video_url": "http://xn--/", "background_blur": True}):  # a malformed IDNA host
            r = c.post("/jobs", json=body)
            assert r.status_code == 422, r.text
            assert r.headers["content-type"] == "application/problem+json" and r.json()["code"] == "fetch_refused"
        r = c.post("/jobs", files=form(video_url=f"{upstream.url}/clip.mkv", background_blur="true"))
        assert r.status_code == 422 and r.json()["code"] == "fetch_refused", r.text
        assert c.get("/jobs").json()["count"] == 0
        # the OpenAPI document describes both bodies of POST /jobs
        body = c.get("/openapi.json").json()["paths"]["/jobs"]["post"]["requestBody"]["content"]
        assert {"video_url", "video_upload_id", "background_color"} <= set(body["application/json"]["schema"]["properties"])
        assert {"video", "video_url", "background_upload_id"} <= set(body["multipart/form-data"]["schema"]["properties"])
    assert upstream.hits == []  # the API never fetches


def test_url_inputs_run_end_to_end_and_fetch_errors_fail_the_job(
    redis_url: str, tmp_path: Path, worker_factory: Any, upstream: Upstream
) -> None:
    # a file fetched is read first in a child process limited to a second of CPU here
    env = base_env(redis_url, tmp_path, **auth_env(), BACKDROP_FETCH_ALLOW_PRIVATE="true",
                   BACKDROP_INSPECT_CPU_SECONDS="1")
    upstream.files["/tags.nut"] = bombs.nut_tag_bomb(tmp_path / "tags.nut").read_bytes()
    worker = worker_factory(env)
    with ApiServer(settings_from(env)) as api, api.client(API_KEY, timeout=60) as c:
        body = {"video_url": f"{upstream.url}/clip.mkv", "background_url": f"{upstream.url}/bg.jpg",
                "output_format": "mp4", "harmonize": 0}
        r = c.post("/jobs", json=body, headers={"Idempotency-Key": "url-job-1"})
        assert r.status_code == 202, r.text
        job = r.json()
        replay = c.post("/jobs", json=body, headers={"Idempotency-Key": "url-job-1"})  # same job, not a second
        assert replay.json()["id"] == job["id"] and replay.headers["idempotent-replayed"] == "true"
        other = c.post("/jobs", json={**body, "video_url": f"{upstream.url}/other.mkv"}, headers={"Idempotency-Key": "url-job-1"})
        assert other.status_code == 422 and other.json()["code"] == "idempotency_key_reused"
        assert job["video"] is None and job["progress"]["frames_total"] == 0  # not known before the worker looks
        missing = c.post("/jobs", files=form(video_url=f"{upstream.url}/missing.mp4", background_color="#00ff00"))
        assert missing.status_code == 202, missing.text
        # webm shows no background: one given anyway is never fetched (this one would be a 404)
        alpha = c.post("/jobs", json={"video_url": f"{upstream.url}/clip.mkv", "background_url": f"{upstream.url}/unused.jpg",
                                      "output_format": "webm"})
        assert alpha.status_code == 202, alpha.text
        bomb = c.post("/jobs", json={"video_url": f"{upstream.url}/tags.nut", "background_color": "#00ff00"})
        assert bomb.status_code == 202, bomb.text
        assert upstream.hits == []  # the API never fetches
        worker.wait_ready()

        def final(job_id: str) -> dict[str, Any] | None:
            j = c.get(f"/jobs/{job_id}").json()
            return j if j["status"] in ("succeeded", "failed") else None

        done = wait_for(lambda: final(job["id"]), 600, 0.3, "the URL job")
        assert done["status"] == "succeeded", (done, worker.log())
        assert done["video"]["frames"] > 0 and done["video"]["width"] > 0
        assert done["progress"]["frames_total"] == done["video"]["frames"] == done["result"]["frames"]
        assert "/clip.mkv" in upstream.hits and "/bg.jpg" in upstream.hits
        failed = wait_for(lambda: final(missing.json()["id"]), 120, 0.3, "the 404 job")
        assert failed["status"] == "failed" and failed["error"]["code"] == "fetch_failed", failed
        assert "404" in failed["error"]["message"]
        # headers too costly to read (30,000 NUT tags, seconds of CPU): refused, as an upload is
        refused = wait_for(lambda: final(bomb.json()["id"]), 120, 0.3, "the tag bomb's job")
        assert refused["status"] == "failed" and refused["error"]["code"] == "video_too_large", refused
        shown = wait_for(lambda: final(alpha.json()["id"]), 300, 0.3, "the webm job")
        assert shown["status"] == "succeeded", shown
        assert "/unused.jpg" not in upstream.hits

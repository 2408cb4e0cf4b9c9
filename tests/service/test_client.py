"""``service.client``: the sync and async clients against the real API and a real worker, typed
errors, the retry of a submit whose answer was lost (a loopback TCP proxy drops it), which must
not make two jobs, and a download cut off midway, taken up where it stopped.  ``backdrop submit`` through it."""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from stack import (
    API_KEY,
    OTHER_KEY,
    ROOT,
    ApiServer,
    auth_env,
    base_env,
    count_frames,
    finish_job,
    make_env,
    running_job,
    s3_env,
    settings_from,
    succeeded_job,
)
from test_end_to_end import asl_clip

from service.client import ApiError, AsyncBackdrop, Backdrop, JobFailed, Upload


class FaultyProxy:
    """A TCP proxy on 127.0.0.1 to ``target_port``.  The first ``times`` connections whose request
    carries ``trigger`` are forwarded to the API, which answers; the client gets only the first
    ``keep`` bytes of that answer before its connection is closed, as a network that fails after
    the server acted would (``keep=0``: the answer is lost whole).  With ``busy``, the first ``times``
    such requests are not forwarded: the proxy answers them itself with ``busy`` (a whole HTTP
    answer), as a gateway in front of an API that is restarting would."""

    def __init__(self, target_port: int, trigger: bytes, keep: int = 0, times: int = 1, busy: bytes = b""):
        self.target_port, self.trigger, self.keep, self.left, self.busy = target_port, trigger, keep, times, busy
        self.cut = 0
        self.down = False  # while True, every connection is closed as it comes: the API is gone
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            if self.down:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            state = {"faulty": False}
            threading.Thread(target=self._pipe, args=(client, upstream, state, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, state, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, state: dict[str, bool], answers: bool) -> None:
        budget = self.keep
        try:
            while data := src.recv(65536):
                if not answers and self.trigger in data:
                    with self.lock:
                        if self.left > 0:
                            self.left -= 1
                            state["faulty"] = True
                    if state["faulty"] and self.busy:
                        self.cut += 1
                        src.sendall(self.busy)  # answered here; the API never sees the request
                        break
                if answers and state["faulty"]:
                    dst.sendall(data[:budget])
                    budget -= min(budget, len(data))
                    if budget == 0:
                        self.cut += 1  # the API has answered; the client hears only the start of it
                        break
                    continue
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.sock.close()


def test_client_end_to_end_retry_errors_and_cli(redis_url: str, tmp_path: Path, worker_factory: Any) -> None:
    (tmp_path / "spool").mkdir()
    env = base_env(redis_url, tmp_path, **auth_env())
    worker = worker_factory(dict(env, BACKDROP_FAULT_INJECTION="slow"))  # polls see it running on any machine
    clip = asl_clip()
    with ApiServer(settings_from(env)) as api:
        proxy = FaultyProxy(api.port, b"POST /jobs ")
        try:
            with Backdrop(proxy.url, API_KEY, backoff_s=0.1) as bd:
                # the first answer is lost; the retry carries the same Idempotency-Key: one job
                job = bd.submit(clip, background="#00ff00", output_format="mp4")
                assert proxy.cut == 1
                listed = bd.list_jobs()
                assert listed["count"] == 1 and listed["data"][0]["id"] == job["id"]

                seen: list[dict[str, Any]] = []
                worker.wait_ready()
                done = bd.wait(job["id"], progress=seen.append, timeout=600, poll_s=0.2)
                assert done["status"] == "succeeded", worker.log()
                assert seen[-1]["status"] == "succeeded"
                assert any(s["status"] == "running" and 0 < s["progress"]["frames_done"] for s in seen)
                out = bd.download(job["id"], tmp_path / "out.mp4")
                assert count_frames(out)[0] == done["result"]["frames"]

                # typed errors carry the problem's fields
                with pytest.raises(ApiError) as e:
                    bd.submit(clip, background="#00ff00", model="nope")
                assert e.value.code == "unknown_model" and e.value.status == 422 and e.value.title and e.value.detail
                with pytest.raises(ApiError) as e:
                    bd.submit("http://127.0.0.1:9/clip.mp4", background="blur")
                assert e.value.code == "fetch_refused" and e.value.status == 422
                with pytest.raises(ApiError) as e:
                    bd.get("0" * 32)
                assert e.value.code == "job_not_found" and e.value.status == 404

                # a direct upload, then a job from it, canceled while it waits or runs
                up = bd.upload(clip)
                assert isinstance(up, Upload)
                job2 = bd.submit(up, background="blur", output_format="mp4")
                bd.cancel(job2["id"])
                with pytest.raises(JobFailed) as failed:
                    bd.wait(job2["id"], timeout=120, poll_s=0.2)
                assert failed.value.code == "canceled" and failed.value.job["status"] == "canceled"
            with Backdrop(api.url, OTHER_KEY) as other, pytest.raises(ApiError) as e:
                other.get(job["id"])
            assert e.value.code == "job_not_found"
            with Backdrop(api.url, "x" * 40, max_retries=0) as nobody, pytest.raises(ApiError) as e:
                nobody.list_jobs()
            assert e.value.code == "unauthorized" and e.value.status == 401

            async def async_flow() -> dict[str, Any]:
                async with AsyncBackdrop(api.url, API_KEY, backoff_s=0.1) as abd:
                    up = await abd.upload(clip)
                    j = await abd.submit(up, background="#0000ff", output_format="mp4")
                    d = await abd.wait(j["id"], timeout=600, poll_s=0.2)
                    await abd.download(j["id"], tmp_path / "async.mp4")
                    return d

            adone = asyncio.run(async_flow())
            assert adone["status"] == "succeeded"
            assert count_frames(tmp_path / "async.mp4")[0] == adone["result"]["frames"]

            # `backdrop submit` goes through the client
            out = tmp_path / "cli.mp4"
            cli = subprocess.run(
                [sys.executable, "-m", "service.startup", "submit", str(clip), "-b", "#ff0000", "-o", str(out),
                 "--api", api.url, "--key", API_KEY, "--poll", "0.2", "-q"],
                cwd=ROOT, env=make_env(env), capture_output=True, text=True, timeout=600,
            )
            assert cli.returncode == 0, cli.stderr
            assert count_frames(out)[0] > 0
            bad = subprocess.run(
                [sys.executable, "-m", "service.startup", "submit", str(clip), "--model", "nope",
                 "--api", api.url, "--key", API_KEY],
                cwd=ROOT, env=make_env(env), capture_output=True, text=True, timeout=120,
            )
            assert bad.returncode == 2 and "unknown_model" in bad.stderr
            with Backdrop(api.url, API_KEY) as bd:
                assert bd.list_jobs()["count"] == 4  # the lost-answer submit made one job, not two
        finally:
            proxy.close()


def test_blur_specs_become_the_api_fields() -> None:
    from service.client import _plan

    assert _plan("in.mp4", "blur", {})[0] == {"background_blur": True}
    assert _plan("in.mp4", "blur:0.6", {})[0] == {"background_blur": True, "background_blur_strength": "0.6"}
    assert _plan("in.mp4", "#112233", {})[0] == {"background_color": "#112233"}


#: Both clients upload the file (a PUT) and submit it (multipart); prints the uploads' ids, the
#: submit's refusal and the process's peak memory.
_SEND_BOTH_WAYS = """
import asyncio, json, sys
from service.client import ApiError, AsyncBackdrop, Backdrop
url, key, path, part = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]) or None
codes = []
with Backdrop(url, key) as bd:
    ids = [bd.upload(path, part_size=part).id]
    try:
        bd.submit(path, background="#000000")
    except ApiError as e:
        codes.append(e.code)
async def main():
    async with AsyncBackdrop(url, key) as abd:
        ids.append((await abd.upload(path, part_size=part)).id)
        try:
            await abd.submit(path, background="#000000")
        except ApiError as e:
            codes.append(e.code)
asyncio.run(main())
# VmHWM: this process's own peak (ru_maxrss would count the test's memory at the fork)
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"ids": ids, "codes": codes, "peak_mb": peak / 1024}))
"""


def _send_both_ways(api: ApiServer, env: dict[str, str], path: Path, part_size: int = 0) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", _SEND_BOTH_WAYS, api.url, API_KEY, str(path), str(part_size)],
                          cwd=ROOT, env=make_env(env), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    sent: dict[str, Any] = json.loads(proc.stdout)
    # each submit went whole to the API, which read the bytes and found no video in them
    assert sent["codes"] == ["not_a_video", "not_a_video"], sent
    return sent


def _stored_digest(api: ApiServer, upload_id: str, tmp_path: Path) -> str:
    objects = api.app.state.objects
    (key,) = objects.keys(f"uploads/{upload_id}/")
    copy = tmp_path / f"stored-{upload_id}"
    objects.get_file(key, copy)
    return hashlib.sha256(copy.read_bytes()).hexdigest()


def test_clients_send_a_file_a_chunk_at_a_time(redis_url: str, tmp_path: Path) -> None:
    """A file is read as it is sent, never held whole: the async client read each file into memory
    first (a 400 MB upload peaked at 1.2 GB); a 2 GiB video is allowed."""
    env = base_env(redis_url, tmp_path, **auth_env())
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(96 * 1024**2))
    with ApiServer(settings_from(env)) as api:
        sent = _send_both_ways(api, env, big)
        want = hashlib.sha256(big.read_bytes()).hexdigest()
        assert [_stored_digest(api, i, tmp_path) for i in sent["ids"]] == [want, want]
    assert sent["peak_mb"] < 80, sent  # the interpreter and httpx take ~40 MB; the file is 96 MB


def test_clients_upload_in_parts_to_s3(redis_url: str, tmp_path: Path, s3_endpoint: str) -> None:
    """Asked for parts (or over 100 MiB on S3), each client PUTs every part, from the file, to its
    presigned URL and completes the upload: the stored object is the file.  A result downloads
    from its presigned URL."""
    env = base_env(redis_url, tmp_path, **auth_env(), **s3_env(s3_endpoint))
    src = tmp_path / "parts.mp4"
    src.write_bytes(os.urandom(11 * 1024**2 + 123))  # three parts, the last one short
    with ApiServer(settings_from(env)) as api:
        sent = _send_both_ways(api, env, src, part_size=5 * 1024**2)
        want = hashlib.sha256(src.read_bytes()).hexdigest()
        assert [_stored_digest(api, i, tmp_path) for i in sent["ids"]] == [want, want]
        # and a result comes back through the redirect to its presigned URL
        job_id = succeeded_job(api.settings, src.read_bytes())
        for kind in ("sync", "async"):
            _download(kind, api.url, job_id, tmp_path / f"{kind}.mp4")
            assert (tmp_path / f"{kind}.mp4").read_bytes() == src.read_bytes(), kind


def _download(kind: str, url: str, job_id: str, out: Path, max_retries: int = 4) -> None:
    if kind == "sync":
        with Backdrop(url, API_KEY, max_retries=max_retries, backoff_s=0.05) as bd:
            bd.download(job_id, out)
        return

    async def fetch() -> None:
        async with AsyncBackdrop(url, API_KEY, max_retries=max_retries, backoff_s=0.05) as abd:
            await abd.download(job_id, out)

    asyncio.run(fetch())


def test_a_download_cut_off_is_taken_up_where_it_stopped(redis_url: str, tmp_path: Path) -> None:
    """The connection drops twice partway through the result: each client asks for the rest (a
    Range from the bytes it has) and the file comes out whole.  Without the retries the transport
    error reached the caller and a .part file stayed behind."""
    env = base_env(redis_url, tmp_path, **auth_env())
    payload = os.urandom(3 * 1024**2 + 17)
    with ApiServer(settings_from(env)) as api:
        job_id = succeeded_job(api.settings, payload)
        for run in ("sync", "async"):
            proxy = FaultyProxy(api.port, b"/result", keep=700_000, times=2)
            out = tmp_path / f"{run}.mp4"
            try:
                _download(run, proxy.url, job_id, out)
            finally:
                proxy.close()
            assert proxy.cut == 2 and out.read_bytes() == payload, run
            assert not out.with_name(out.name + ".part").exists()
        # cut off more times than the retries allow: a connection_error, and no file left behind
        proxy = FaultyProxy(api.port, b"/result", keep=700_000, times=5)
        out = tmp_path / "lost.mp4"
        try:
            with pytest.raises(ApiError) as e:
                _download("sync", proxy.url, job_id, out, max_retries=2)
        finally:
            proxy.close()
        assert e.value.code == "connection_error" and proxy.cut == 3
        assert not out.exists() and not out.with_name(out.name + ".part").exists()


def _busy(retry_after: str) -> bytes:
    """A gateway's 503 (plain text, as nginx or a load balancer sends it) with ``Retry-After``."""
    body = b"503 Service Temporarily Unavailable"
    return (b"HTTP/1.1 503 Service Temporarily Unavailable\r\nContent-Type: text/plain\r\n"
            b"Retry-After: " + retry_after.encode() + b"\r\nContent-Length: " + str(len(body)).encode()
            + b"\r\nConnection: close\r\n\r\n" + body)


def test_busy_answers_are_retried_after_the_wait_they_ask(redis_url: str, tmp_path: Path) -> None:
    """A 503 from a gateway is tried again after its Retry-After (in seconds or as an HTTP date),
    not after the client's own short backoff, by both clients, for an API call and for the
    download; once the retries are spent it is raised with its status and the wait it asked."""
    env = base_env(redis_url, tmp_path, **auth_env())
    payload = os.urandom(300_000)
    with ApiServer(settings_from(env)) as api:
        job_id = succeeded_job(api.settings, payload)
        for kind in ("sync", "async"):
            for seconds, least in (("1", 2.0), ("", 1.0)):
                # the date is to the second, 2-3 s on: the first wait is that long, the second none
                retry_after = seconds or email.utils.formatdate(time.time() + 3, usegmt=True)
                proxy = FaultyProxy(api.port, f"/jobs/{job_id}".encode(), times=2, busy=_busy(retry_after))
                out = tmp_path / f"{kind}.mp4"
                started = time.monotonic()
                try:
                    job = _get(kind, proxy.url, job_id)  # two 503s, then the job
                    proxy.left = 1
                    _download(kind, proxy.url, job_id, out)  # one 503, then the file
                finally:
                    proxy.close()
                assert job["status"] == "succeeded" and out.read_bytes() == payload, kind
                assert proxy.cut == 3 and time.monotonic() - started >= least, (kind, retry_after)
        proxy = FaultyProxy(api.port, b"/jobs/", times=3, busy=_busy("7"))
        try:
            with Backdrop(proxy.url, API_KEY, max_retries=2, backoff_s=0.05, max_wait_s=0.2) as bd:
                with pytest.raises(ApiError) as e:
                    bd.get(job_id)
        finally:
            proxy.close()
        assert (e.value.code, e.value.status, e.value.retry_after_s, proxy.cut) == ("http_503", 503, 7.0, 3)


def _get(kind: str, url: str, job_id: str) -> dict[str, Any]:
    if kind == "sync":
        with Backdrop(url, API_KEY, backoff_s=0.05) as bd:
            return bd.get(job_id)

    async def get() -> dict[str, Any]:
        async with AsyncBackdrop(url, API_KEY, backoff_s=0.05) as abd:
            return await abd.get(job_id)

    return asyncio.run(get())


def _wait(kind: str, url: str, job_id: str, ended: dict[str, Any]) -> None:
    """``wait`` for the job with one client or the other; what it returned or raised into ``ended``."""
    try:
        if kind == "sync":
            with Backdrop(url, API_KEY, max_retries=1, backoff_s=0.05) as bd:
                ended["job"] = bd.wait(job_id, poll_s=0.1, timeout=60)
            return

        async def poll() -> dict[str, Any]:
            async with AsyncBackdrop(url, API_KEY, max_retries=1, backoff_s=0.05) as abd:
                return await abd.wait(job_id, poll_s=0.1, timeout=60)

        ended["job"] = asyncio.run(poll())
    except Exception as e:  # noqa: BLE001 - the test reads it
        ended["error"] = e


def test_wait_polls_through_an_outage(redis_url: str, tmp_path: Path) -> None:
    """The API goes away for a while (restarted, redeployed) as a job runs: ``wait`` polls on
    through the failures and returns the job as it ended.  It raised connection_error once one
    poll's own retries were spent (here one, 0.05 s on)."""
    env = base_env(redis_url, tmp_path, **auth_env())
    with ApiServer(settings_from(env)) as api:
        for kind in ("sync", "async"):
            job_id = running_job(api.settings)
            proxy = FaultyProxy(api.port, b"no trigger")
            ended: dict[str, Any] = {}
            thread = threading.Thread(target=_wait, args=(kind, proxy.url, job_id, ended))
            thread.start()
            time.sleep(0.5)
            proxy.down = True
            time.sleep(2.0)
            finish_job(api.settings, job_id, b"video")
            proxy.down = False
            thread.join(30)
            proxy.close()
            assert ended.get("job", {}).get("status") == "succeeded", (kind, ended)
        # an outage longer than outage_s is an error, as before
        job_id = running_job(api.settings)
        proxy = FaultyProxy(api.port, b"no trigger")
        proxy.down = True
        with Backdrop(proxy.url, API_KEY, max_retries=1, backoff_s=0.05) as bd, pytest.raises(ApiError) as e:
            bd.wait(job_id, poll_s=0.1, outage_s=1.0)
        proxy.close()
        assert e.value.code == "connection_error"
        # and a refusal is not an outage: raised at once
        with Backdrop(api.url, API_KEY) as bd, pytest.raises(ApiError) as e:
            bd.wait("0" * 32, poll_s=0.1)
        assert e.value.code == "job_not_found"


def test_a_resumed_download_takes_only_the_rest() -> None:
    """Where a download resumes from byte n: a 206 from n is appended, a whole file (200) replaces
    what was written, and a 206 from elsewhere is refused rather than written at the wrong place."""
    import io

    import httpx

    from service.client import _take_up

    f = io.BytesIO(b"x" * 1000)
    f.seek(1000)
    _take_up(httpx.Response(206, headers={"content-range": "bytes 1000-1999/2000"}), f)
    assert f.tell() == 1000
    with pytest.raises(ApiError) as e:
        _take_up(httpx.Response(206, headers={"content-range": "bytes 500-1999/2000"}), f)
    assert e.value.code == "unexpected_range" and f.tell() == 1000
    _take_up(httpx.Response(200), f)
    assert f.tell() == 0 and f.getvalue() == b""


class _NotBackdrop:
    """A local HTTP server that answers as something other than Backdrop would: ``mode`` says how."""

    def __init__(self, mode: str):
        import http.server

        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _send(self, status: int, body: bytes, ctype: str = "application/json", **headers: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if outer.mode == "html":
                    self._send(202, b"<html><body>Accepted</body></html>", "text/html")
                elif outer.mode == "array":
                    self._send(202, b"[1, 2]")
                else:
                    self._send(202, json.dumps({"id": "j1", "status": "queued", "progress": {}}).encode())

            def do_GET(self) -> None:  # noqa: N802
                if self.path.endswith("/result"):
                    self._send(302, b"", Location=self.path)  # to itself, without end
                elif outer.mode == "no_progress":
                    self._send(200, json.dumps({"id": "j1", "status": "running"}).encode())
                else:
                    self._send(200, json.dumps({"id": "j1", "status": "succeeded", "progress": {},
                                                "result": {"url": "/jobs/j1/result"}}).encode())

            def log_message(self, *args: Any) -> None:
                pass

        self.mode = mode
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("mode", ["html", "array", "no_progress", "loop"])
def test_a_server_that_is_not_backdrop_is_one_line(tmp_path: Path, mode: str) -> None:
    """``backdrop submit`` against a server that answers otherwise than Backdrop (an HTML page, a
    JSON array, a job without progress, a result that redirects to itself): one line with
    ``unexpected_response``, exit 2, and no file left (tracebacks before: JSONDecodeError,
    TypeError, KeyError, TooManyRedirects)."""
    server = _NotBackdrop(mode)
    try:
        proc = subprocess.run([sys.executable, "-m", "service.startup", "submit", str(asl_clip()), "-b", "#00ff00",
                               "-o", str(tmp_path / "out.mp4"), "--api", server.url, "--poll", "0.1"],
                              capture_output=True, text=True, timeout=120, cwd=ROOT)
    finally:
        server.close()
    assert proc.returncode == 2 and "unexpected_response" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and list(tmp_path.iterdir()) == [], proc.stderr

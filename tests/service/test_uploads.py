"""Direct uploads (``POST /uploads``): the bytes go to the store without crossing ``POST /jobs``,
which takes the upload's id.  Real parts: redis-server, uvicorn, moto's S3 server, Celery workers."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from stack import API_KEY, OTHER_KEY, ApiServer, auth_env, base_env, data_path, s3_env, settings_from
from test_end_to_end import asl_clip, poll
from videoutil import remux

from service.jobs import JobStore
from service.storage import LocalStore
from service.workers.housekeeping import sweep_uploads


def reserve(c: httpx.Client, path: Path, content_type: str = "application/octet-stream", **extra: Any) -> dict[str, Any]:
    r = c.post("/uploads", json={"filename": path.name, "content_type": content_type, "size": path.stat().st_size, **extra})
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def put(upload: dict[str, Any], data: bytes) -> httpx.Response:
    """PUT the bytes as any HTTP client would: no API key, only the headers the upload named."""
    return httpx.put(upload["url"], content=data, headers=upload["headers"], trust_env=False, timeout=60)


def job_env(redis_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    """``base_env``, its spool folder made (the worker makes its work folder there; nothing else
    makes it when no multipart request passed through the API)."""
    (tmp_path / "spool").mkdir(exist_ok=True)
    return base_env(redis_url, tmp_path, **auth_env(), **extra)


def test_local_store_upload_then_a_job_from_its_id(redis_url: str, tmp_path: Path, worker_factory: Any) -> None:
    env = job_env(redis_url, tmp_path)
    worker = worker_factory(env)
    clip, bg = asl_clip(), data_path("backgrounds", "bg_1.jpg")
    with ApiServer(settings_from(env)) as api, api.client(API_KEY) as c:
        video_up, bg_up = reserve(c, clip, "video/x-matroska"), reserve(c, bg, "image/jpeg")
        assert video_up["method"] == "PUT" and video_up["url"].startswith(api.url + "/uploads/")
        assert video_up["headers"] == {"Content-Type": "video/x-matroska"} and video_up["expires_at"]
        assert put(video_up, clip.read_bytes() + b"extra").json()["code"] == "upload_too_large"  # past the declared size
        assert put(video_up, clip.read_bytes()).status_code == 204
        assert put(bg_up, bg.read_bytes()).status_code == 204
        stolen = dict(video_up, url=video_up["url"].rsplit("=", 1)[0] + "=wrong")
        assert put(stolen, clip.read_bytes()).json()["code"] == "upload_not_found"

        # one upload named as video and background: refused before either is claimed, so it stays usable
        same = c.post("/jobs", json={"video_upload_id": video_up["id"], "background_upload_id": video_up["id"]})
        assert same.status_code == 422 and same.json()["code"] == "validation_error", same.text
        r = c.post("/jobs", json={"video_upload_id": video_up["id"], "background_upload_id": bg_up["id"]})
        assert r.status_code == 202, r.text
        job = r.json()
        assert job["video"]["frames"] > 0  # the local file was inspected where it lies
        objects = tmp_path / "objects"
        assert not (objects / "uploads" / video_up["id"]).exists() or not any((objects / "uploads" / video_up["id"]).iterdir())
        assert sorted(p.name for p in (objects / "jobs" / job["id"]).iterdir()) == ["background.jpg", "input.mkv"]
        again = c.post("/jobs", json={"video_upload_id": video_up["id"], "background_color": "#000000"})
        assert again.status_code == 422 and again.json()["code"] == "upload_not_found"  # used once only
        worker.wait_ready()
        done = poll(c, job["id"], {"succeeded", "failed"}, 600)
        assert done["status"] == "succeeded", (done, worker.log())
        assert done["result"]["frames"] == job["video"]["frames"]


def test_unknown_foreign_incomplete_and_expired_uploads(redis_url: str, tmp_path: Path) -> None:
    env = base_env(redis_url, tmp_path, **auth_env(), BACKDROP_UPLOAD_TTL_S="1")
    clip = asl_clip()
    with ApiServer(settings_from(env)) as api, api.client(API_KEY) as c, api.client(OTHER_KEY) as other:
        for bad in ("0" * 32, "not-an-id", "../../etc"):
            r = c.post("/jobs", json={"video_upload_id": bad, "background_blur": True})
            assert r.status_code == 422 and r.json()["code"] == "upload_not_found", r.text
        up = reserve(c, clip)
        r = c.post("/jobs", json={"video_upload_id": up["id"], "background_blur": True})
        assert r.status_code == 409 and r.json()["code"] == "upload_incomplete", r.text
        assert put(up, clip.read_bytes()).status_code == 204
        r = other.post("/jobs", json={"video_upload_id": up["id"], "background_blur": True})
        assert r.status_code == 422 and r.json()["code"] == "upload_not_found"  # another tenant's
        big = c.post("/uploads", json={"filename": "x.mp4", "size": api.settings.max_upload_bytes + 1})
        assert big.status_code == 413 and big.json()["code"] == "upload_too_large"
        for size in (True, 10.0, "10", 0):  # a size is a whole number of bytes, never a boolean taken as 1
            r = c.post("/uploads", json={"filename": "x.mp4", "size": size})
            assert r.status_code == 422 and r.json()["code"] == "validation_error", (size, r.text)
        stored = tmp_path / "objects" / "uploads" / up["id"]
        assert any(stored.iterdir())
        late = reserve(c, clip)

        def slow_body() -> Any:  # the upload expires (upload_ttl_s) while its bytes arrive
            data = clip.read_bytes()
            yield data[:1000]
            time.sleep(1.5)
            yield data[1000:]

        r = httpx.put(late["url"], content=slow_body(), headers=late["headers"], trust_env=False, timeout=60)
        assert r.status_code == 422 and r.json()["code"] == "upload_not_found", r.text
        assert not any((tmp_path / "objects" / "uploads" / late["id"]).glob("*"))  # no file left that nothing sweeps
        r = c.post("/jobs", json={"video_upload_id": up["id"], "background_blur": True})  # past upload_ttl_s
        assert r.status_code == 422 and r.json()["code"] == "upload_not_found"
        assert c.get("/jobs").json()["count"] == 0
        # the housekeeping sweep deletes the object of the upload that expired unused
        store = JobStore.from_settings(api.settings)
        counts = sweep_uploads(store, LocalStore(tmp_path / "objects").delete_prefix)
        assert counts["uploads_deleted"] == 2 and not stored.exists()  # both expired unused


def test_presigned_upload_to_s3_then_a_job_from_its_id(
    redis_url: str, tmp_path: Path, worker_factory: Any, s3_endpoint: str
) -> None:
    env = job_env(redis_url, tmp_path, **s3_env(s3_endpoint))
    worker = worker_factory(env)
    clip = asl_clip()
    with ApiServer(settings_from(env)) as api, api.client(API_KEY) as c:
        up = reserve(c, clip, "video/x-matroska")
        assert up["url"].startswith(s3_endpoint) and "X-Amz-Signature" in up["url"]
        assert put(up, clip.read_bytes()).status_code == 200  # straight to the store
        r = c.post("/jobs", json={"video_upload_id": up["id"], "background_color": "#3366ff"})
        assert r.status_code == 202, r.text
        job = r.json()
        assert job["video"] is None  # on S3 only the leading bytes were checked: the worker inspects it
        objects = api.app.state.objects
        assert objects.keys(f"uploads/{up['id']}/") == []  # moved inside the store to the job's prefix
        assert [k.rsplit("/", 1)[1] for k in objects.keys(f"jobs/{job['id']}/")] == ["input.mkv"]
        worker.wait_ready()
        done = poll(c, job["id"], {"succeeded", "failed"}, 600)
        assert done["status"] == "succeeded", (done, worker.log())
        assert done["video"]["frames"] == done["result"]["frames"] > 0


def test_presigned_multipart_upload_to_s3(redis_url: str, tmp_path: Path, s3_endpoint: str) -> None:
    env = base_env(redis_url, tmp_path, **auth_env(), **s3_env(s3_endpoint))
    part = 5 * 1024 * 1024
    data = b"\x00not a video" + bytes(range(256)) * (11 * 1024 * 1024 // 256)
    src = tmp_path / "big.mp4"
    src.write_bytes(data)
    with ApiServer(settings_from(env)) as api, api.client(API_KEY) as c:
        up = reserve(c, src, "video/mp4", part_size=part)
        mp = up["multipart"]
        assert up["url"] is None and mp["part_size"] == part and [p["number"] for p in mp["parts"]] == [1, 2, 3]
        r = c.post(f"/uploads/{up['id']}/complete", json={"parts": [{"number": 1, "etag": '"nope"'}]})
        assert r.status_code == 409 and r.json()["code"] == "upload_incomplete", r.text
        r = c.post("/jobs", json={"video_upload_id": up["id"], "background_blur": True})
        assert r.status_code == 409 and r.json()["code"] == "upload_incomplete"
        etags = []
        for p in mp["parts"]:
            chunk = data[(p["number"] - 1) * part : p["number"] * part]
            resp = httpx.put(p["url"], content=chunk, trust_env=False, timeout=60)
            assert resp.status_code == 200, resp.text
            etags.append({"number": p["number"], "etag": resp.headers["etag"]})
        r = c.post(mp["complete_url"].removeprefix(api.url), json={"parts": etags})
        assert r.status_code == 204, r.text
        assert api.app.state.objects.size(f"uploads/{up['id']}/file.mp4") == len(data)
        # the limits are checked on the stored object's leading bytes (a ranged read), not a download
        r = c.post("/jobs", json={"video_upload_id": up["id"], "background_blur": True})
        assert r.status_code == 415 and r.json()["code"] == "not_a_video", r.text


def test_bodies_read_whole_are_capped(redis_url: str, tmp_path: Path) -> None:
    """POST /uploads and /complete take small JSON that FastAPI reads whole before validating it: a
    body past ``MAX_BODY_BYTES`` is refused (413) whether its length is declared or it comes chunked,
    instead of being held in memory; media bodies (multipart, the upload PUT) are not capped by it."""
    from service.api.body_limits import MAX_BODY_BYTES

    env = job_env(redis_url, tmp_path)
    huge = {"filename": "a" * (MAX_BODY_BYTES + 10), "size": 10}
    with ApiServer(settings_from(env)) as api, api.client(API_KEY) as c:
        declared = c.post("/uploads", json=huge)
        assert declared.status_code == 413 and declared.json()["code"] == "upload_too_large", declared.text
        payload = json.dumps(huge).encode()
        chunked = c.post("/uploads", content=(payload[i : i + 65536] for i in range(0, len(payload), 65536)),
                         headers={"Content-Type": "application/json"})
        assert chunked.status_code == 413 and chunked.json()["code"] == "upload_too_large", chunked.text
        assert "chunked" in chunked.request.headers.get("transfer-encoding", "")
        r = c.post("/uploads/0123/complete", json={"parts": [{"number": 1, "etag": "x" * (MAX_BODY_BYTES + 10)}]})
        assert r.status_code == 413, r.text
        # a body that calls itself multipart is capped all the same where its route reads it whole,
        # with a key or without: it was taken for a streamed one and read whole before the key was checked
        multipart = {"Content-Type": "multipart/form-data; boundary=x"}
        for path in ("/uploads", "/uploads/0123/complete"):
            for key in (True, False):
                headers = multipart if key else {**multipart, "Authorization": ""}
                r = c.post(path, content=(b"a" * 65536 for _ in range(2 * MAX_BODY_BYTES // 65536)), headers=headers)
                assert r.status_code == 413 and r.json()["code"] == "upload_too_large", (path, key, r.text)
        # a media upload larger than the cap still goes through, by PUT
        big = tmp_path / "big.bin"
        big.write_bytes(os.urandom(MAX_BODY_BYTES * 2))
        up = reserve(c, big)
        assert put(up, big.read_bytes()).status_code == 204
        assert c.post("/uploads", json={"filename": "x.mp4", "size": 10}).status_code == 201  # small JSON: as before


def _slow_upload_answer(port: int, drip: bytes = b"", every_s: float = 0.0) -> tuple[bytes, float]:
    """Send the headers and the start of a 10 MB multipart upload, then ``drip`` every ``every_s``
    seconds (nothing where ``drip`` is empty) until the server answers, for at most 20 s: its answer
    and how long it took."""
    head = (
        f"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {API_KEY}\r\n"
        "Content-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: 10000000\r\n\r\n"
        '--XyZ\r\nContent-Disposition: form-data; name="video"; filename="v.mp4"\r\n'
        "Content-Type: video/mp4\r\n\r\n"
    ).encode() + b"\0" * 10_000
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head)
        t0 = time.monotonic()
        answer = b""
        s.settimeout(every_s or 10)
        while (b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}")) and time.monotonic() - t0 < 20:
            try:
                data = s.recv(65536)
            except TimeoutError:
                s.sendall(drip)
                continue
            if not data:
                break
            answer += data
    return answer, time.monotonic() - t0


@pytest.mark.parametrize("drip", [b"", b"\0" * 1000], ids=["stalled", "dripping"])
def test_a_stalled_or_dripping_upload_is_refused_and_frees_its_slot(redis_url: str, tmp_path: Path, drip: bytes) -> None:
    """A client that sends the headers and the start of a large upload, then nothing, is answered 408
    upload_stalled after ``body_idle_timeout_s``; one that sends a little just inside each such wait
    (a "slow POST": here 1000 bytes every 0.3 s, 3.3 KB/s against a minimum of 20 KB/s), once its
    average falls behind ``body_min_rate_bytes_s``.  Either way its upload slot is free again (with
    one slot, the next upload is taken instead of answered 503 busy) and its spool is gone.  The
    stalled one runs with no minimum rate: with one, a server slow to read the first 10 KB (a loaded
    machine, half a second) found the average behind before the idle wait ended, and said so."""
    env = job_env(redis_url, tmp_path, BACKDROP_BODY_IDLE_TIMEOUT_S="1", BACKDROP_MAX_CONCURRENT_UPLOADS="1",
                  BACKDROP_BODY_MIN_RATE_BYTES_S="20000" if drip else "0")
    with ApiServer(settings_from(env)) as api, api.client(API_KEY) as c:
        answer, took = _slow_upload_answer(api.port, drip, 0.3 if drip else 0.0)
        assert took < 5
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        problem = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        assert problem["code"] == "upload_stalled"
        assert ("bytes a second" in problem["detail"]) == bool(drip), problem
        with open(asl_clip(), "rb") as f:
            r = c.post("/jobs", files={"video": f}, data={"background_color": "#000000"})
        assert r.status_code == 202, r.text
        assert not any((tmp_path / "spool").iterdir())  # the refused upload's spool is gone


def test_mpeg_ts_uploaded_to_s3_is_taken_as_video_and_background(redis_url: str, tmp_path: Path, s3_endpoint: str) -> None:
    """On S3 only an upload's leading bytes are checked before the job is taken: 64 of them could
    not show MPEG-TS (a sync byte every 188), so an HLS segment or a camcorder's .mts was refused
    ``not_a_video``, and as a background ``unsupported_background``."""
    ts = remux(asl_clip(), tmp_path / "clip.ts", seconds=1.0)
    env = base_env(redis_url, tmp_path, **auth_env(), **s3_env(s3_endpoint))
    with ApiServer(settings_from(env)) as api, api.client(API_KEY) as c:
        video, background = reserve(c, ts, "video/mp2t"), reserve(c, ts, "video/mp2t")
        assert put(video, ts.read_bytes()).status_code == 200 and put(background, ts.read_bytes()).status_code == 200
        r = c.post("/jobs", json={"video_upload_id": video["id"], "background_upload_id": background["id"]})
        assert r.status_code == 202, r.text

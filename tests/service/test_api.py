"""The API without a worker: every bad input gets its documented status and stable code, as
problem+json; auth, ownership, idempotency, back-pressure, result/cancel of queued jobs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from stack import (
    API_KEY,
    MALFORMED_REQUESTS,
    OTHER_KEY,
    ApiServer,
    auth_env,
    base_env,
    data_path,
    raw_http,
    settings_from,
    succeeded_job,
)


def asl_clip() -> Path:
    folder = data_path("videos", "asl")
    return sorted(folder.glob("*.mkv"))[0]


@pytest.fixture(scope="module")
def api(redis_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    tmp = tmp_path_factory.mktemp("api")
    env = base_env(f"redis://127.0.0.1:{redis_port}/60", tmp, **auth_env(), BACKDROP_MAX_UPLOAD_BYTES=str(2_000_000))
    import redis

    redis.Redis.from_url(env["BACKDROP_REDIS_URL"]).flushdb()
    with ApiServer(settings_from(env)) as server:
        yield server


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inputs")
    mp4 = data_path("videos", "talking-head.mp4").read_bytes()
    out = {
        "empty": d / "empty.mp4",
        "text": d / "notes.txt",
        "truncated": d / "truncated.mp4",
        "png": d / "image.png",
        "big": d / "big.mp4",
    }
    out["empty"].write_bytes(b"")
    out["text"].write_text("this is not a video\n" * 100)
    out["truncated"].write_bytes(mp4[: int(len(mp4) * 0.3)])
    import cv2
    import numpy as np

    cv2.imwrite(str(out["png"]), np.full((48, 64, 3), 90, np.uint8))
    out["big"].write_bytes(os.urandom(2_100_000))
    return out


def post(client, video: Path, **fields: str):  # type: ignore[no-untyped-def]
    data = {"background_color": "#00ff00", **fields}
    data = {k: v for k, v in data.items() if v is not None}
    with open(video, "rb") as f:
        return client.post("/jobs", files={"video": (video.name, f, "application/octet-stream")}, data=data)


def assert_problem(r, status: int, code: str) -> None:  # type: ignore[no-untyped-def]
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["code"] == code and body["status"] == status
    assert body["type"] and body["title"] and body["detail"]


@pytest.mark.parametrize(
    "name,status,code",
    [
        ("empty", 422, "empty_file"),
        ("text", 415, "not_a_video"),
        ("truncated", 422, "corrupt_video"),
        ("png", 415, "not_a_video"),
        ("big", 413, "upload_too_large"),
    ],
)
def test_bad_videos(api: ApiServer, files: dict[str, Path], name: str, status: int, code: str) -> None:
    with api.client(API_KEY) as c:
        assert_problem(post(c, files[name]), status, code)
    spool = api.settings.spool_dir
    assert spool is not None and not any(spool.glob("upload-*")), "spooled uploads left behind"


@pytest.mark.parametrize(
    "fields,status,code",
    [
        ({"background_color": "#12345"}, 422, "invalid_color"),
        ({"background_color": "red"}, 422, "invalid_color"),
        ({"model": "nope"}, 422, "unknown_model"),
        ({"output_format": "gif"}, 422, "invalid_parameter"),
        ({"composite": "magic"}, 422, "invalid_parameter"),
        ({"harmonize": "2"}, 422, "invalid_parameter"),
        ({"surprise": "1"}, 422, "invalid_parameter"),
        ({"background_color": None}, 422, "invalid_background"),
        ({"background_blur": "true"}, 422, "invalid_background"),  # two backgrounds at once
        ({"callback_url": "http://127.0.0.1:9/hook"}, 422, "callback_refused"),
        ({"callback_url": "http://169.254.169.254/latest/meta-data"}, 422, "callback_refused"),
    ],
)
def test_bad_parameters(api: ApiServer, fields: dict[str, str], status: int, code: str) -> None:
    with api.client(API_KEY) as c:
        assert_problem(post(c, asl_clip(), **fields), status, code)


def test_bad_background_file(api: ApiServer, files: dict[str, Path]) -> None:
    with api.client(API_KEY) as c, open(asl_clip(), "rb") as v, open(files["empty"], "rb") as b:
        r = c.post("/jobs", files={"video": ("v.mkv", v), "background": ("bg.png", b)})
    assert_problem(r, 422, "empty_file")


@pytest.mark.parametrize("text", [b"#3a6ea5", b"blur\n"])
def test_a_colour_sent_as_the_background_file_is_told_its_field(api: ApiServer, text: bytes) -> None:
    """``curl -F background=#3a6ea5`` sends the colour as the background *file*: the answer names
    the field a colour or blur goes in."""
    with api.client(API_KEY) as c, open(asl_clip(), "rb") as v:
        r = c.post("/jobs", files={"video": ("v.mkv", v), "background": ("", text)})
    assert_problem(r, 415, "unsupported_background")
    assert "background_color=#RRGGBB" in r.json()["detail"] and text.strip().decode() in r.json()["detail"]


def test_an_avif_background_is_taken_and_a_lying_one_refused(api: ApiServer) -> None:
    """An AVIF picture is a background like a PNG; one whose header hides a larger AV1 frame is
    refused at the door, before a worker decodes it."""
    import cv2
    import numpy as np

    ok, data = cv2.imencode(".avif", np.full((48, 64, 3), 90, np.uint8), [cv2.IMWRITE_AVIF_QUALITY, 100])
    assert ok
    good = data.tobytes()
    at = good.find(b"ispe") + 8
    lying = good[:at] + (8).to_bytes(4, "big") + (6).to_bytes(4, "big") + good[at + 8:]
    with api.client(API_KEY) as c, open(asl_clip(), "rb") as v:
        r = c.post("/jobs", files={"video": ("v.mkv", v), "background": ("bg.avif", good, "image/avif")})
        assert r.status_code == 202, r.text
        v.seek(0)
        r = c.post("/jobs", files={"video": ("v.mkv", v), "background": ("bg.avif", lying, "image/avif")})
        assert_problem(r, 422, "corrupt_background")


def test_missing_video_and_not_multipart(api: ApiServer) -> None:
    with api.client(API_KEY) as c:
        assert_problem(c.post("/jobs", data={"background_color": "#000000"}), 422, "validation_error")
        assert_problem(c.post("/jobs", json={"video": "x"}), 422, "validation_error")


def test_blank_fields_are_fields_not_given(api: ApiServer) -> None:
    """An HTML form sends its empty inputs: every blank field, options included, means its default."""
    with api.client(API_KEY) as c:
        blank = {k: "" for k in ("model", "output_format", "composite", "harmonize", "keep_points", "people",
                                 "callback_url", "background_blur", "background_blur_strength")}
        r = post(c, asl_clip(), **blank)
        assert r.status_code == 202, r.text
        assert r.json()["options"] == {"model": "rvm", "output_format": "mp4", "composite": "alpha", "harmonize": 0.0,
                                       "keep_points": [], "people": "all"}
        assert c.delete(f"/jobs/{r.json()['id']}").status_code == 204
        # a file input left empty: a part named, with no file name and no bytes
        nothing = ("", b"", "application/octet-stream")
        with open(asl_clip(), "rb") as v:
            r = c.post("/jobs", files={"video": ("v.mkv", v), "background": nothing}, data={"background_color": "#000000"})
        assert r.status_code == 202 and r.json()["background"] == {"kind": "color", "value": "#000000"}, r.text
        assert c.delete(f"/jobs/{r.json()['id']}").status_code == 204
        with open(asl_clip(), "rb") as v:
            blank_only = c.post("/jobs", files={"video": ("v.mkv", v), "background": nothing})
        with open(asl_clip(), "rb") as v:
            none_given = c.post("/jobs", files={"video": ("v.mkv", v)})
        assert_problem(blank_only, 422, "invalid_background")  # no background given, not an empty_file
        assert blank_only.json()["detail"] == none_given.json()["detail"]
        assert_problem(c.post("/jobs", files={"video": nothing}, data={"background_color": "#000000"}), 422,
                       "validation_error")


def test_a_urlencoded_form_names_its_inputs(api: ApiServer) -> None:
    """``application/x-www-form-urlencoded`` takes the JSON body's fields (inputs by URL or upload id);
    a file, a repeated field or bytes that are not a form are refused as validation_error."""
    url = "https://93.184.216.34/clip.mp4"  # a public address: judged, never fetched without a worker
    with api.client(API_KEY) as c:
        r = c.post("/jobs", data={"video_url": url, "background_color": "#00ff00", "harmonize": "0.5"})
        assert r.status_code == 202, r.text
        job = r.json()
        assert job["options"]["harmonize"] == 0.5 and job["background"] == {"kind": "color", "value": "#00ff00"}
        assert c.delete(f"/jobs/{job['id']}").status_code == 204
        assert_problem(c.post("/jobs", data={"video_url": "http://127.0.0.1/x.mp4", "background_blur": "true"}),
                       422, "fetch_refused")
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        for body, says in ((b"video=AAAA&background_blur=true", "multipart"),
                           (f"video_url={url}&video_url={url}&background_blur=true".encode(), "twice"),
                           (b"video_url=%ff%fe&background_blur=true", "urlencoded"),
                           ("video_url=é".encode(), "urlencoded")):
            r = c.post("/jobs", content=body, headers=form)
            assert_problem(r, 422, "validation_error")
            assert says in r.json()["detail"], r.text
        assert_problem(c.post("/jobs", content=b"x=" + b"a" * 70_000, headers=form), 422, "validation_error")
        # a JSON body likewise: a key twice is refused, not settled by the last one
        twice = f'{{"video_url": "{url}", "background_color": "#000000", "background_color": "#ffffff"}}'
        r = c.post("/jobs", content=twice.encode(), headers={"Content-Type": "application/json"})
        assert_problem(r, 422, "validation_error")
        assert "'background_color' sent twice" in r.json()["detail"], r.text
        content = c.get("/openapi.json").json()["paths"]["/jobs"]["post"]["requestBody"]["content"]
        assert "video_url" in content["application/x-www-form-urlencoded"]["schema"]["properties"]


def test_auth(api: ApiServer) -> None:
    with api.client() as c:
        r = c.get("/jobs")
        assert_problem(r, 401, "unauthorized")
        assert r.headers["www-authenticate"].startswith("Bearer")
    with api.client("wrong-key") as c:
        assert_problem(c.get("/jobs"), 401, "unauthorized")
        assert_problem(post(c, asl_clip()), 401, "unauthorized")
    with api.client() as c:
        assert c.get("/healthz").status_code == 200  # probes need no key
        assert c.head("/healthz").status_code == 200 and c.head("/readyz").status_code == 200  # uptime monitors


def test_job_lifecycle_without_worker(api: ApiServer) -> None:
    with api.client(API_KEY) as alice, api.client(OTHER_KEY) as bob:
        r = post(alice, asl_clip(), model="rvm", output_format="mp4", harmonize="0.5")
        assert r.status_code == 202, r.text
        job = r.json()
        assert r.headers["location"] == f"/jobs/{job['id']}"
        assert job["status"] == "queued" and job["progress"]["frames_total"] > 0 and job["progress"]["chunks_total"] == 0
        assert job["options"] == {"model": "rvm", "output_format": "mp4", "composite": "alpha", "harmonize": 0.5,
                                  "keep_points": [], "people": "all"}
        assert job["video"]["width"] == 640 and job["video"]["height"] == 480

        fetched = alice.get(f"/jobs/{job['id']}").json()
        assert fetched["id"] == job["id"]
        # the answer to POST and to GET write the same time the same way (POST wrote +00:00, GET Z)
        assert job["created_at"] == fetched["created_at"] and job["created_at"].endswith("Z")
        assert_problem(bob.get(f"/jobs/{job['id']}"), 404, "job_not_found")  # another key's job
        assert_problem(bob.delete(f"/jobs/{job['id']}"), 404, "job_not_found")
        assert_problem(alice.get("/jobs/0123456789abcdef0123456789abcdef"), 404, "job_not_found")
        assert_problem(alice.get(f"/jobs/{job['id']}/result"), 409, "result_not_ready")
        listed = alice.get("/jobs", params={"limit": 5}).json()
        assert listed["data"][0]["id"] == job["id"] and listed["count"] >= 1
        assert all(j["id"] != job["id"] for j in bob.get("/jobs").json()["data"])

        objects = Path(api.settings.storage_dir) / "jobs" / job["id"]
        assert (objects / "input.mkv").is_file()
        assert alice.delete(f"/jobs/{job['id']}").status_code == 204
        assert alice.get(f"/jobs/{job['id']}").json()["status"] == "canceled"
        assert not objects.exists()


def test_idempotency_key(api: ApiServer) -> None:
    with api.client(API_KEY) as c:
        h = {"Idempotency-Key": "retry-me-1"}
        with open(asl_clip(), "rb") as f:
            a = c.post("/jobs", files={"video": ("a.mkv", f)}, data={"background_blur": "true"}, headers=h)
        with open(asl_clip(), "rb") as f:
            b = c.post("/jobs", files={"video": ("a.mkv", f)}, data={"background_blur": "true"}, headers=h)
        assert a.status_code == b.status_code == 202
        assert a.json()["id"] == b.json()["id"] and b.headers["idempotent-replayed"] == "true"
        c.delete(f"/jobs/{a.json()['id']}")


def test_problem_json_for_framework_errors(api: ApiServer) -> None:
    with api.client(API_KEY) as c:
        assert_problem(c.get("/nowhere"), 404, "not_found")
        assert_problem(c.put("/jobs"), 405, "method_not_allowed")
        assert_problem(c.get("/jobs", params={"limit": "many"}), 422, "validation_error")


@pytest.mark.parametrize("name", sorted(MALFORMED_REQUESTS))
def test_requests_the_http_parser_refuses_are_problems(api: ApiServer, name: str) -> None:
    """Answered by uvicorn itself, below the app: still problem+json with a stable code, the
    connection closed, and the server goes on answering."""
    status, headers, body = raw_http(api.url, MALFORMED_REQUESTS[name])
    assert status == 400 and headers["content-type"] == "application/problem+json"
    assert headers["connection"] == "close" and int(headers["content-length"]) == len(body)
    problem = json.loads(body)
    assert problem["code"] == "malformed_request" and problem["status"] == 400
    assert problem["type"] == "urn:backdrop:problem:malformed_request" and "Content-Length" in problem["detail"]
    with api.client() as c:
        assert c.get("/healthz").status_code == 200


def test_metrics_and_readiness_without_worker(api: ApiServer) -> None:
    with api.client() as c:
        text = c.get("/metrics").text
        assert "backdrop_queue_depth" in text and "backdrop_processing_seconds_bucket" in text
        assert 'backdrop_jobs_total{status="queued"}' in text
        r = c.get("/readyz")
        assert r.status_code == 200, r.text  # no worker answers: reported, not a reason to leave service
        assert r.json()["checks"]["redis"] == "ok" and r.json()["checks"]["storage"] == "ok"
        assert r.json()["workers"] == 0


def test_queue_full(redis_url: str, tmp_path: Path) -> None:
    env = base_env(redis_url, tmp_path, BACKDROP_MAX_QUEUE_DEPTH="0")
    with ApiServer(settings_from(env)) as server, server.client() as c:
        r = post(c, asl_clip())
        assert_problem(r, 503, "queue_full")
        assert int(r.headers["retry-after"]) > 0


def test_api_never_imports_inference() -> None:
    code = (
        "import sys, service.api.main; "
        "bad=[m for m in sys.modules if m.startswith(('onnxruntime','service.inference','service.pipeline'))]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert r.returncode == 0, r.stdout + r.stderr


def test_option_vocabularies_match_the_pipeline() -> None:
    from service.inference.compositing import CompositorName
    from service.inference.models import ModelName
    from service.media.encode import FORMATS, OUTPUT_FORMATS
    from service.options import COMPOSITORS, MODEL_NAMES
    from service.options import OUTPUT_FORMATS as OPTION_FORMATS

    assert set(MODEL_NAMES) == {m.value for m in ModelName}
    assert set(OPTION_FORMATS) == set(OUTPUT_FORMATS) == set(FORMATS)
    assert set(COMPOSITORS) == {c.value for c in CompositorName}


def test_cors_allow_list(redis_url: str, tmp_path: Path) -> None:
    env = base_env(redis_url, tmp_path, BACKDROP_CORS_ORIGINS="https://app.example")
    with ApiServer(settings_from(env)) as server, server.client() as c:
        pre = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
        ok = c.options("/jobs", headers={"Origin": "https://app.example", **pre})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://app.example"
        bad = c.options("/jobs", headers={"Origin": "https://evil.example", **pre})
        assert "access-control-allow-origin" not in bad.headers


def test_video_over_the_limits(redis_url: str, tmp_path: Path) -> None:
    env = base_env(redis_url, tmp_path, BACKDROP_MAX_DURATION_S="1.0")
    with ApiServer(settings_from(env)) as server, server.client() as c:
        assert_problem(post(c, asl_clip()), 413, "video_too_large")
        assert not list((Path(server.settings.storage_dir)).glob("jobs/*"))  # nothing stored
        assert not any(Path(env["BACKDROP_SPOOL_DIR"]).glob("upload-*"))  # spool cleaned up


def test_metrics_parse_as_prometheus_text(api: ApiServer) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    with api.client() as c:
        families = list(text_string_to_metric_families(c.get("/metrics").text))
    names = [f.name for f in families]
    assert len(names) == len(set(names)), names
    assert {"backdrop_jobs_active", "backdrop_jobs", "backdrop_queue_depth", "backdrop_processing_seconds",
            "backdrop_frames_per_second"} <= set(names)


# --- one options model: what a worker would refuse is refused at POST ---------------------------
@pytest.mark.parametrize(
    "fields,status,code",
    [
        ({"output_format": "webm", "harmonize": "0.5"}, 422, "incompatible_options"),
        ({"output_format": "greenscreen", "harmonize": "1"}, 422, "incompatible_options"),
        ({"harmonize": "nan"}, 422, "invalid_parameter"),
        ({"background_color": None, "output_format": "mp4"}, 422, "invalid_background"),
    ],
)
def test_incompatible_options_refused_at_post(api: ApiServer, fields: dict[str, str], status: int, code: str) -> None:
    with api.client(API_KEY) as c:
        before = c.get("/jobs").json()["count"]
        assert_problem(post(c, asl_clip(), **fields), status, code)
        assert c.get("/jobs").json()["count"] == before  # nothing queued


def test_output_without_a_background_needs_none(api: ApiServer) -> None:
    """webm carries alpha: no background is needed (the pipeline takes none), so none is asked for."""
    with api.client(API_KEY) as c:
        r = post(c, asl_clip(), background_color=None, output_format="webm")
        assert r.status_code == 202, r.text
        assert r.json()["background"]["kind"] == "none"
        assert c.delete(f"/jobs/{r.json()['id']}").status_code == 204


# --- idempotency -------------------------------------------------------------------------------
def test_idempotency_key_reused_with_another_request(api: ApiServer, files: dict[str, Path]) -> None:
    h = {"Idempotency-Key": "reuse-me-2"}
    clip = asl_clip()
    other_clip = sorted(clip.parent.glob("*.mkv"))[1]
    with api.client(API_KEY) as c:
        with open(clip, "rb") as f:
            first = c.post("/jobs", files={"video": ("a.mkv", f)}, data={"background_blur": "true"}, headers=h)
        assert first.status_code == 202, first.text
        with open(clip, "rb") as f:  # other options, same file
            r = c.post("/jobs", files={"video": ("a.mkv", f)}, data={"background_color": "#102030"}, headers=h)
        assert_problem(r, 422, "idempotency_key_reused")
        with open(other_clip, "rb") as f:  # same options, another file (same name)
            r = c.post("/jobs", files={"video": ("a.mkv", f)}, data={"background_blur": "true"}, headers=h)
        assert_problem(r, 422, "idempotency_key_reused")
        with open(clip, "rb") as f:  # the same request again: the same job
            again = c.post("/jobs", files={"video": ("b.mkv", f)}, data={"background_blur": "1"}, headers=h)
        assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
        assert again.headers["idempotent-replayed"] == "true"
        with api.client(OTHER_KEY) as bob, open(other_clip, "rb") as f:  # keys are per tenant
            r = bob.post("/jobs", files={"video": ("a.mkv", f)}, data={"background_blur": "true"}, headers=h)
            assert r.status_code == 202 and r.json()["id"] != first.json()["id"]
            bob.delete(f"/jobs/{r.json()['id']}")
        c.delete(f"/jobs/{first.json()['id']}")


# --- bounded listing, Range errors -------------------------------------------------------------
def test_listing_bounds(api: ApiServer) -> None:
    with api.client(API_KEY) as c:
        assert_problem(c.get("/jobs", params={"offset": "100000000000000000000"}), 422, "validation_error")
        assert_problem(c.get("/jobs", params={"offset": "-1"}), 422, "validation_error")
        assert_problem(c.get("/jobs", params={"limit": "1000"}), 422, "validation_error")
        r = c.get("/jobs", params={"offset": "1000000000", "limit": "100"})
        assert r.status_code == 200 and r.json()["data"] == []


def test_result_range_errors_are_problems(api: ApiServer) -> None:
    payload = bytes(range(256)) * 4
    job_id = succeeded_job(api.settings, payload)
    with api.client(API_KEY) as c:
        url = f"/jobs/{job_id}/result"
        ok = c.get(url, headers={"Range": "bytes=10-19"})
        assert ok.status_code == 206 and ok.content == payload[10:20]
        assert c.get(url).content == payload
        r = c.get(url, headers={"Range": "bytes=5000-"})
        assert_problem(r, 416, "range_not_satisfiable")
        assert r.headers["content-range"] == f"bytes */{len(payload)}"
        assert_problem(c.get(url, headers={"Range": "bytes=5000-,6000-6001"}), 416, "range_not_satisfiable")
        # a set with one range that can be served is served that range (RFC 9110 14.1.1)
        some = c.get(url, headers={"Range": f"bytes=10-19,{len(payload)}-"})
        assert some.status_code == 206 and some.content == payload[10:20], some.text
        assert some.headers["content-range"] == f"bytes 10-19/{len(payload)}"
        for bad in ("bytes=9-3", "bytes", "bytes=-", "bytes=5000-,9-3"):
            assert_problem(c.get(url, headers={"Range": bad}), 400, "invalid_range")
        # a unit other than bytes is ignored (RFC 9110, 14.2: an origin server MUST): the whole file
        other = c.get(url, headers={"Range": "items=0-1"})
        assert other.status_code == 200 and other.content == payload and "content-range" not in other.headers
        # HEAD: a GET's headers, no video (clients and players ask it for the size first)
        head = c.head(url)
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(len(payload)) and head.headers["content-type"] == "video/mp4"
        assert head.headers["accept-ranges"] == "bytes"


def test_multipart_body_cut_short(api: ApiServer) -> None:
    """A body without its closing boundary would leave a truncated video that looks whole."""
    data = asl_clip().read_bytes()
    body = (b'--xx\r\nContent-Disposition: form-data; name="background_blur"\r\n\r\ntrue\r\n'
            b'--xx\r\nContent-Disposition: form-data; name="video"; filename="v.mkv"\r\n\r\n' + data[:50_000])
    with api.client(API_KEY) as c:
        r = c.post("/jobs", content=body, headers={"Content-Type": "multipart/form-data; boundary=xx"})
        assert_problem(r, 422, "validation_error")
        assert "closing boundary" in r.json()["detail"]
        whole = body + data[50_000:] + b"\r\n--xx--\r\n"
        r = c.post("/jobs", content=whole, headers={"Content-Type": "multipart/form-data; boundary=xx"})
        assert r.status_code == 202, r.text
        c.delete(f"/jobs/{r.json()['id']}")
    spool = api.settings.spool_dir
    assert spool is not None and not any(spool.glob("upload-*")), "spooled uploads left behind"


def test_unusable_spool_folder_is_503(redis_url: str, tmp_path: Path) -> None:
    """The spool folder cannot be written (here: a file stands where it should be): the server's
    trouble, answered 503 with Retry-After, not a 500."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    env = base_env(redis_url, tmp_path, BACKDROP_SPOOL_DIR=str(blocker / "spool"))
    with ApiServer(settings_from(env)) as server, server.client() as c:
        r = post(c, asl_clip())
        assert_problem(r, 503, "dependency_unavailable")
        assert int(r.headers["retry-after"]) > 0
        assert c.get("/jobs").json()["count"] == 0  # nothing queued, its place given back


# --- blur strength -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fields",
    [
        {"background_blur_strength": "0.6"},  # with a colour, not a blur
        {"background_color": None, "output_format": "webm", "background_blur_strength": "0.6"},  # no background
        {"background_color": None, "background_blur": "true", "background_blur_strength": "0.01"},
        {"background_color": None, "background_blur": "true", "background_blur_strength": "1.5"},
        {"background_color": None, "background_blur": "true", "background_blur_strength": "nan"},
        {"background_color": None, "background_blur": "true", "background_blur_strength": "strong"},
    ],
)
def test_blur_strength_refused(api: ApiServer, fields: dict[str, str]) -> None:
    """A strength is only for a blur, and within 0.05..1: else 422 invalid_parameter, nothing queued."""
    with api.client(API_KEY) as c:
        before = c.get("/jobs").json()["count"]
        assert_problem(post(c, asl_clip(), **fields), 422, "invalid_parameter")
        assert c.get("/jobs").json()["count"] == before


def test_blur_strength_stored_on_the_job(api: ApiServer) -> None:
    """The strength travels on the job's background (the worker's spec is ``blur:<value>``); a blur
    without one keeps the default (no value) and the API documents the field."""
    with api.client(API_KEY) as c:
        r = post(c, asl_clip(), background_color=None, background_blur="true", background_blur_strength="0.6")
        assert r.status_code == 202, r.text
        assert r.json()["background"] == {"kind": "blur", "value": "0.6"}
        plain = post(c, asl_clip(), background_color=None, background_blur="true")
        assert plain.status_code == 202, plain.text
        assert plain.json()["background"] == {"kind": "blur", "value": None}
        for job in (r, plain):
            assert c.delete(f"/jobs/{job.json()['id']}").status_code == 204
        paths = c.get("/openapi.json").json()["paths"]
    for path in ("/jobs", "/previews"):
        body = paths[path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        prop = body["properties"]["background_blur_strength"]
        assert (prop["minimum"], prop["maximum"], prop["default"]) == (0.05, 1.0, 0.3)

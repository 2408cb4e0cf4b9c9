"""``backdrop run`` serves the web page at ``/`` (beside ``/docs``) and starts the preview worker:
a preview sent to it is rendered, and SIGTERM still stops everything."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from clips import first_frame_jpeg
from stack import ROOT, base_env, data_path, free_port, make_env, wait_for

pytestmark = pytest.mark.slow


def test_backdrop_run_serves_the_page_and_previews(tmp_path: Path) -> None:
    redis_port, api_port = free_port(), free_port()
    env = make_env(base_env(f"redis://127.0.0.1:{redis_port}/0", tmp_path, BACKDROP_PORT=str(api_port)))
    frame = first_frame_jpeg(data_path("videos", "desk.mp4"), tmp_path / "frame.jpg")
    log = open(tmp_path / "stack.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "service.local_stack"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{api_port}", trust_env=False, timeout=10) as c:

            def ready() -> bool:
                try:
                    return c.get("/readyz").status_code == 200
                except httpx.HTTPError:
                    return False

            wait_for(ready, 90, 0.5, "the local stack")
            page = c.get("/")
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            for testid in ("video-input", "preview", "background-color", "submit", "status", "progress",
                           "download", "api-key"):
                assert f'data-testid="{testid}"' in page.text, testid
            assert "script-src 'self'" in page.headers["content-security-policy"]
            script = c.get("/static/app.js")
            assert script.status_code == 200 and "javascript" in script.headers["content-type"]
            assert c.get("/static/backgrounds/sunset.jpg").headers["content-type"] == "image/jpeg"
            assert c.get("/docs").status_code == 200 and c.get("/openapi.json").json()["paths"]["/jobs"]
            missing = c.get("/static/nothing.js")
            assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"

            p = c.post("/previews", files={"frame": ("frame.jpg", frame.read_bytes(), "image/jpeg")},
                       data={"background_color": "#224466"}).json()
            deadline = time.monotonic() + 60
            while p["status"] not in ("succeeded", "failed"):
                assert time.monotonic() < deadline, p
                time.sleep(0.1)
                p = c.get(f"/previews/{p['id']}").json()
            assert p["status"] == "succeeded", p
            assert c.get(p["composite_url"]).headers["content-type"] == "image/jpeg"
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        log.close()
    assert code == 0, (tmp_path / "stack.log").read_text()[-3000:]

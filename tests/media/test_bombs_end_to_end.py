"""End to end with the API as its own uvicorn process (so its memory can be read from /proc) and a
real Celery worker: every bomb is refused with its precise code while the API's peak resident memory
stays under API_BOUND_MB; a job with the largest still background allowed keeps the worker (main
process and pool child together) under WORKER_BOUND_MB; a GIF video is processed."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bombs
import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))
import stack  # noqa: E402

from service.api.http_protocol import HTTP_PROTOCOL  # noqa: E402

pytestmark = pytest.mark.slow

#: The API process (Python, FastAPI, Celery client, boto3: about 120 MB before any request).
API_BOUND_MB = 300
#: A worker: the Celery main process plus its pool child holding the model (RVM on ONNX Runtime),
#: a 640x480 job and a 50-megapixel background (150 MB decoded, twice during the colour conversion).
WORKER_BOUND_MB = 1500


def vmhwm_mb(pid: int) -> float:
    """Peak resident memory of a process (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {pid}")


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants, from /proc/<pid>/task/*/children."""
    out = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            out += process_tree(int(child))
    return out


def mapped_libraries(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    port = stack.free_port()
    proc = subprocess.Popen(
        [stack.redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    import redis

    stack.wait_for(lambda: stack._pings(redis.Redis(port=port)), 10, what="redis-server")
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


class ApiProcess:
    """``uvicorn service.api.main:app`` as a subprocess of its own."""

    def __init__(self, env: dict[str, str], log_path: Path):
        self.port = stack.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "wb")  # noqa: SIM115
        self.log_path = log_path
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "service.api.main:app", "--host", "127.0.0.1", "--port", str(self.port),
             "--log-level", "warning", "--http", HTTP_PROTOCOL],
            cwd=stack.ROOT, env=stack.make_env(env), stdout=self._log, stderr=subprocess.STDOUT,
        )

    def __enter__(self) -> ApiProcess:
        def up() -> bool:
            assert self.proc.poll() is None, self.log_path.read_text()
            try:
                return httpx.get(f"{self.url}/healthz", timeout=2, trust_env=False).status_code == 200
            except httpx.HTTPError:
                return False

        stack.wait_for(up, 60, 0.2, "the API process")
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(20)
        self._log.close()


def post(c: httpx.Client, video: Path, background: Path | None = None, **data: str) -> httpx.Response:
    files: dict[str, Any] = {"video": (video.name, video.read_bytes())}
    if background is not None:
        files["background"] = (background.name, background.read_bytes())
    return c.post("/jobs", files=files, data=data)


def test_bombs_refused_within_memory_bounds(redis_url: str, tmp_path: Path) -> None:
    clip = stack.data_path("videos", "asl", "bird.mkv")
    frames = bombs.frames_of(clip, 12, 160, 120)
    cut = bombs.jpeg_cut_after_header(stack.data_path("backgrounds", "bg_1.jpg"), tmp_path / "cut.jpg")
    (tmp_path / "bg.svg").write_bytes(bombs.SVG)
    (tmp_path / "bg.txt").write_text("this is not a picture\n" * 40)
    refused = {
        "png30000": (bombs.png(tmp_path / "grey.png", 30000, 30000), 413, "background_too_large"),
        "png16000rgba16": (bombs.png(tmp_path / "rgba.png", 16000, 16000, bombs.RGBA16), 413, "background_too_large"),
        "apng10000": (bombs.apng(tmp_path / "anim.png", 10000, 10000), 413, "background_too_large"),
        "pngmov16000": (
            bombs.png_in_mov(tmp_path / "bomb.mov", [bombs.png_bytes(16000, 16000, bombs.RGBA16)], 16000, 16000),
            413, "background_too_large",
        ),
        "svg": (tmp_path / "bg.svg", 415, "unsupported_background"),
        "text": (tmp_path / "bg.txt", 415, "unsupported_background"),
        "jpeg_cut": (cut, 422, "corrupt_background"),
    }
    largest = bombs.png(tmp_path / "largest.png", 10000, 5000, bombs.RGB8)  # max_background_pixels exactly
    gif_video = bombs.gif(tmp_path / "clip.gif", frames)

    env = stack.base_env(redis_url, tmp_path, **stack.auth_env())
    worker = stack.Worker(env, "bombs", tmp_path / "worker.log").start()
    try:
        with ApiProcess(env, tmp_path / "api.log") as api, httpx.Client(
            base_url=api.url, headers={"Authorization": f"Bearer {stack.API_KEY}"}, timeout=120, trust_env=False
        ) as c:
            for name, (background, status, code) in refused.items():
                r = post(c, clip, background)
                assert r.status_code == status and r.json()["code"] == code, (name, r.text)
                assert r.headers["content-type"].startswith("application/problem+json")
            r = post(c, refused["pngmov16000"][0], background_color="#102030")
            assert r.status_code == 413 and r.json()["code"] == "video_too_large", r.text

            accepted = post(c, clip, largest)
            assert accepted.status_code == 202, accepted.text
            gif_job = post(c, gif_video, background_color="#3366cc")
            assert gif_job.status_code == 202, gif_job.text
            assert gif_job.json()["video"]["frames"] == 12

            api_mb = vmhwm_mb(api.proc.pid)
            assert api_mb < API_BOUND_MB, f"the API process peaked at {api_mb:.0f} MB"
            maps = mapped_libraries(api.proc.pid)
            assert "cv2" not in maps and "_multiarray_umath" not in maps, "the API loaded OpenCV or numpy"

            worker.wait_ready(120)
            for job in (accepted.json(), gif_job.json()):
                done = stack.wait_for(
                    lambda job=job: (j := c.get(f"/jobs/{job['id']}").json())["status"] in ("succeeded", "failed") and j,
                    600, 0.5, f"job {job['id']}",
                )
                assert done["status"] == "succeeded", (done, worker.log())
            result = c.get(f"/jobs/{gif_job.json()['id']}/result")
            (tmp_path / "out.mp4").write_bytes(result.content)
            assert stack.count_frames(tmp_path / "out.mp4")[:3] == (12, 160, 120)

            assert worker.proc is not None
            tree = process_tree(worker.proc.pid)
            assert len(tree) >= 2, "no pool child found"
            worker_mb = sum(vmhwm_mb(pid) for pid in tree)
            assert worker_mb < WORKER_BOUND_MB, f"the worker peaked at {worker_mb:.0f} MB ({tree})"
            print(f"\nAPI peak {api_mb:.0f} MB (bound {API_BOUND_MB}); worker peak {worker_mb:.0f} MB "
                  f"(bound {WORKER_BOUND_MB}, {len(tree)} processes)")
    finally:
        worker.stop()


def test_an_upload_too_costly_to_open_is_refused_and_the_api_goes_on(redis_url: str, tmp_path: Path) -> None:
    """30,000 tags in a 340 kB NUT file cost FFmpeg seconds of CPU to open, and no count of ours
    looks at them: the API reads an upload first in a child process it can end, limited here to a
    second of CPU, and answers at once for the next upload."""
    bomb = bombs.nut_tag_bomb(tmp_path / "tags.nut")
    clip = stack.data_path("videos", "asl", "bird.mkv")
    env = stack.base_env(redis_url, tmp_path, **stack.auth_env(), BACKDROP_INSPECT_CPU_SECONDS="1")
    with ApiProcess(env, tmp_path / "api.log") as api, httpx.Client(
        base_url=api.url, headers={"Authorization": f"Bearer {stack.API_KEY}"}, timeout=60, trust_env=False
    ) as c:
        r = post(c, bomb, background_color="#102030")
        assert r.status_code == 413 and r.json()["code"] == "video_too_large", r.text
        assert "CPU" in r.json()["detail"]
        accepted = post(c, clip, background_color="#102030")
        assert accepted.status_code == 202, accepted.text
        assert accepted.json()["video"]["frames"] > 0
        maps = mapped_libraries(api.proc.pid)
        assert "_multiarray_umath" not in maps, "the API loaded numpy: the file was read in its own process"

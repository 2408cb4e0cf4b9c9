"""Choosing who stays through the API and real workers: `keep_points` on POST /jobs keeps the person
under the point and drops the other; a point on no person is refused at POST time (422
`no_person_at_point`, checked by the preview lane on the stored first frame) and leaves no job and no
objects; with no preview lane to answer, the job is queued and its worker refuses the point."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from people_scenes import bench_people
from stack import ApiServer, base_env, data_path, settings_from
from test_end_to_end import poll, submit

pytestmark = pytest.mark.slow


def _scene(tmp: Path) -> tuple[Any, Path]:
    bp = bench_people()
    scene = bp.make_scene(data_path("portraits", "val"), data_path("backgrounds", bp.BACKGROUND), 2, (320, 240), 10)
    return scene, bp.write_clip(scene, tmp / "two.mp4")


def _post(c: Any, clip: Path, **data: str) -> Any:
    with open(clip, "rb") as f:
        return c.post("/jobs", files={"video": (clip.name, f)}, data=data)


def test_keep_points_through_the_api(redis_url: str, tmp_path: Path, worker_factory: Any) -> None:
    import av

    scene, clip = _scene(tmp_path)
    env = base_env(redis_url, tmp_path)
    objects = Path(env["BACKDROP_STORAGE_DIR"]) / "jobs"
    worker = worker_factory(env)
    with ApiServer(settings_from({**env, "BACKDROP_PEOPLE_CHECK_TIMEOUT_S": "1"})) as api, api.client() as c:
        # no preview lane yet: nobody answers the check, so the job is queued and its worker refuses the point
        worker.wait_ready()
        unchecked = submit(c, clip, output_format="matte", keep_points="0,0")
        failed = poll(c, unchecked["id"], {"succeeded", "failed"}, 120)
        assert failed["status"] == "failed" and failed["error"]["code"] == "no_person_at_point", failed
        assert "0,0" in failed["error"]["message"]
    preview = worker_factory(env, "preview", preview=True)
    with ApiServer(settings_from(env)) as api, api.client() as c:
        preview.wait_ready()
        before = sorted(p.name for p in objects.iterdir())
        total = c.get("/jobs").json()["count"]
        refused = _post(c, clip, output_format="matte", keep_points="0,0")
        assert refused.status_code == 422, refused.text
        problem = refused.json()
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert problem["code"] == "no_person_at_point" and "0,0" in problem["detail"], problem
        # refused before anything was queued: no job, no objects
        assert c.get("/jobs").json()["count"] == total
        assert sorted(p.name for p in objects.iterdir()) == before
        x, y = scene.start_point(1)
        job = submit(c, clip, output_format="matte", keep_points=f"{x},{y}")
        assert job["options"]["keep_points"] == [[x, y]]
        done = poll(c, job["id"], {"succeeded", "failed"}, 300)
        assert done["status"] == "succeeded", (done, worker.log(), preview.log())
        out = tmp_path / "keep1.mp4"
        out.write_bytes(c.get(f"/jobs/{job['id']}/result").content)
    with av.open(str(out)) as f:
        matte = np.stack([fr.to_ndarray(format="gray") for fr in f.decode(video=0)]) / 255.0
    kept, dropped = scene.masks[1], scene.masks[0]
    shown = matte > 0.5
    assert (shown & kept).sum() / (shown | kept).sum() >= 0.85
    assert (shown & dropped).sum() / dropped.sum() <= 0.02

"""The preview lists the people of the frame (choosing who stays, issue 14): against the real API,
Redis and preview worker, a frame with two real people (from the generated two-person scene of
bench/people.py) answers two people, largest first, each with a box around that person and a point
inside them; a frame with nobody answers none."""

from __future__ import annotations

import time
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
from people_scenes import bench_people
from stack import data_path

pytestmark = pytest.mark.slow


def preview(url: str, frame: np.ndarray, **fields: str) -> dict[str, Any]:
    ok, png = cv2.imencode(".png", frame[..., ::-1])
    assert ok
    with httpx.Client(base_url=url, trust_env=False, timeout=60) as c:
        body = c.post("/previews", files={"frame": ("frame.png", png.tobytes(), "image/png")},
                      data={"background_color": "#00ff00", **fields}).json()
        deadline = time.monotonic() + 60
        while body.get("status") not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, body
            time.sleep(0.1)
            body = c.get(f"/previews/{body['id']}").json()
        assert body["status"] == "succeeded", body
        cutout = np.frombuffer(c.get(body["cutout_url"], follow_redirects=True).content, np.uint8)
    body["alpha"] = cv2.imdecode(cutout, cv2.IMREAD_UNCHANGED)[..., 3]
    return body


def test_the_preview_lists_the_people_of_the_frame(previews: Any) -> None:
    bp = bench_people()
    scene = bp.make_scene(data_path("portraits", "val"), data_path("backgrounds", bp.BACKGROUND), 2, (480, 360), 1)
    people = preview(previews.url, scene.frames[0])["people"]
    assert len(people) == 2, people
    sizes = scene.masks[:, 0].sum(axis=(1, 2))
    found = []
    for p in people:
        x, y = p["point"]
        person = int(np.argmax(scene.masks[:, 0, y, x]))
        assert scene.masks[person, 0, y, x], p  # the point is inside a person
        ys, xs = np.nonzero(scene.masks[person, 0])
        x0, y0, x1, y1 = p["box"]
        assert x0 - 25 <= xs.min() and xs.max() <= x1 + 25 and y0 - 40 <= ys.min(), p
        assert isinstance(p["id"], int) and 0 < p["score"] <= 1
        found.append(person)
    assert sorted(found) == [0, 1] and found[0] == int(np.argmax(sizes))  # both, largest first

    # one of them chosen, as a job would be: the preview shows that one, and still lists both
    x, y = people[1]["point"]
    chosen = preview(previews.url, scene.frames[0], keep_points=f"{x},{y}")
    assert len(chosen["people"]) == 2
    kept, other = scene.masks[found[1], 0], scene.masks[found[0], 0] & ~scene.masks[found[1], 0]
    assert (chosen["alpha"][kept] > 128).mean() > 0.9 and (chosen["alpha"][other] > 128).mean() < 0.05

    background = np.ascontiguousarray(cv2.imread(str(data_path("backgrounds", bp.BACKGROUND)))[:360, :480, ::-1])
    assert preview(previews.url, background)["people"] == []

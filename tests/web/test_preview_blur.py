"""The blur strength reaches the preview (issue 13: "blur (with a strength)"): against the real API,
Redis and preview worker, a frame previewed with a strong blur comes back blurrier than with a light
one; and on the page, the blur pane's labelled slider sends its value with the preview."""

from __future__ import annotations

import time
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
import redis
from playwright.sync_api import expect
from stack import data_path

from service.previews import PreviewStore

pytestmark = pytest.mark.slow


def _composite(c: httpx.Client, png: bytes, strength: str) -> np.ndarray:
    body = c.post("/previews", files={"frame": ("frame.png", png, "image/png")},
                  data={"background_blur": "true", "background_blur_strength": strength}).json()
    deadline = time.monotonic() + 60
    while body.get("status") not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, body
        time.sleep(0.1)
        body = c.get(f"/previews/{body['id']}").json()
    assert body["status"] == "succeeded", body
    jpeg = c.get(f"/previews/{body['id']}/composite.jpg").content
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert image is not None
    return image


def test_a_stronger_blur_previews_blurrier(previews: Any) -> None:
    """A photograph with nobody in it: the composite is the blurred frame, so its sharpness (variance
    of the Laplacian) falls as the strength rises."""
    photo = cv2.imread(str(data_path("backgrounds", "Bridge_by_Sander_Klootwijk.jpg")), cv2.IMREAD_COLOR)
    ok, png = cv2.imencode(".png", cv2.resize(photo, (640, 360), interpolation=cv2.INTER_AREA))
    assert ok
    with httpx.Client(base_url=previews.url, trust_env=False, timeout=60) as c:
        light, strong = (_composite(c, png.tobytes(), s) for s in ("0.05", "1"))
        refused = c.post("/previews", files={"frame": ("frame.png", png.tobytes(), "image/png")},
                         data={"background_color": "#00ff00", "background_blur_strength": "0.5"})
    sharpness = [float(cv2.Laplacian(i, cv2.CV_64F).var()) for i in (light, strong)]
    assert sharpness[1] < 0.8 * sharpness[0], sharpness
    assert refused.status_code == 422 and refused.json()["code"] == "invalid_parameter"


def test_the_page_sends_the_blur_strength(previews: Any, page_factory: Any) -> None:
    """The labelled slider shows with blur only; moving it asks for a preview with that strength
    (read back from the preview's record in Redis)."""
    page, log, shot = page_factory(previews.url)
    page.get_by_test_id("video-input").set_input_files(str(data_path("videos", "talking-head.mp4")))
    preview = page.get_by_test_id("preview")
    expect(preview).to_be_visible(timeout=30_000)
    slider = page.get_by_label("Blur strength")
    expect(slider).to_be_hidden()
    page.get_by_label("Blur the original").check()
    expect(slider).to_be_visible()
    expect(page.locator("#preview-state")).to_contain_text("Preview ready", timeout=30_000)
    slider.fill("0.8")
    expect(page.locator("#blur-strength-value")).to_have_text("0.8")
    store = PreviewStore(redis.Redis.from_url(previews.env["BACKDROP_REDIS_URL"]), previews.api.settings)
    deadline = time.monotonic() + 30  # the preview on screen becomes one asked for with 0.8
    while (record := store.get(preview.get_attribute("data-preview-id") or "")) is None \
            or record.background_blur_strength != 0.8:
        assert time.monotonic() < deadline, record
        time.sleep(0.2)
    expect(page.locator("#preview-state")).to_contain_text("Preview ready", timeout=30_000)
    shot("blur-strength")
    log.check()

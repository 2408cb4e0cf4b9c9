"""The web page with API keys: a wrong key shows the 401's message wherever the page calls the API;
the right key (kept in sessionStorage) gives previews and a download that works without the key in
the URL (fetched with the Bearer header into a blob: URL)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import stack
from clips import first_frame_jpeg
from playwright.sync_api import expect
from stack import count_frames, data_path
from videoutil import short_clip
from webstack import WebStack, start_stack, stop_stack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def web(web_redis_port: int, tmp_path_factory: pytest.TempPathFactory) -> Any:
    s = start_stack(web_redis_port, tmp_path_factory.mktemp("web-auth"), stack.auth_env())
    yield s
    stop_stack(s)


def test_a_wrong_key_shows_the_401_then_the_right_key_works(web: WebStack, page_factory: Any, tmp_path: Path) -> None:
    clip = short_clip(data_path("videos", "walking-audio.mp4"), tmp_path / "walking.mp4", 24, scale=2)
    with httpx.Client(base_url=web.url, trust_env=False) as c:
        unauthorized = c.get("/jobs", headers={"Authorization": "Bearer " + "w" * 40}).json()
    message = f"{unauthorized['title']}: {unauthorized['detail']}"

    page, log, shot = page_factory(web.url)
    expect(page.locator("#api-key-hint")).to_contain_text("needs an API key")
    expect(page.locator("#jobs-empty")).to_contain_text("Enter your API key")  # no call only to be refused
    log.check()
    key = page.get_by_test_id("api-key")
    key.fill("w" * 40)
    key.press("Enter")
    key.blur()
    expect(page.locator("#jobs-empty")).to_contain_text(message)
    page.get_by_test_id("video-input").set_input_files(str(clip))
    error = page.get_by_test_id("error")
    expect(error).to_contain_text(message)  # the preview was refused
    page.get_by_test_id("submit").click()
    expect(page.get_by_test_id("status")).to_contain_text(f"refused: {message}")
    expect(error).to_contain_text(message)
    shot("wrong-key")

    key.fill(stack.API_KEY)
    key.blur()
    assert page.evaluate("sessionStorage.getItem('backdrop.apiKey')") == stack.API_KEY
    expect(page.locator("#jobs-empty")).to_contain_text("No jobs yet")
    page.get_by_test_id("background-color").fill("#ff00ff")
    expect(page.get_by_test_id("preview")).to_be_visible(timeout=30_000)
    assert page.locator("#preview-cutout").get_attribute("src").startswith("blob:")  # fetched with the key
    page.get_by_test_id("submit").click()
    expect(page.get_by_test_id("status")).to_contain_text("succeeded", timeout=120_000)
    download = page.get_by_test_id("download")
    assert (download.get_attribute("href") or "").startswith("blob:")
    with page.expect_download() as info:
        download.click()
    out = tmp_path / "result.mp4"
    info.value.save_as(out)
    assert count_frames(out) == count_frames(clip)
    shot("right-key")
    # the key is sent as a Bearer header, never in a URL the server logs
    log.check("status of 401")


def test_previews_belong_to_their_tenant_and_refuse_bad_frames(web: WebStack, tmp_path: Path) -> None:
    frame = first_frame_jpeg(data_path("videos", "desk.mp4"), tmp_path / "frame.jpg")
    text = tmp_path / "frame.txt"
    text.write_text("not a picture")
    alice = {"Authorization": f"Bearer {stack.API_KEY}"}
    bob = {"Authorization": f"Bearer {stack.OTHER_KEY}"}
    with httpx.Client(base_url=web.url, trust_env=False, timeout=30) as c:
        bad = c.post("/previews", headers=alice, files={"frame": ("f.jpg", text.read_bytes())},
                     data={"background_color": "#000000"})
        assert bad.status_code == 422 and bad.json()["code"] == "invalid_frame", bad.text
        twelve = bytearray(frame.read_bytes())  # a 12-bit JPEG: its header reads, its pictures do not
        twelve[twelve.index(b"\xff\xc0") + 4] = 12
        odd = c.post("/previews", headers=alice, files={"frame": ("f.jpg", bytes(twelve))},
                     data={"background_color": "#000000"})
        assert odd.status_code == 422 and "12-bit" in odd.json()["detail"], odd.text
        video_bg = c.post("/previews", headers=alice, files={
            "frame": ("f.jpg", frame.read_bytes()),
            "background": ("bg.mp4", data_path("videos", "rotated-tag-90.mp4").read_bytes()),
        })
        assert video_bg.status_code == 415 and video_bg.json()["code"] == "unsupported_background", video_bg.text
        opts = c.post("/previews", headers=alice, files={"frame": ("f.jpg", frame.read_bytes())},
                      data={"background_blur": "true", "output_format": "webm", "harmonize": "0.5"})
        assert opts.status_code == 422 and opts.json()["code"] == "incompatible_options", opts.text
        p = c.post("/previews", headers=alice, files={"frame": ("f.jpg", frame.read_bytes())},
                   data={"background_blur": "true"})
        assert p.status_code == 202, p.text
        pid = p.json()["id"]
        assert c.get(f"/previews/{pid}", headers=bob).json()["code"] == "preview_not_found"
        assert c.get(f"/previews/{pid}").status_code == 401
        assert c.get(f"/previews/{pid}", headers=alice).status_code == 200


def test_previews_per_minute_are_capped_per_tenant(web: WebStack) -> None:
    """One key cannot fill the preview lane: past the cap, 429 quota_exceeded with Retry-After, for
    that tenant only (requests refused for other reasons count too, so the test sends empty ones)."""
    from service.api.routes.previews import PREVIEWS_PER_MINUTE

    bob = {"Authorization": f"Bearer {stack.OTHER_KEY}"}
    empty = {"files": {"frame": ("f.jpg", b"")}, "data": {"background_color": "#000000"}}
    with httpx.Client(base_url=web.url, trust_env=False, timeout=30) as c:
        answers = []
        while len(answers) <= 2 * PREVIEWS_PER_MINUTE + 1:
            answers.append(c.post("/previews", headers=bob, **empty))
            if answers[-1].status_code == 429:
                break
        alice = c.post("/previews", headers={"Authorization": f"Bearer {stack.API_KEY}"}, **empty)
    refused = answers[-1]
    assert refused.status_code == 429 and refused.json()["code"] == "quota_exceeded", refused.text
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    # the cap's worth went through first (twice that at most, when a minute began meanwhile)
    assert PREVIEWS_PER_MINUTE <= len(answers) - 1 <= 2 * PREVIEWS_PER_MINUTE
    assert {a.json()["code"] for a in answers[:-1]} == {"empty_file"}
    assert alice.json()["code"] == "empty_file"  # another tenant is not held back

"""Fixtures for the web page's tests: Debian's Chromium driven by Playwright (nothing downloads a
browser), against the API served by uvicorn with real Redis, a real video worker and the preview
worker.  A module shares one stack (starting workers costs seconds); each test gets its own page,
whose console errors and page errors are collected and must stay empty."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))
import stack  # noqa: E402
from stack import data_path  # noqa: E402,F401 - offered to test modules like the other conftests
from webstack import PageLog, start_stack, stop_stack  # noqa: E402


@pytest.fixture(scope="session")
def web_redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = stack.free_port()
    proc = subprocess.Popen(
        [stack.redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path_factory.mktemp("web-redis")), "--databases", "64"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    stack.wait_for(lambda: stack._pings(redis.Redis(port=port)), 10, what="redis-server")
    yield port
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed (apt-get install chromium; .ci/run installs it)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"])
        yield b
        b.close()


@pytest.fixture
def page_factory(browser: Any, tmp_path: Path) -> Iterator[Any]:
    """``page_factory(url, width=1280)`` → (page, log, shot) where ``shot(name)`` saves a screenshot
    to this test's tmp folder and returns its path."""
    contexts: list[Any] = []

    def make(url: str, width: int = 1280, height: int = 900) -> tuple[Any, PageLog, Any]:
        ctx = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
        contexts.append(ctx)
        page = ctx.new_page()
        log = PageLog()
        page.on("console", lambda m: log.errors.append(f"console: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: log.errors.append(f"pageerror: {e}"))
        page.goto(url)

        def shot(name: str) -> Path:
            path = tmp_path / f"{len(list(tmp_path.glob('*.png'))):02d}-{name}.png"
            page.screenshot(path=str(path), full_page=True)
            return path

        return page, log, shot

    yield make
    for ctx in contexts:
        ctx.close()


@pytest.fixture(scope="module")
def previews(web_redis_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The API and a preview worker (no video worker), shared by a module's preview tests."""
    s = start_stack(web_redis_port, tmp_path_factory.mktemp("previews"), {}, video_worker=False)
    yield s
    stop_stack(s)

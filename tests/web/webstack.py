"""The web tests' stack (API, preview worker, video worker) and page log.  A module of its own, not
the conftest: with several conftest.py files in the suite, ``from conftest import`` finds whichever
pytest loaded last."""

from __future__ import annotations

import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))
import stack  # noqa: E402

_dbs = iter(range(1, 60))


@dataclass
class WebStack:
    api: stack.ApiServer
    env: dict[str, str]
    workers: list[stack.Worker] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.api.url


def start_stack(port: int, tmp: Path, extra: dict[str, str], video_worker: bool = True) -> WebStack:
    """API + preview worker (+ a video worker), all real; stop it with ``stop_stack``."""
    url = f"redis://127.0.0.1:{port}/{next(_dbs)}"
    redis.Redis.from_url(url).flushdb()
    env = stack.base_env(url, tmp, **extra)
    workers = [stack.Worker(env, f"preview-{uuid.uuid4().hex[:4]}", tmp / "worker-preview.log", preview=True).start()]
    if video_worker:
        workers.append(stack.Worker(env, f"video-{uuid.uuid4().hex[:4]}", tmp / "worker-video.log").start())
    try:
        api = stack.ApiServer(stack.settings_from(env)).__enter__()
        for w in workers:
            w.wait_ready(90)
    except BaseException:
        for w in workers:
            w.stop()
        raise
    return WebStack(api, env, workers)


def stop_stack(s: WebStack) -> None:
    s.api.__exit__(None, None, None)
    for w in s.workers:
        w.stop()


@dataclass
class PageLog:
    """Console errors and uncaught page errors of one page; ``allowed`` names expected answers
    (a 4xx the test provokes shows as a failed resource load in the console)."""

    errors: list[str] = field(default_factory=list)

    def check(self, *allowed: str) -> None:
        left = [e for e in self.errors if not any(a in e for a in allowed)]
        assert not left, f"console or page errors: {left}"

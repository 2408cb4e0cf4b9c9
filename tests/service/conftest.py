"""Fixtures for the service tests: a real redis-server on a free port, Celery worker subprocesses,
moto's S3 server.  Helpers live in ``stack.py``."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

# Test modules elsewhere do ``from conftest import data_path``; without __init__.py files, whichever
# conftest pytest loaded last is the module named ``conftest``, so this one offers the helper too.
from stack import (
    Worker,
    _pings,
    data_path,  # noqa: F401,E402
    free_port,
    redis_binary,
    wait_for,
)

#: one database of the session's Redis for each test that asks (flushed first), more than the tests use:
#: the 60th test to ask failed at setup (StopIteration) when there were 59
_db_counter = iter(range(1, 1024))


@pytest.fixture(scope="session")
def redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = free_port()
    d = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(d), "--databases", "1024"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    wait_for(lambda: _pings(client), 10, what="redis-server")
    yield port
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def redis_url(redis_port: int) -> str:
    """A fresh Redis database of the session server for each test."""
    url = f"redis://127.0.0.1:{redis_port}/{next(_db_counter)}"
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture
def worker_factory(tmp_path: Path) -> Iterator[Any]:
    """Starts video workers (or with ``preview`` the preview lane's worker); the first one of a test
    also brings up the light worker (callbacks, and the beat that runs housekeeping), as `backdrop
    run` does.  The preview worker is started only by the tests that use it: each extra worker
    loads a model on the same two cores."""
    workers: list[Worker] = []

    def make(env: dict[str, str], name: str = "w1", *, preview: bool = False) -> Worker:
        if not workers:
            workers.append(Worker(env, f"light-{uuid.uuid4().hex[:4]}", tmp_path / "worker-light.log", light=True).start())
        w = Worker(env, f"{name}-{uuid.uuid4().hex[:4]}", tmp_path / f"worker-{name}.log", preview=preview).start()
        workers.append(w)
        return w

    yield make
    for w in workers:
        w.stop()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()

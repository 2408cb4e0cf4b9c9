"""Tenants and open mode: keys map to tenants (rotation keeps the jobs), weak or placeholder
credentials are refused at start-up, open mode is explicit and answers loopback clients only,
readiness does not depend on workers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from pydantic import ValidationError
from stack import (
    API_KEY,
    OTHER_KEY,
    ROTATED_KEY,
    WEBHOOK_SECRET,
    ApiServer,
    auth_env,
    base_env,
    data_path,
    settings_from,
)

from service.api.main import create_app
from service.config import Settings


def keys_settings(keys: str, secret: str = WEBHOOK_SECRET) -> Settings:
    return Settings(api_keys=keys, webhook_secret=secret)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "keys",
    [
        API_KEY,  # no tenant
        "alice:short-key",  # under 32 characters
        "alice:replace-with-a-long-random-key-0123456789",  # a placeholder from an example file
        "alice:" + "a" * 40,  # 40 characters, one symbol
        "al ice:" + API_KEY,  # a tenant id with a space
        f"alice:{API_KEY},bob:{API_KEY}",  # one key, two tenants
    ],
)
def test_weak_or_malformed_keys_are_refused(keys: str) -> None:
    with pytest.raises(ValidationError):
        keys_settings(keys)


@pytest.mark.parametrize("secret", ["local-dev-secret", "too-short", "replace-with-a-long-random-secret-value"])
def test_default_or_placeholder_webhook_secret_is_refused_with_keys(secret: str) -> None:
    with pytest.raises(ValidationError):
        keys_settings(f"alice:{API_KEY}", secret)


def test_keys_map_to_tenants() -> None:
    s = keys_settings(f"alice:{API_KEY},alice:{ROTATED_KEY},bob:{OTHER_KEY}")
    assert s.tenant_keys == {API_KEY: "alice", ROTATED_KEY: "alice", OTHER_KEY: "bob"}


def test_no_keys_needs_open_mode() -> None:
    with pytest.raises(RuntimeError, match="OPEN_MODE"):
        create_app(Settings())


def test_open_mode_answers_loopback_clients_only() -> None:
    app = create_app(Settings(open_mode=True))

    async def get(client: tuple[str, int]) -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://backdrop") as c:
            return await c.get("/healthz")

    for client, expected in ((("203.0.113.7", 40000), 403), (("::ffff:198.51.100.2", 40000), 403),
                             (("127.0.0.1", 40000), 200), (("::1", 40000), 200)):
        r = anyio.run(get, client)
        assert r.status_code == expected, (client, r.text)
        if expected == 403:
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["code"] == "open_mode_loopback_only"


@pytest.fixture
def two_servers(redis_url: str, tmp_path: Path) -> Iterator[tuple[dict[str, str], dict[str, str]]]:
    before = base_env(redis_url, tmp_path, **auth_env())
    after = dict(before, BACKDROP_API_KEYS=f"alice:{ROTATED_KEY},bob:{OTHER_KEY}")
    yield before, after


def test_rotating_a_key_keeps_the_tenants_jobs(two_servers: tuple[dict[str, str], dict[str, str]]) -> None:
    before, after = two_servers
    clip = sorted(data_path("videos", "asl").glob("*.mkv"))[0]
    with ApiServer(settings_from(before)) as api, api.client(API_KEY) as c:
        with open(clip, "rb") as f:
            r = c.post("/jobs", files={"video": (clip.name, f)}, data={"background_color": "#102030"})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        alice = c.get("/account").json()
    with ApiServer(settings_from(after)) as api:
        with api.client(ROTATED_KEY) as c:
            assert c.get(f"/jobs/{job_id}").status_code == 200
            assert [j["id"] for j in c.get("/jobs").json()["data"]] == [job_id]
            assert c.get("/account").json() == alice and alice["tenant"] == "alice"
        with api.client(API_KEY) as c:
            r = c.get("/jobs")
            assert r.status_code == 401 and r.json()["code"] == "unauthorized"  # the old key is gone
        with api.client(OTHER_KEY) as c:
            assert c.get(f"/jobs/{job_id}").status_code == 404
            bob = c.get("/account").json()
            assert bob["tenant"] == "bob" and bob["webhook_secret"] != alice["webhook_secret"]


def test_readiness_does_not_need_workers(redis_url: str, tmp_path: Path) -> None:
    with ApiServer(settings_from(base_env(redis_url, tmp_path))) as api, api.client() as c:
        r = c.get("/readyz")
        assert r.status_code == 200, r.text
        assert r.json()["workers"] == 0 and r.json()["checks"] == {"redis": "ok", "storage": "ok"}
        assert "backdrop_workers 0.0" in c.get("/metrics").text

"""Object stores: the local directory and S3 through moto's real HTTP server."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from service.config import Settings
from service.errors import StorageError
from service.storage import LocalStore, S3Store


def _roundtrip(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 3_000_001)
    assert store.put_file("jobs/abc/input.mp4", src, "video/mp4") == 3_000_001
    assert store.size("jobs/abc/input.mp4") == 3_000_001
    assert store.size("jobs/abc/missing.mp4") is None
    dst = tmp_path / "dst.bin"
    store.get_file("jobs/abc/input.mp4", dst)
    assert dst.read_bytes() == src.read_bytes()
    store.put_file("jobs/abc/output.mp4", src)
    assert store.keys("jobs/abc/") == ["jobs/abc/input.mp4", "jobs/abc/output.mp4"]
    assert store.delete_prefix("jobs/abc/") == 2
    assert store.keys("jobs/abc/") == []
    store.check()


def test_local_store(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "objects")
    _roundtrip(store, tmp_path)
    assert store.presigned_url("jobs/abc/x", 60) is None
    for bad in ("../etc/passwd", "/abs", "jobs/../../x", ""):
        with pytest.raises(StorageError):
            store.path(bad)


def test_s3_store_and_presigned_url(tmp_path: Path, s3_endpoint: str) -> None:
    settings = Settings(
        storage="s3", s3_endpoint_url=s3_endpoint, s3_bucket="unit", s3_access_key_id="testing",
        s3_secret_access_key="testing",  # type: ignore[arg-type]
    )
    store = S3Store(settings)
    store.ensure_bucket()
    _roundtrip(store, tmp_path)
    src = tmp_path / "r.txt"
    src.write_bytes(b"hello result")
    store.put_file("jobs/def/output.mp4", src, "video/mp4")
    url = store.presigned_url("jobs/def/output.mp4", 60, "def.mp4")
    assert url and url.startswith(s3_endpoint) and "Signature" in url
    r = httpx.get(url, trust_env=False)
    assert r.status_code == 200 and r.content == b"hello result"
    with pytest.raises(StorageError):
        store.get_file("jobs/none/x", tmp_path / "none")


def test_s3_unreachable_is_transient(tmp_path: Path) -> None:
    from stack import free_port

    from service.errors import TransientStorageError

    settings = Settings(
        storage="s3", s3_endpoint_url=f"http://127.0.0.1:{free_port()}", s3_bucket="b", s3_access_key_id="x",
        s3_secret_access_key="y",  # type: ignore[arg-type]
    )
    store = S3Store(settings)
    src = tmp_path / "a.bin"
    src.write_bytes(b"a")
    with pytest.raises(TransientStorageError):
        store.put_file("jobs/x/input.mp4", src)
    with pytest.raises(TransientStorageError):
        store.check()

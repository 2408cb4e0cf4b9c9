"""Object storage: a local directory (the embedded default) or any S3-compatible store.

Keys are built by the service only (``jobs/{id}/input.mp4``); the local store still refuses any key
that would leave its root.  Files move in chunks (``upload_file``/``download_file`` on S3, chunked
copies locally): an object is never held whole in memory.  Transient failures raise
``TransientStorageError`` so the worker can retry them; the rest raise ``StorageError``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from service.config import Settings, get_settings
from service.errors import StorageError, TransientStorageError

CHUNK = 1024 * 1024


def job_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/"


class ObjectStore(Protocol):
    kind: str

    def put_file(self, key: str, path: Path, content_type: str = "application/octet-stream") -> int: ...
    def get_file(self, key: str, path: Path) -> None: ...
    def size(self, key: str) -> int | None: ...
    def delete_prefix(self, prefix: str) -> int: ...
    def keys(self, prefix: str) -> list[str]: ...
    def presigned_url(self, key: str, ttl_s: int, filename: str | None = None) -> str | None: ...
    def read_head(self, key: str, n: int) -> bytes: ...
    def move(self, src: str, dst: str) -> None: ...
    def check(self) -> None: ...


def _check_key(key: str) -> PurePosixPath:
    p = PurePosixPath(key)
    if not key or p.is_absolute() or any(part in ("..", "") for part in p.parts) or "\\" in key:
        raise StorageError(f"illegal object key {key!r}")
    return p


class LocalStore:
    """A directory; objects are files under it.  Writes are atomic (temp file + rename)."""

    kind = "local"

    def __init__(self, root: Path, chunk: int = CHUNK):
        self.root = Path(root).resolve()
        self.chunk = max(64 * 1024, chunk)

    def path(self, key: str) -> Path:
        p = (self.root / _check_key(key)).resolve()
        if self.root not in p.parents:
            raise StorageError(f"illegal object key {key!r}")
        return p

    def put_file(self, key: str, path: Path, content_type: str = "application/octet-stream") -> int:
        dest = self.path(key)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".part-")
            try:
                with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
                    shutil.copyfileobj(src, out, self.chunk)
                os.replace(tmp, dest)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            return dest.stat().st_size
        except OSError as e:
            raise StorageError(f"local store write failed for {key}: {e}") from e

    def get_file(self, key: str, path: Path) -> None:
        src = self.path(key)
        if not src.is_file():
            raise StorageError(f"object {key} not found", code="object_not_found")
        try:
            with open(src, "rb") as s, open(path, "wb") as d:
                shutil.copyfileobj(s, d, self.chunk)
        except OSError as e:
            raise StorageError(f"local store read failed for {key}: {e}") from e

    def size(self, key: str) -> int | None:
        p = self.path(key)
        return p.stat().st_size if p.is_file() else None

    def delete_prefix(self, prefix: str) -> int:
        base = self.path(prefix.rstrip("/"))
        if base.is_dir():
            n = sum(1 for f in base.rglob("*") if f.is_file())
            shutil.rmtree(base, ignore_errors=True)
            return n
        if base.is_file():
            base.unlink(missing_ok=True)
            return 1
        return 0

    def keys(self, prefix: str) -> list[str]:
        base = self.path(prefix.rstrip("/"))
        if not base.is_dir():
            return []
        return sorted(
            str(f.relative_to(self.root).as_posix())
            for f in base.rglob("*")
            if f.is_file() and not f.name.startswith(".part-")
        )

    def presigned_url(self, key: str, ttl_s: int, filename: str | None = None) -> str | None:
        return None  # served by the API itself (GET /jobs/{id}/result, with Range support)

    def read_head(self, key: str, n: int) -> bytes:
        """The first ``n`` bytes of an object (b"" when it does not exist)."""
        p = self.path(key)
        if not p.is_file():
            return b""
        with open(p, "rb") as f:
            return f.read(n)

    def move(self, src: str, dst: str) -> None:
        """Move an object to another key in place (a rename: nothing is copied)."""
        a, b = self.path(src), self.path(dst)
        try:
            b.parent.mkdir(parents=True, exist_ok=True)
            os.replace(a, b)
        except FileNotFoundError as e:
            raise StorageError(f"object {src} not found", code="object_not_found") from e
        except OSError as e:
            raise StorageError(f"local store move failed for {src}: {e}") from e

    def iter_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes ``start..end`` (inclusive) of an object, in chunks."""
        with open(self.path(key), "rb") as f:
            f.seek(start)
            left = end - start + 1
            while left > 0:
                chunk = f.read(min(self.chunk, left))
                if not chunk:
                    break
                left -= len(chunk)
                yield chunk

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / ".ready"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as e:
            raise StorageError(f"local store not writable: {e}") from e


_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
                    "ServiceUnavailable", "RequestTimeTooSkewed"}


class S3Store:
    """Any S3-compatible store through boto3 (AWS S3, MinIO, R2, …)."""

    kind = "s3"

    def __init__(self, settings: Settings):
        import boto3
        from botocore.config import Config

        self.bucket = settings.s3_bucket
        cfg = Config(
            signature_version="s3v4",
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
            s3={"addressing_style": "path"} if settings.s3_endpoint_url else {},
        )
        secret = settings.s3_secret_access_key.get_secret_value() if settings.s3_secret_access_key else None
        def client(endpoint: str | None) -> Any:
            return boto3.client(
                "s3",
                endpoint_url=endpoint,
                region_name=settings.s3_region,
                aws_access_key_id=settings.s3_access_key_id,
                aws_secret_access_key=secret,
                config=cfg,
            )

        self.client = client(settings.s3_endpoint_url)
        # presigned URLs are signed for the host clients use (e.g. localhost:9000 for MinIO in compose)
        self.presign_client = client(settings.s3_public_endpoint_url) if settings.s3_public_endpoint_url else self.client
        from boto3.s3.transfer import TransferConfig

        part = max(5 * 1024 * 1024, settings.upload_chunk_bytes)  # S3's smallest multipart part
        self._transfer = TransferConfig(multipart_threshold=part, multipart_chunksize=part, max_concurrency=2)

    def _wrap(self, e: Exception, what: str) -> StorageError:
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(e, ClientError):
            code = str(e.response.get("Error", {}).get("Code", ""))
            status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if code in _TRANSIENT_CODES or status >= 500:
                return TransientStorageError(f"{what}: {code or status}")
            if code in ("NoSuchKey", "404", "NotFound"):
                return StorageError(f"{what}: not found", code="object_not_found")
            return StorageError(f"{what}: {code or status}")
        if isinstance(e, BotoCoreError):
            return TransientStorageError(f"{what}: {e}")
        return StorageError(f"{what}: {e}")

    def ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as e:
            if str(e.response.get("Error", {}).get("Code")) not in ("404", "NoSuchBucket", "NotFound"):
                raise self._wrap(e, "head bucket") from e
            try:
                self.client.create_bucket(Bucket=self.bucket)
            except Exception as e2:  # noqa: BLE001
                raise self._wrap(e2, "create bucket") from e2
        except Exception as e:  # noqa: BLE001
            raise self._wrap(e, "head bucket") from e

    def put_file(self, key: str, path: Path, content_type: str = "application/octet-stream") -> int:
        _check_key(key)
        try:
            self.client.upload_file(
                str(path), self.bucket, key, ExtraArgs={"ContentType": content_type}, Config=self._transfer
            )
        except Exception as e:  # noqa: BLE001
            raise self._wrap(e, f"upload {key}") from e
        return Path(path).stat().st_size

    def get_file(self, key: str, path: Path) -> None:
        _check_key(key)
        try:
            self.client.download_file(self.bucket, key, str(path), Config=self._transfer)
        except Exception as e:  # noqa: BLE001
            raise self._wrap(e, f"download {key}") from e

    def size(self, key: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except ClientError as e:
            if str(e.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._wrap(e, f"head {key}") from e
        except Exception as e:  # noqa: BLE001
            raise self._wrap(e, f"head {key}") from e

    def keys(self, prefix: str) -> list[str]:
        try:
            keys: list[str] = []
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                keys.extend(o["Key"] for o in page.get("Contents", []))
            return sorted(keys)
        except Exception as e:  # noqa: BLE001
            raise self._wrap(e, f"list {prefix}") from e

    def delete_prefix(self, prefix: str) -> int:
        keys = self.keys(prefix)
        try:
            for i in range(0, len(keys), 1000):
                batch = [{"Key": k} for k in keys[i : i + 1000]]
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        except Exception as e:  # noqa: BLE001
            raise self._wrap(e, f"delete {prefix}") from e
        return len(keys)

    def presigned_url(self, key: str, ttl_s: int, filename: str | None = None) -> str | None:
        params = {"Bucket": self.bucket, "Key": key}
        if filename:
            params["ResponseContentDisposition"] = f'attachment; filename="{filename}"'
        try:
            return str(self.presign_client.generate_presigned_url("get_object", Params=params, ExpiresIn=int(ttl_s)))
        except Exception as e:  # noqa: BLE001
            raise self._wrap(e, f"presign {key}") from e

    def presigned_put(self, key: str, ttl_s: int, content_type: str) -> str:
        """A URL a client PUTs the object's bytes to directly (with this ``Content-Type``)."""
        _check_key(key)
        params = {"Bucket": self.bucket, "Key": key, "ContentType": content_type}
        try:
            return str(self.presign_client.generate_presigned_url("put_object", Params=params, ExpiresIn=int(ttl_s)))
        except Exception as e:  # noqa: BLE001
            raise self._wrap(e, f"presign put {key}") from e

    def presigned_multipart(self, key: str, ttl_s: int, content_type: str, parts: int) -> tuple[str, list[str]]:
        """Start a multipart upload; its id and one presigned PUT URL per part (numbered from 1).
        ``complete_multipart`` finishes it; the bucket's lifecycle rule aborts one left incomplete."""
        _check_key(key)
        try:
            upload_id = str(self.client.create_multipart_upload(Bucket=self.bucket, Key=key, ContentType=content_type)[
                "UploadId"])
            urls = [
                str(self.presign_client.generate_presigned_url(
                    "upload_part", Params={"Bucket": self.bucket, "Key": key, "UploadId": upload_id, "PartNumber": n},
                    ExpiresIn=int(ttl_s),
                ))
                for n in range(1, parts + 1)
            ]
        except Exception as e:  # noqa: BLE001
            raise self._wrap(e, f"multipart {key}") from e
        return upload_id, urls

    def complete_multipart(self, key: str, upload_id: str, etags: list[tuple[int, str]]) -> None:
        try:
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id,
                MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etag} for n, etag in sorted(etags)]},
            )
        except Exception as e:  # noqa: BLE001
            raise self._wrap(e, f"complete {key}") from e

    def abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except Exception as e:  # noqa: BLE001
            raise self._wrap(e, f"abort {key}") from e

    def read_head(self, key: str, n: int) -> bytes:
        """The first ``n`` bytes of an object, by a ranged GET (the rest is not downloaded)."""
        _check_key(key)
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes=0-{n - 1}")["Body"]
            try:
                return bytes(body.read(n))
            finally:
                body.close()
        except Exception as e:  # noqa: BLE001
            raise self._wrap(e, f"read {key}") from e

    def move(self, src: str, dst: str) -> None:
        """Server-side copy (multipart for large objects) then delete: the bytes never leave the store."""
        _check_key(src)
        _check_key(dst)
        try:
            self.client.copy({"Bucket": self.bucket, "Key": src}, self.bucket, dst, Config=self._transfer)
            self.client.delete_object(Bucket=self.bucket, Key=src)
        except Exception as e:  # noqa: BLE001
            raise self._wrap(e, f"move {src}") from e

    def check(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as e:  # noqa: BLE001
            raise self._wrap(e, "head bucket") from e


def create_store(settings: Settings | None = None) -> LocalStore | S3Store:
    settings = settings or get_settings()
    if settings.storage == "s3":
        return S3Store(settings)
    return LocalStore(settings.storage_dir, settings.upload_chunk_bytes)

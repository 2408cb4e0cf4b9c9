"""``/uploads``: direct uploads, so a big file goes to the object store without crossing the API.

``POST /uploads`` (JSON ``filename``, ``content_type``, ``size``) answers 201 with where to put the
bytes.  On S3 that is a presigned PUT, or for a large file (above ``MULTIPART_THRESHOLD``, or when a
``part_size`` is asked for) a presigned multipart upload: one PUT URL per part, then
``POST /uploads/{id}/complete`` with the parts' ETags.  On the local store it is ``PUT
/uploads/{id}?token=…`` on this API, streamed to the store off the event loop and counted against the
declared size.  The URL is the capability (like a presigned one): the PUT needs no API key.

An upload is a record in Redis owned by the caller's tenant that expires after ``upload_ttl_s``;
``POST /jobs`` takes its id (``video_upload_id``, ``background_upload_id``) once, moves the object
to the job's prefix inside the store (never downloading it) and forgets the record.  Objects of
uploads never used are deleted by the housekeeping sweep (``sweep_uploads``).
"""

from __future__ import annotations

import hmac
import math
import os
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, BinaryIO

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from service.api.deps import ApiKeyDep, JobStoreDep, ObjectStoreDep, SettingsDep
from service.api.uploads import FEED_BYTES, _suffix, upload_slots
from service.errors import RequestInvalid, UploadIncomplete, UploadNotFound, UploadTooLarge
from service.workers.housekeeping import UPLOAD_EXPIRY, UPLOAD_RECORD, upload_prefix

router = APIRouter(prefix="/uploads", tags=["uploads"])

#: Files larger than this get a multipart upload on S3 (a single PUT stops at 5 GiB, and a part
#: that fails is retried alone).
MULTIPART_THRESHOLD = 100 * 1024**2
DEFAULT_PART_BYTES = 64 * 1024**2
MIN_PART_BYTES = 5 * 1024**2  # S3's smallest part (but the last)
MAX_PARTS = 10_000
_PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}


class UploadCreate(BaseModel):
    """What the caller is about to upload."""

    model_config = ConfigDict(extra="forbid")

    filename: str = Field(min_length=1, max_length=200, description="The file's name (its suffix is kept)")
    content_type: str = Field(
        "application/octet-stream", max_length=100, pattern=r"^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+$",
        description="Sent back in `headers`: the PUT must carry it",
    )
    size: int = Field(ge=1, strict=True, description="Bytes; at most max_upload_bytes")
    part_size: int | None = Field(
        None, ge=MIN_PART_BYTES, strict=True, le=5 * 1024**3,
        description="S3 only: ask for a multipart upload with parts of this size (automatic above 100 MiB)",
    )


class UploadPart(BaseModel):
    number: int
    url: str


class UploadMultipart(BaseModel):
    part_size: int
    parts: list[UploadPart]
    complete_url: str = Field(description="POST the parts' ETags here once every part is put")


class UploadPublic(BaseModel):
    id: str
    url: str | None = Field(description="Where to PUT the file (null for a multipart upload: see `multipart`)")
    method: str = "PUT"
    headers: dict[str, str]
    expires_at: datetime
    multipart: UploadMultipart | None = None


class CompletedPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    number: int = Field(ge=1, le=MAX_PARTS, strict=True)
    etag: str = Field(min_length=1, max_length=200)


class UploadComplete(BaseModel):
    model_config = ConfigDict(extra="forbid")

    parts: list[CompletedPart] = Field(min_length=1, max_length=MAX_PARTS)


class UploadRecord(BaseModel):
    id: str
    owner: str
    key: str
    filename: str
    content_type: str
    size: int
    expires_at: datetime
    token: str
    multipart_id: str | None = None


def load_upload(r: Any, owner: str, upload_id: str) -> UploadRecord:
    """The caller's upload; ``UploadNotFound`` when unknown, expired, used or another tenant's."""
    raw = r.get(UPLOAD_RECORD + upload_id) if _plausible(upload_id) else None
    rec = UploadRecord.model_validate_json(raw) if raw else None
    if rec is None or rec.owner != owner:
        raise UploadNotFound(f"no upload {upload_id[:64]!r} (unknown, expired, already used, or not yours)")
    return rec


def consume_upload(r: Any, rec: UploadRecord) -> None:
    """Take the upload for one job, atomically: a second job (or a concurrent request) gets
    ``UploadNotFound``."""
    if not r.delete(UPLOAD_RECORD + rec.id):
        raise UploadNotFound(f"upload {rec.id!r} was used by another job meanwhile")
    r.zrem(UPLOAD_EXPIRY, rec.id)


def _plausible(upload_id: str) -> bool:
    return len(upload_id) == 32 and all(c in "0123456789abcdef" for c in upload_id)


def _base(request: Request, settings: Any) -> str:
    return (settings.public_base_url or str(request.base_url)).rstrip("/")


@router.post(
    "", status_code=201, response_model=UploadPublic,
    responses={413: {"description": "upload_too_large", **_PROBLEM}, 422: {"description": "validation_error", **_PROBLEM}},
)
async def create_upload(
    request: Request, body: UploadCreate, owner: ApiKeyDep, settings: SettingsDep, jobs: JobStoreDep,
    objects: ObjectStoreDep,
) -> JSONResponse:
    """Reserve a direct upload: where to PUT the file (presigned on S3), valid for upload_ttl_s."""
    if body.size > settings.max_upload_bytes:
        raise UploadTooLarge(f"{body.size} bytes exceed the {settings.max_upload_bytes} bytes accepted")
    uid = uuid.uuid4().hex
    ttl = settings.upload_ttl_s
    rec = UploadRecord(
        id=uid, owner=owner, key=f"{upload_prefix(uid)}file{_suffix(body.filename)}", filename=body.filename,
        content_type=body.content_type, size=body.size, expires_at=datetime.now(UTC) + timedelta(seconds=ttl),
        token=secrets.token_urlsafe(24),
    )
    headers = {"Content-Type": body.content_type}
    out = UploadPublic(id=uid, url=None, headers=headers, expires_at=rec.expires_at)
    if objects.kind == "s3" and (body.part_size or body.size > MULTIPART_THRESHOLD):
        part = max(body.part_size or DEFAULT_PART_BYTES, math.ceil(body.size / MAX_PARTS))
        count = math.ceil(body.size / part)
        rec.multipart_id, urls = await run_in_threadpool(objects.presigned_multipart, rec.key, ttl, body.content_type, count)
        out.headers = {}  # a part's PUT carries no Content-Type of its own: it was set on the upload
        out.multipart = UploadMultipart(
            part_size=part, parts=[UploadPart(number=i + 1, url=u) for i, u in enumerate(urls)],
            complete_url=f"{_base(request, settings)}/uploads/{uid}/complete",
        )
    elif objects.kind == "s3":
        out.url = await run_in_threadpool(objects.presigned_put, rec.key, ttl, body.content_type)
    else:
        out.url = f"{_base(request, settings)}/uploads/{uid}?token={rec.token}"

    def save() -> None:
        pipe = jobs.r.pipeline(transaction=True)
        pipe.set(UPLOAD_RECORD + uid, rec.model_dump_json(), ex=ttl)
        pipe.zadd(UPLOAD_EXPIRY, {uid: rec.expires_at.timestamp()})
        pipe.execute()

    await run_in_threadpool(save)
    return JSONResponse(out.model_dump(mode="json"), status_code=201, headers={"Location": f"/uploads/{uid}"})


@router.put(
    "/{upload_id}", status_code=204,
    responses={422: {"description": "upload_not_found", **_PROBLEM}, 413: {"description": "upload_too_large", **_PROBLEM}},
)
async def put_upload(
    request: Request, upload_id: str, token: Annotated[str, Query(max_length=100)], jobs: JobStoreDep,
    objects: ObjectStoreDep, settings: SettingsDep,
) -> Response:
    """The local store's upload URL: the body is streamed to the store (the URL's token is the key)."""
    raw = await run_in_threadpool(jobs.r.get, UPLOAD_RECORD + upload_id) if _plausible(upload_id) else None
    rec = UploadRecord.model_validate_json(raw) if raw else None
    if rec is None or objects.kind != "local" or not hmac.compare_digest(rec.token, token):
        raise UploadNotFound(f"no upload {upload_id[:64]!r} here (unknown, expired or a wrong token)")
    slots = upload_slots(request.app.state, settings.max_concurrent_uploads)
    slots.take()
    dest = objects.path(rec.key)
    try:
        await _spool(request, dest, rec.size)
    finally:
        slots.give_back()
    if not await run_in_threadpool(jobs.r.exists, UPLOAD_RECORD + upload_id):
        # used by a job or expired while its bytes arrived: nothing would ever take or sweep this file
        await run_in_threadpool(dest.unlink, True)
        raise UploadNotFound(f"upload {upload_id!r} was used by a job or expired while it was being put")
    return Response(status_code=204)


async def _spool(request: Request, dest: Path, declared: int) -> None:
    """Write the request body to ``dest`` (temp file + rename) off the event loop, in batches;
    exactly ``declared`` bytes or refused."""
    tmp = dest.with_name(f".part-{uuid.uuid4().hex}")
    await run_in_threadpool(lambda: dest.parent.mkdir(parents=True, exist_ok=True))
    fh: BinaryIO = await run_in_threadpool(open, tmp, "wb")
    try:
        size, pending = 0, []
        async for chunk in request.stream():
            size += len(chunk)
            if size > declared:
                raise UploadTooLarge(f"the body is larger than the {declared} bytes declared")
            pending.append(chunk)
            if sum(map(len, pending)) >= FEED_BYTES:
                await run_in_threadpool(fh.writelines, pending)
                pending = []
        await run_in_threadpool(fh.writelines, pending)
        await run_in_threadpool(fh.close)
        if size != declared:
            raise RequestInvalid(f"the body has {size} bytes; the upload declared {declared}")
        await run_in_threadpool(os.replace, tmp, dest)
    except BaseException:
        fh.close()
        tmp.unlink(missing_ok=True)
        raise


@router.post(
    "/{upload_id}/complete", status_code=204,
    responses={422: {"description": "upload_not_found", **_PROBLEM}, 409: {"description": "upload_incomplete", **_PROBLEM}},
)
async def complete_upload(
    upload_id: str, body: UploadComplete, owner: ApiKeyDep, jobs: JobStoreDep, objects: ObjectStoreDep
) -> Response:
    """Finish a multipart upload (S3) with the ETags its part PUTs answered."""
    rec = await run_in_threadpool(load_upload, jobs.r, owner, upload_id)
    if rec.multipart_id is None or objects.kind != "s3":
        raise UploadNotFound(f"upload {upload_id!r} is not a multipart upload")
    try:
        await run_in_threadpool(
            objects.complete_multipart, rec.key, rec.multipart_id, [(p.number, p.etag) for p in body.parts]
        )
    except Exception as e:  # noqa: BLE001 - a missing or wrong part is the caller's to fix
        if getattr(e, "code", "") == "storage_unavailable":
            raise
        raise UploadIncomplete(f"the multipart upload could not be completed: {getattr(e, 'message', e)}") from e
    return Response(status_code=204)

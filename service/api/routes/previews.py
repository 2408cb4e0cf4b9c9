"""``/previews``: the first frame of a video, cut out and on its new background, in a few seconds.

The client sends one still frame (the web page grabs it from the chosen video in the browser) and
the same background and option fields as ``POST /jobs``; the API checks the headers and the
options with the same rules as a job, stores the pictures and queues a task on the ``preview``
queue (``service.workers.preview``).  It never decodes a picture or runs a model.  The body is
small (``MAX_PREVIEW_BODY``) and read into memory; parsing runs in a worker thread.
"""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path
from typing import Any

import python_multipart as multipart
from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from pydantic import BaseModel, Field
from python_multipart.multipart import parse_options_header

from service.api.deps import ApiKeyDep, CeleryDep, ObjectStoreDep, SettingsDep
from service.api.schemas import ErrorPublic, JobCreate
from service.api.uploads import upload_slots
from service.errors import (
    DependencyUnavailable,
    EmptyFile,
    InvalidFrame,
    QuotaExceeded,
    RequestInvalid,
    ResultNotReady,
    UnsupportedBackground,
    UploadTooLarge,
)
from service.jobs import timestamp
from service.options import BLUR_STRENGTH_DEFAULT, BLUR_STRENGTH_MAX, BLUR_STRENGTH_MIN
from service.previews import COMPOSITE, CUTOUT, Preview, PreviewStatus, PreviewStore
from service.spool import Workdir
from service.workers.celery_app import PREVIEW_TASK

log = logging.getLogger(__name__)

router = APIRouter(prefix="/previews", tags=["previews"])

#: Largest request body: a full-resolution JPEG frame and a background picture fit easily.
MAX_PREVIEW_BODY = 24 * 1024 * 1024
#: Previews one tenant may ask for in a minute (the page asks for one at a time, after each change):
#: past it 429 ``quota_exceeded``, so one key cannot fill the preview lane or the store.
PREVIEWS_PER_MINUTE = 60
FILE_FIELDS = ("frame", "background")
_PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}
MULTIPART_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["frame"],
                    "properties": {
                        "frame": {"type": "string", "format": "binary",
                                  "description": "one still frame of the video, upright, PNG or JPEG"},
                        "background": {"type": "string", "format": "binary",
                                       "description": "a still background picture (for a background video: its first frame)"},
                        "background_color": {"type": "string", "pattern": "^#[0-9A-Fa-f]{6}$"},
                        "background_blur": {"type": "boolean", "default": False},
                        "background_blur_strength": {"type": "number", "minimum": BLUR_STRENGTH_MIN,
                                                     "maximum": BLUR_STRENGTH_MAX, "default": BLUR_STRENGTH_DEFAULT},
                        "model": {"type": "string"},
                        "output_format": {"type": "string"},
                        "composite": {"type": "string"},
                        "harmonize": {"type": "number", "minimum": 0, "maximum": 1},
                    },
                },
            }
        },
    },
}


class PersonPublic(BaseModel):
    """One person of the frame, for choosing who stays: send ``point`` back as a keep point."""

    id: int
    box: tuple[int, int, int, int] = Field(description="x0, y0, x1, y1 in frame pixels")
    point: tuple[int, int] = Field(description="x, y of a pixel inside the person: a keep point that selects them")
    score: float = Field(description="The detector's confidence, 0 to 1")


class PreviewPublic(BaseModel):
    id: str
    status: PreviewStatus
    created_at: str
    finished_at: str | None
    width: int
    height: int
    seconds: float | None = Field(description="Time the worker took to render it")
    cutout_url: str | None = Field(description="The person cut out, RGBA PNG (presigned on S3)")
    composite_url: str | None = Field(description="The frame as the chosen output shows it, JPEG (None for webm/mov)")
    people: list[PersonPublic] = Field(
        default_factory=list, description="People found on the frame, largest first (empty until it succeeded)"
    )
    error: ErrorPublic | None
    expires_in_s: int


def _store(request: Request) -> PreviewStore:
    return PreviewStore(request.app.state.jobs.r, request.app.state.settings)


def _url(request: Request, preview: Preview, name: str) -> str | None:
    app = request.app
    key = preview.prefix + name
    url = app.state.objects.presigned_url(key, app.state.settings.preview_ttl_s, None)
    return str(url) if url else f"{str(request.base_url).rstrip('/')}/previews/{preview.id}/{name}"


def _public(request: Request, preview: Preview) -> dict[str, Any]:
    done = preview.status is PreviewStatus.SUCCEEDED
    return {
        "id": preview.id,
        "status": preview.status.value,
        "created_at": timestamp(preview.created_at),
        "finished_at": timestamp(preview.finished_at),
        "width": preview.width,
        "height": preview.height,
        "seconds": preview.seconds,
        "cutout_url": _url(request, preview, CUTOUT) if done else None,
        "composite_url": _url(request, preview, COMPOSITE) if done and preview.has_composite else None,
        "people": preview.people if done else [],
        "error": preview.error.model_dump() if preview.error else None,
        "expires_in_s": request.app.state.settings.preview_ttl_s,
    }


def _parse(content_type: str, body: bytes, workdir: Path) -> tuple[dict[str, str], dict[str, Path]]:
    """Text fields and file parts (written to ``workdir``) of a small multipart body."""
    ctype, params = parse_options_header(content_type or "")
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise RequestInvalid("send the preview as multipart/form-data (a 'frame' picture and the options)")
    fields: dict[str, str] = {}
    files: dict[str, Path] = {}

    def on_field(f: Any) -> None:
        name = f.field_name.decode("utf-8", "replace")
        if name in fields or name in FILE_FIELDS:
            raise RequestInvalid(f"field {name[:40]!r} sent twice or as text")
        fields[name] = (f.value or b"").decode("utf-8", "replace")

    def on_file(f: Any) -> None:
        name = f.field_name.decode("utf-8", "replace")
        if name not in FILE_FIELDS:
            raise RequestInvalid(f"unexpected file field {name[:40]!r}; send 'frame' and optionally 'background'")
        if name in files:
            raise RequestInvalid(f"field {name!r} sent twice")
        path = workdir / name
        f.file_object.seek(0)
        path.write_bytes(f.file_object.read())
        f.close()
        files[name] = path

    headers = {"Content-Type": content_type.encode("latin-1", "replace"), "Content-Length": str(len(body)).encode()}
    try:
        multipart.parse_form(headers, io.BytesIO(body), on_field, on_file)  # type: ignore[arg-type]
    except multipart.exceptions.FormParserError as e:
        raise RequestInvalid(f"malformed multipart body: {e}") from e
    return fields, files


def _check_pictures(files: dict[str, Path], settings: Any) -> tuple[int, int]:
    """Headers only, nothing decoded: the frame is one PNG or JPEG within the video limits, the
    background a still image within the background limits.  Returns the frame's size."""
    from service.media.confined import inspect_background_confined
    from service.media.inspect import ImageHeaderError, check_frame_size, read_image_header

    frame = files["frame"]
    if frame.stat().st_size == 0:
        raise EmptyFile("the frame is empty")
    try:
        header = read_image_header(frame)
    except ImageHeaderError as exc:
        raise InvalidFrame(f"the frame is not a PNG or JPEG picture: {exc}") from None
    if header.format not in ("png", "jpeg") or header.frames != 1:
        raise InvalidFrame(f"the frame must be one PNG or JPEG picture, not {header.format.upper()}")
    if header.unsupported:
        raise InvalidFrame(f"the frame: {header.unsupported}")
    check_frame_size(header.width, header.height, settings, InvalidFrame)
    if "background" in files:
        info = inspect_background_confined(files["background"], settings)
        if info.kind != "image":
            raise UnsupportedBackground(
                "a preview's background is a still picture: for a background video send its first frame"
            )
    return header.width, header.height


def _suffix(path: Path) -> str:
    with open(path, "rb") as fh:
        return ".png" if fh.read(4) == b"\x89PNG" else ".jpg"


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_PREVIEW_BODY:
        raise UploadTooLarge(f"a preview request is at most {MAX_PREVIEW_BODY} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_PREVIEW_BODY:
            raise UploadTooLarge(f"a preview request is at most {MAX_PREVIEW_BODY} bytes")
    return bytes(body)


@router.post(
    "",
    status_code=202,
    response_model=PreviewPublic,
    openapi_extra=MULTIPART_DOC,
    responses={
        413: {"description": "upload_too_large, background_too_large", **_PROBLEM},
        429: {"description": "quota_exceeded: more than PREVIEWS_PER_MINUTE in a minute (Retry-After)", **_PROBLEM},
        415: {"description": "unsupported_background", **_PROBLEM},
        422: {"description": "invalid_frame (not one PNG/JPEG, or past the frame limits), invalid options (same codes "
                             "as POST /jobs)", **_PROBLEM},
        503: {"description": "busy, dependency_unavailable (Retry-After)", **_PROBLEM},
    },
)
async def create_preview(
    request: Request, owner: ApiKeyDep, settings: SettingsDep, objects: ObjectStoreDep, celery: CeleryDep
) -> JSONResponse:
    """Queue a preview of one frame with a background and options; poll ``GET /previews/{id}``."""
    if await run_in_threadpool(_store(request).count_request, owner) > PREVIEWS_PER_MINUTE:
        raise QuotaExceeded(
            f"this tenant asked for more than {PREVIEWS_PER_MINUTE} previews in a minute; retry shortly",
            retry_after_s=max(1, 60 - int(time.time()) % 60),
        )
    slots = upload_slots(request.app.state, settings.max_concurrent_uploads)
    slots.take()
    try:
        body = await _read_body(request)
        spool = await run_in_threadpool(Workdir, "preview-", settings.spool_dir)
        try:
            fields, files = await run_in_threadpool(_parse, request.headers.get("content-type", ""), body, spool.path)
            del body
            if "frame" not in files:
                raise RequestInvalid("the 'frame' file field is required")
            params = JobCreate.from_form(fields, "background" in files, settings.model)
            if params.callback_url:
                raise RequestInvalid("a preview takes no callback_url")
            width, height = await run_in_threadpool(_check_pictures, files, settings)
            preview = Preview(
                owner=owner, options=params.options.model_dump(mode="json"), width=width, height=height,
                background_color=params.background_color, background_blur_strength=params.background_blur_strength,
            )
            preview.frame_key = preview.prefix + "frame" + _suffix(files["frame"])
            if "background" in files:
                preview.background_key = preview.prefix + "background" + _suffix(files["background"])
            await run_in_threadpool(_put, objects, preview, files)
        finally:
            await run_in_threadpool(spool.remove)
    finally:
        slots.give_back()
    store = _store(request)
    await run_in_threadpool(store.create, preview)
    try:
        await run_in_threadpool(
            lambda: celery.send_task(
                PREVIEW_TASK, args=[preview.id], queue=settings.preview_queue_name, expires=settings.preview_ttl_s
            )
        )
    except Exception as e:  # noqa: BLE001 - the broker is down
        log.exception("could not enqueue preview %s", preview.id)
        raise DependencyUnavailable("the preview queue is unavailable; retry later") from e
    return JSONResponse(
        _public(request, preview), status_code=202, headers={"Location": f"/previews/{preview.id}"}
    )


def _put(objects: Any, preview: Preview, files: dict[str, Path]) -> None:
    objects.put_file(preview.frame_key, files["frame"], "image/png" if preview.frame_key.endswith(".png") else "image/jpeg")
    if preview.background_key:
        bg_type = "image/png" if preview.background_key.endswith(".png") else "image/jpeg"
        objects.put_file(preview.background_key, files["background"], bg_type)


@router.get("/{preview_id}", response_model=PreviewPublic, responses={404: {"description": "preview_not_found"}})
async def read_preview(request: Request, preview_id: str, owner: ApiKeyDep) -> dict[str, Any]:
    """Status of a preview and, once it succeeded, the URLs of its two pictures."""
    preview = await run_in_threadpool(_store(request).get_for, owner, preview_id)
    return _public(request, preview)


@router.get(
    "/{preview_id}/{name}",
    response_class=Response,
    responses={200: {"description": "the picture"}, 307: {"description": "redirect to a presigned URL"},
               404: {"description": "preview_not_found, not_found"}, 409: {"description": "result_not_ready"}},
)
async def read_preview_image(
    request: Request, preview_id: str, name: str, owner: ApiKeyDep, objects: ObjectStoreDep, settings: SettingsDep
) -> Response:
    """One of a preview's pictures (``cutout.png`` or ``composite.jpg``)."""
    if name not in (CUTOUT, COMPOSITE):
        from service.errors import RouteNotFound

        raise RouteNotFound(f"a preview has {CUTOUT} and {COMPOSITE}, not {name[:40]!r}")
    preview = await run_in_threadpool(_store(request).get_for, owner, preview_id)
    if preview.status is not PreviewStatus.SUCCEEDED or (name == COMPOSITE and not preview.has_composite):
        raise ResultNotReady(f"preview {preview_id} is {preview.status.value}; it has no {name}")
    key = preview.prefix + name
    url = await run_in_threadpool(objects.presigned_url, key, settings.preview_ttl_s, None)
    if url:
        return RedirectResponse(url, status_code=307)
    path = objects.path(key)
    if not path.is_file():
        raise ResultNotReady(f"the {name} of preview {preview_id} is no longer stored")
    media = "image/png" if name == CUTOUT else "image/jpeg"
    return FileResponse(path, media_type=media, headers={"Cache-Control": "private, max-age=60"})

"""``/jobs``: submit a video, follow it, fetch its result, cancel or delete it, list them."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from redis.exceptions import RedisError
from starlette.responses import MalformedRangeHeader
from starlette.responses import RangeNotSatisfiable as StarletteRangeNotSatisfiable

from service.admission import Admission, IdempotencyFingerprint, Reservation
from service.api.deps import ApiKeyDep, CeleryDep, JobStoreDep, ObjectStoreDep, SettingsDep
from service.api.routes.uploads import UploadRecord, consume_upload, load_upload
from service.api.schemas import JobCreate, JobPublic, JobsPublic, job_form_schema
from service.api.uploads import FILE_FIELDS, MAX_PARTS, ParsedForm, parse_multipart, upload_slots
from service.errors import (
    DependencyUnavailable,
    EmptyFile,
    IllegalTransition,
    InvalidRange,
    NotAVideo,
    RangeNotSatisfiable,
    RequestInvalid,
    ResultNotReady,
    UnsupportedBackground,
    UploadIncomplete,
    UploadTooLarge,
)
from service.jobs import Background, Job, JobOptions, JobStatus, VideoMeta, public_dict, result_url
from service.storage import job_prefix
from service.workers.celery_app import PEOPLE_CHECK_TASK, PROCESS_TASK, WEBHOOK_TASK, time_limits

log = logging.getLogger(__name__)

router = APIRouter(prefix="/jobs", tags=["jobs"])

#: Largest ``offset`` of ``GET /jobs`` (far past any real listing; keeps Redis' ranges in bounds).
MAX_OFFSET = 1_000_000_000
#: Inputs named instead of sent: a URL the worker fetches, or the id of a direct upload.
SOURCE_FIELDS = ("video_url", "background_url", "video_upload_id", "background_upload_id")
#: Largest JSON body of ``POST /jobs`` (it holds options and URLs, never media).
MAX_JSON_BYTES = 64 * 1024
_SOURCE_DOCS = {
    "video_url": "http(s) URL of the video, fetched by the worker (not the API) through the address guard",
    "background_url": "http(s) URL of a background image or video, fetched by the worker",
    "video_upload_id": "id of a direct upload (POST /uploads) holding the video",
    "background_upload_id": "id of a direct upload holding the background",
}


def _request_schemas() -> tuple[dict[str, Any], dict[str, Any]]:
    """The multipart and the JSON body of ``POST /jobs``, from the same form schema: the video is a
    file, a URL or an upload id (one of them); the JSON body names its inputs only."""
    form = job_form_schema()
    sources = {
        name: {"type": "string", "maxLength": 2048 if name.endswith("url") else 64, "description": doc}
        for name, doc in _SOURCE_DOCS.items()
    }
    multipart = {**form, "properties": {**form["properties"], **sources}}
    multipart.pop("required", None)
    props = {k: v for k, v in form["properties"].items() if k not in ("video", "background")}
    as_json = {"type": "object", "properties": {**props, **sources}, "additionalProperties": False}
    return multipart, as_json


_MULTIPART_SCHEMA, _JSON_SCHEMA = _request_schemas()
MULTIPART_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": _MULTIPART_SCHEMA,
                "encoding": {
                    "video": {"contentType": "application/octet-stream"},
                    "background": {"contentType": "application/octet-stream"},
                },
            },
            "application/json": {"schema": _JSON_SCHEMA},
            "application/x-www-form-urlencoded": {"schema": _JSON_SCHEMA},
        },
    },
    "parameters": [
        {"name": "Idempotency-Key", "in": "header", "required": False,
         "schema": {"type": "string", "maxLength": 200},
         "description": "Makes a retried POST return the same job; reused with a different request: 422"},
    ],
}


def _public(job: Job, request: Request) -> dict[str, Any]:
    app = request.app
    url = result_url(job, app.state.objects, app.state.settings, str(request.base_url))
    return public_dict(job, url)


def _probe(path: Path, settings: Any) -> VideoMeta:
    from service.media.confined import inspect_video_confined  # headers and packets only: nothing is decoded

    info = inspect_video_confined(path, settings)
    return VideoMeta(
        width=int(info.width),
        height=int(info.height),
        fps=float(info.fps),
        frames=int(info.frames),
        duration_s=float(info.duration_s),
        has_audio=bool(info.has_audio),
    )


def _validate_background(path: Path, settings: Any) -> None:
    from service.media.confined import inspect_background_confined  # headers only: nothing is decoded

    inspect_background_confined(path, settings)


@dataclass(frozen=True)
class Sources:
    """Where each input comes from: a file in the form, a URL (``video_url``), or a direct upload
    (``video_upload_id``); at most one of them each, and one for the video."""

    video_url: str | None = None
    background_url: str | None = None
    video_upload_id: str | None = None
    background_upload_id: str | None = None

    @classmethod
    def take(cls, fields: dict[str, str], files: dict[str, Any]) -> Sources:
        """The source fields, removed from ``fields`` (the rest are options)."""
        given = {name: fields.pop(name).strip() for name in SOURCE_FIELDS if name in fields}
        src = cls(**{k: v for k, v in given.items() if v})
        for kind in ("video", "background"):
            named = [n for n, v in ((kind, kind in files), (f"{kind}_url", getattr(src, f"{kind}_url")),
                                    (f"{kind}_upload_id", getattr(src, f"{kind}_upload_id"))) if v]
            if len(named) > 1:
                raise RequestInvalid(f"give the {kind} once: {' or '.join(named)}, not both")
            if kind == "video" and not named:
                raise RequestInvalid("the video is required: a 'video' file, 'video_url' or 'video_upload_id'")
        if src.video_upload_id and src.video_upload_id == src.background_upload_id:
            # one upload is moved into one job input; refused before either is claimed
            raise RequestInvalid("video_upload_id and background_upload_id name the same upload: one file cannot be both")
        return src

    @property
    def has_background(self) -> bool:
        return bool(self.background_url or self.background_upload_id)

    def fingerprint_parts(self) -> dict[str, str]:
        return {k: hashlib.sha256(v.encode()).hexdigest() for k, v in vars(self).items() if v}


async def _small_body(request: Request, what: str) -> bytes:
    """A body that names its inputs (JSON or a urlencoded form), read whole: at most ``MAX_JSON_BYTES``."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BYTES:
            raise RequestInvalid(f"the {what} body exceeds {MAX_JSON_BYTES} bytes (media go by URL or upload id)")
    return bytes(body)


def _no_repeats(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """A JSON object whose keys are all different: a field sent twice is refused, as a form's is,
    not decided by whichever came last."""
    data: dict[str, object] = {}
    for name, value in pairs:
        if name in data:
            raise ValueError(f"field {name[:40]!r} sent twice")
        data[name] = value
    return data


async def _json_fields(request: Request) -> dict[str, str]:
    """The JSON body of ``POST /jobs`` as form fields (strings, as a form would send them)."""
    body = await _small_body(request, "JSON")
    try:
        data = json.loads(body, object_pairs_hook=_no_repeats)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestInvalid(f"the body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise RequestInvalid("the JSON body must be an object")
    fields: dict[str, str] = {}
    for name, value in data.items():
        if value is None:
            continue
        if isinstance(value, bool):
            fields[str(name)] = "true" if value else "false"
        elif isinstance(value, (int, float, str)):
            fields[str(name)] = str(value)
        else:
            raise RequestInvalid(f"field {str(name)[:40]!r} must be a string, number or boolean")
    return fields


async def _urlencoded_fields(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body of ``POST /jobs`` as form fields: the same
    fields as the JSON body (a form of this type carries no file)."""
    body = await _small_body(request, "form")
    try:
        pairs = parse_qsl(body.decode("ascii"), keep_blank_values=True, errors="strict", max_num_fields=MAX_PARTS)
    except ValueError as e:  # non-ASCII bytes, percent-escapes that are not UTF-8, too many fields
        raise RequestInvalid(f"the form body is not a valid urlencoded form: {str(e)[:200]}") from None
    fields: dict[str, str] = {}
    for name, value in pairs:
        if name in FILE_FIELDS:
            raise RequestInvalid(
                f"{name!r} is a file: send files as multipart/form-data, or name the {name} by "
                f"{name}_url or {name}_upload_id"
            )
        if name in fields:
            raise RequestInvalid(f"field {name[:40]!r} sent twice")
        fields[name] = value
    return fields


async def _stored_upload(
    uploads: _Uploads, owner: str, upload_id: str, settings: Any, *, background: bool
) -> tuple[UploadRecord, VideoMeta | None]:
    """The caller's upload, its stored object checked in place (never downloaded): its size, then
    on the local store the full header inspection of the file itself; on S3 the leading bytes
    only, read by a ranged GET (a partial check: the worker inspects the whole file before any
    work, and the job's ``video`` is filled in then).  The video's metadata when known."""
    rec = await run_in_threadpool(load_upload, uploads.r, owner, upload_id)
    size = await run_in_threadpool(uploads.objects.size, rec.key)
    if size is None:
        raise UploadIncomplete(f"upload {upload_id!r} holds no file yet: PUT it (and complete a multipart upload) first")
    if size > settings.max_upload_bytes:
        raise UploadTooLarge(f"the uploaded file ({size} bytes) exceeds the {settings.max_upload_bytes} bytes accepted")
    what = "background" if background else "video"
    if size == 0:
        raise EmptyFile(f"the uploaded {what} is empty")
    if uploads.objects.kind == "local":
        path = uploads.objects.path(rec.key)
        if background:
            await run_in_threadpool(_validate_background, path, settings)
            return rec, None
        return rec, await run_in_threadpool(_probe, path, settings)
    from service.media.inspect import HEAD_BYTES, looks_like_container, sniff_image

    head = await run_in_threadpool(uploads.objects.read_head, rec.key, HEAD_BYTES)
    image = sniff_image(head)
    if background and not (image or looks_like_container(head)):
        raise UnsupportedBackground("the uploaded background is not a supported image or video type")
    if not background and not (looks_like_container(head) or image in ("gif", "png")):
        raise NotAVideo("the uploaded file is not a video this service can read")
    return rec, None


def _take_uploads(objects: Any, r: Any, moves: list[tuple[UploadRecord, str]]) -> None:
    """Move direct uploads to the job's keys (inside the store: a rename locally, a server-side
    copy on S3), each upload taken once."""
    for rec, key in moves:
        consume_upload(r, rec)
        objects.move(rec.key, key)


def _store_files(objects: Any, job: Job, form: ParsedForm) -> None:
    """Put the form's files in the store at the job's keys."""
    video = form.files.get("video")
    if video is not None:
        objects.put_file(job.input_key, video.path, video.content_type or "application/octet-stream")
    bg = form.files.get("background")
    if bg is not None and job.background.key:
        objects.put_file(job.background.key, bg.path, bg.content_type or "application/octet-stream")


_PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}


@router.post(
    "",
    status_code=202,
    response_model=JobPublic,
    openapi_extra=MULTIPART_DOC,
    responses={
        413: {"description": "upload_too_large / video_too_large", **_PROBLEM},
        415: {"description": "not_a_video, no_video_stream, unsupported_codec", **_PROBLEM},
        422: {"description": "invalid input or options; idempotency_key_reused", **_PROBLEM},
        429: {"description": "quota_exceeded (Retry-After)", **_PROBLEM},
        503: {"description": "queue_full, busy, dependency_unavailable (Retry-After)", **_PROBLEM},
    },
)
async def create_job(
    request: Request,
    owner: ApiKeyDep,
    settings: SettingsDep,
    jobs: JobStoreDep,
    objects: ObjectStoreDep,
    celery: CeleryDep,
    idempotency_key: Annotated[str | None, Header(max_length=200, include_in_schema=False)] = None,
) -> JSONResponse:
    """Submit a video and a background; answers 202 with the queued job."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > 2 * settings.max_upload_bytes + 1024 * 1024:
        raise UploadTooLarge(f"the request body ({declared[:30]} bytes) exceeds the accepted size")
    slots = upload_slots(request.app.state, settings.max_concurrent_uploads)
    slots.take()
    try:
        return await _submit(request, owner, settings, jobs, objects, celery, idempotency_key)
    finally:
        slots.give_back()


async def _submit(
    request: Request, owner: str, settings: Any, jobs: Any, objects: Any, celery: Any, idempotency_key: str | None
) -> JSONResponse:
    """Reserve a place in the queue, take the upload, check it, store it, queue the job.  The
    reservation is released whatever goes wrong, or becomes the queued job."""
    prior = await run_in_threadpool(jobs.idempotent_job, owner, idempotency_key) if idempotency_key else None
    reservation: Reservation | None = None
    if prior is None:  # a replay adds no job: it needs no place
        reservation = await run_in_threadpool(Admission(jobs, settings).reserve, owner)
    form: ParsedForm | None = None
    try:
        media = _media_type(request.headers.get("content-type", ""))
        if media == "application/json" or media.endswith("+json"):
            form = ParsedForm(fields=await _json_fields(request))
        elif media == "application/x-www-form-urlencoded":
            form = ParsedForm(fields=await _urlencoded_fields(request))
        else:
            form = await parse_multipart(
                request.headers.get("content-type", ""), request.stream(), max_file_bytes=settings.max_upload_bytes,
                spool_dir=settings.spool_dir, tick=reservation.keep_alive if reservation else None,
            )
        fields = dict(form.fields)
        sources = Sources.take(fields, form.files)
        params = JobCreate.from_form(fields, "background" in form.files or sources.has_background, settings.model)
        idem = IdempotencyFingerprint(jobs, settings, owner, idempotency_key) if idempotency_key else None
        fingerprint = params.fingerprint(
            {**{name: f.sha256 for name, f in form.files.items()}, **sources.fingerprint_parts()}
        )
        if prior is not None and idem is not None:
            await run_in_threadpool(idem.check, fingerprint)
            return _accepted(prior, request, replayed=True)
        moves: list[tuple[UploadRecord, str]] = []
        job = await _checked_job(params, form, sources, owner, settings, _Uploads(jobs.r, objects), moves)
        if idem is not None:
            await run_in_threadpool(idem.claim, fingerprint)
        assert reservation is not None
        await run_in_threadpool(reservation.ensure)  # before storing: a refusal here leaves nothing behind
        await run_in_threadpool(_store_files, objects, job, form)
        try:
            await _check_people(job, params, moves, jobs.r, celery, settings)
            await run_in_threadpool(_take_uploads, objects, jobs.r, moves)
        except BaseException:
            await run_in_threadpool(_forget_inputs, objects, job)
            raise
        try:
            stored, created = await run_in_threadpool(jobs.create, job, idempotency_key)
        except BaseException:
            await run_in_threadpool(_forget_inputs, objects, job)
            raise
        if not created:  # a concurrent retry with the same Idempotency-Key won the race
            await run_in_threadpool(_forget_inputs, objects, job)
            return _accepted(stored, request, replayed=True)
        await run_in_threadpool(reservation.commit, job.id)
    finally:
        if form is not None:
            await run_in_threadpool(form.cleanup)
        if reservation is not None and not reservation.done:
            await run_in_threadpool(_release, reservation)
    await _enqueue(job, jobs, celery, settings)
    return _accepted(stored, request)


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _url_name(url: str) -> str | None:
    return url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1][:200] or None


@dataclass
class _Uploads:
    """Where direct uploads are looked up (Redis) and stored (the object store)."""

    r: Any
    objects: Any


async def _checked_job(
    params: JobCreate, form: ParsedForm, sources: Sources, owner: str, settings: Any, uploads: _Uploads,
    moves: list[tuple[UploadRecord, str]],
) -> Job:
    """The job the request describes, once its callback, video and background passed the checks.
    A URL is judged by the address guard only (the worker fetches it, then inspects it).  A direct
    upload is checked where it lies; ``moves`` gets (upload, the job's key) for ``_take_uploads``."""
    from service.fetch import check_fetch_url

    if params.callback_url:
        from service.webhooks import check_callback_url

        await run_in_threadpool(check_callback_url, params.callback_url, settings)
    opts = params.options
    job = Job(
        owner=owner,
        options=JobOptions(
            model=opts.model, output_format=opts.output_format, composite=opts.composite, harmonize=opts.harmonize,
            keep_points=list(opts.keep_points), people=opts.people,
        ),
        callback_url=params.callback_url,
    )
    video = form.files.get("video")
    if video is not None:
        if video.size == 0:
            raise EmptyFile("the uploaded video is empty")
        job.video = await run_in_threadpool(_probe, video.path, settings)
        job.input_filename = video.filename[:200] or None
        job.input_key = f"{job_prefix(job.id)}input{video.path.suffix or '.mp4'}"
    elif sources.video_url:
        job.input_url = await run_in_threadpool(check_fetch_url, sources.video_url, settings)
        job.input_filename = _url_name(sources.video_url)
    else:
        rec, job.video = await _stored_upload(uploads, owner, str(sources.video_upload_id), settings, background=False)
        job.input_filename = rec.filename
        job.input_key = f"{job_prefix(job.id)}input{Path(rec.key).suffix or '.mp4'}"
        moves.append((rec, job.input_key))
    if opts.background == "file":
        bg = form.files.get("background")
        if bg is not None:
            if bg.size == 0:
                raise EmptyFile("the uploaded background is empty")
            await run_in_threadpool(_validate_background, bg.path, settings)
            job.background = Background(
                kind="file", key=f"{job_prefix(job.id)}background{bg.path.suffix}", filename=bg.filename[:200] or None
            )
        elif sources.background_url:
            url = await run_in_threadpool(check_fetch_url, sources.background_url, settings)
            job.background = Background(kind="file", url=url, filename=_url_name(url))
        else:
            rec, _ = await _stored_upload(uploads, owner, str(sources.background_upload_id), settings, background=True)
            key = f"{job_prefix(job.id)}background{Path(rec.key).suffix}"
            job.background = Background(kind="file", key=key, filename=rec.filename)
            moves.append((rec, key))
    elif opts.background == "color":
        from service.media.inspect import parse_color

        parse_color(str(params.background_color))
        job.background = Background(kind="color", value=params.background_color)
    elif opts.background == "blur" and params.background_blur_strength is not None:
        job.background = Background(kind="blur", value=str(params.background_blur_strength))
    else:  # "blur" at the default strength, or "none" for an output that shows no background
        job.background = Background(kind=str(opts.background))
    # an input not inspected yet (a URL) gets the limits of the longest video accepted
    duration = job.video.duration_s if job.video else settings.max_duration_s
    job.progress.frames_total = job.video.frames if job.video else 0
    job.time_limit_s, _ = time_limits(settings, duration)
    return job


async def _check_people(
    job: Job, params: JobCreate, moves: list[tuple[UploadRecord, str]], r: Any, celery: Any, settings: Any
) -> None:
    """A choice of people (``keep_points``, ``people=largest``) checked on the stored video's first
    frame by the preview lane before the job exists (``service.people_check``): a point on nobody is
    422 ``no_person_at_point`` here, not a failed job later.  A video given by URL is not fetched
    by the API's request: its worker checks it.  The direct upload is read where it lies, so a
    refused request leaves it unspent."""
    if not params.options.selects_people:
        return
    key = next((rec.key for rec, target in moves if target == job.input_key), job.input_key)
    if not key:
        return
    from service import people_check

    verdict = await run_in_threadpool(
        people_check.request, r, celery, PEOPLE_CHECK_TASK, settings.preview_queue_name, key,
        params.options.model_dump(mode="json"), settings.people_check_timeout_s,
    )
    error = verdict.refusal() if verdict else None
    if error is not None:
        raise error


def _forget_inputs(objects: Any, job: Job) -> None:
    """Delete the stored inputs of a job that was not created (best effort: the sweeper cannot see
    objects without a job)."""
    try:
        objects.delete_prefix(job_prefix(job.id))
    except Exception:  # noqa: BLE001 - the request's own error is what the caller should see
        log.warning("could not delete the inputs of uncreated job %s", job.id, exc_info=True)


def _release(reservation: Reservation) -> None:
    """Give a place back; if Redis is down the reservation simply lapses (the request's own error,
    not this one, is what the caller should see)."""
    try:
        reservation.release()
    except RedisError:
        log.warning("could not release queue reservation %s; it lapses on its own", reservation.token)


async def _enqueue(job: Job, jobs: Any, celery: Any, settings: Any) -> None:
    """Send the stored job to the workers; if the broker refuses, the job fails at once (it must not
    linger as queued) and the caller gets 503 ``dependency_unavailable``."""
    soft, hard = time_limits(settings, job.video.duration_s if job.video else settings.max_duration_s)
    try:
        await run_in_threadpool(
            lambda: celery.send_task(
                PROCESS_TASK, args=[job.id], task_id=job.id, queue=settings.queue_name,
                soft_time_limit=soft, time_limit=hard,
            )
        )
    except Exception as e:  # noqa: BLE001 - the broker is down
        log.exception("could not enqueue job %s", job.id)

        def mark(j: Job) -> None:
            from service.jobs import JobError

            j.error = JobError(code="enqueue_failed", message="the job queue is unavailable")

        await run_in_threadpool(jobs.transition, job.id, JobStatus.FAILED, mutate=mark)
        raise DependencyUnavailable("the job queue is unavailable; retry later") from e


def _accepted(job: Job, request: Request, replayed: bool = False) -> JSONResponse:
    headers = {"Location": f"/jobs/{job.id}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(_public(job, request), status_code=202, headers=headers)


@router.get("", response_model=JobsPublic)
async def list_jobs(
    request: Request,
    owner: ApiKeyDep,
    jobs: JobStoreDep,
    settings: SettingsDep,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int | None, Query(ge=1, le=100)] = None,
) -> dict[str, Any]:
    """List the caller's jobs, newest first."""
    lim = limit or min(100, settings.jobs_page_size)
    items, total = await run_in_threadpool(jobs.list_jobs, owner, offset, lim)
    return {"data": [_public(j, request) for j in items], "count": total, "offset": offset, "limit": lim}


@router.get("/{job_id}", response_model=JobPublic, responses={404: {"description": "job_not_found"}})
async def read_job(request: Request, job_id: str, owner: ApiKeyDep, jobs: JobStoreDep) -> dict[str, Any]:
    """Status, progress, timestamps, error and result of one job."""
    job = await run_in_threadpool(jobs.get_for, owner, job_id)
    return _public(job, request)


@router.head("/{job_id}/result", include_in_schema=False)  # a GET's headers (one operation id in the schema)
@router.get(
    "/{job_id}/result",
    response_class=Response,
    responses={200: {"description": "the output video"}, 206: {"description": "a byte range"},
               307: {"description": "redirect to a presigned URL"}, 409: {"description": "result_not_ready"}},
)
async def read_job_result(
    request: Request, job_id: str, owner: ApiKeyDep, jobs: JobStoreDep, objects: ObjectStoreDep, settings: SettingsDep
) -> Response:
    """The output video: a redirect to a presigned URL on S3, streamed (with Range) on the local
    store.  HEAD gives a GET's headers without the video (size, type, that ranges are taken)."""
    job = await run_in_threadpool(jobs.get_for, owner, job_id)
    if job.status is not JobStatus.SUCCEEDED or job.result is None:
        raise ResultNotReady(f"job {job_id} is {job.status.value}; its result is not available")
    filename = f"{job.id}{Path(job.result.key).suffix}"
    url = await run_in_threadpool(objects.presigned_url, job.result.key, settings.presign_ttl_s, filename)
    if url and request.method == "HEAD":  # a URL presigned for GET refuses HEAD: the job's record answers
        return Response(headers={
            "content-length": str(job.result.size), "content-type": job.result.content_type,
            "accept-ranges": "bytes", "content-disposition": f'attachment; filename="{filename}"',
        })
    if url:
        return RedirectResponse(url, status_code=307)
    path = objects.path(job.result.key)
    if not path.is_file():
        raise ResultNotReady(f"the result of job {job_id} is no longer stored")
    return _RangeFileResponse(path, media_type=job.result.content_type, filename=filename)


class _RangeFileResponse(FileResponse):
    """Starlette's ``FileResponse`` answers a bad ``Range`` with its own text/plain 400/416; here
    they are our errors, so they come out as problem+json with a code (``invalid_range``,
    ``range_not_satisfiable`` with ``Content-Range: bytes */size``).  Raised before anything is
    sent, they reach the app's exception handlers.  A range in a unit other than bytes is ignored,
    as RFC 9110 (14.2) requires of an origin server: the whole file, 200.  A set of ranges is
    satisfiable where one of them is (14.1.1): those that start past the end are left out, and
    416 is for a set with none left (Starlette answered 416 if any one started past it)."""

    @classmethod
    def _parse_range_header(cls, http_range: str, file_size: int) -> list[tuple[int, int]]:
        unit, sep, specs = http_range.partition("=")
        if sep and unit.strip().lower() != "bytes":
            return []  # FileResponse sends the whole file for no ranges
        try:
            return super()._parse_range_header(http_range, file_size)
        except MalformedRangeHeader as e:
            raise InvalidRange(f"bad Range header: {e.content}") from None
        except StarletteRangeNotSatisfiable:
            within = [spec for spec in specs.split(",") if cls._starts_within(spec, file_size)]
            if within and len(within) < len(specs.split(",")):
                return cls._parse_range_header("bytes=" + ",".join(within), file_size)
            raise RangeNotSatisfiable(
                f"the Range starts past the end of the {file_size}-byte file", size=file_size
            ) from None

    @classmethod
    def _starts_within(cls, spec: str, file_size: int) -> bool:
        try:
            return all(start < file_size for start, _ in cls._parse_ranges(spec, file_size))
        except MalformedRangeHeader:
            return True  # reported as malformed by the parse of the rest


@router.delete("/{job_id}", status_code=204, responses={404: {"description": "job_not_found"}})
async def delete_job(
    job_id: str, owner: ApiKeyDep, jobs: JobStoreDep, objects: ObjectStoreDep, celery: CeleryDep, settings: SettingsDep
) -> Response:
    """Cancel a queued or running job and delete its objects; a finished job is deleted outright."""
    job = await run_in_threadpool(jobs.get_for, owner, job_id)
    if not job.terminal:
        await run_in_threadpool(jobs.request_cancel, job.id)
        queued = frozenset({JobStatus.QUEUED})
        try:
            canceled = await run_in_threadpool(
                lambda: jobs.transition(job.id, JobStatus.CANCELED, allowed_from=queued)
            )
        except IllegalTransition:
            # running (its worker sees the flag, stops and sends the callback) or finished meanwhile
            with contextlib.suppress(IllegalTransition):
                await run_in_threadpool(jobs.transition, job.id, JobStatus.CANCELED)
        else:
            if canceled.callback_url:  # no worker will touch a job canceled while queued
                body = json.dumps(public_dict(canceled, None), separators=(",", ":"), default=str)
                await run_in_threadpool(
                    lambda: celery.send_task(WEBHOOK_TASK, args=[canceled.callback_url, body, "job.canceled", canceled.owner],
                                             queue=settings.light_queue_name)
                )
    else:
        await run_in_threadpool(jobs.delete, job)
    await run_in_threadpool(objects.delete_prefix, job_prefix(job.id))
    return Response(status_code=204)


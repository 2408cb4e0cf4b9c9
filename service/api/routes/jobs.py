"""``/jobs``: submit a video, follow it, fetch its result, cancel or delete it, list them."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse

from service.api.deps import ApiKeyDep, CeleryDep, JobStoreDep, ObjectStoreDep, SettingsDep
from service.api.schemas import JobCreate, JobPublic, JobsPublic
from service.api.uploads import ParsedForm, parse_multipart
from service.errors import (
    BackdropError,
    EmptyFile,
    IllegalTransition,
    QueueFull,
    RequestInvalid,
    ResultNotReady,
    UploadTooLarge,
)
from service.jobs import Background, Job, JobOptions, JobStatus, VideoMeta, public_dict, result_url
from service.storage import job_prefix
from service.workers.celery_app import PROCESS_TASK, WEBHOOK_TASK, time_limits

log = logging.getLogger(__name__)

router = APIRouter(prefix="/jobs", tags=["jobs"])

MULTIPART_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["video"],
                    "properties": {
                        "video": {"type": "string", "format": "binary"},
                        "background": {"type": "string", "format": "binary", "description": "image or video"},
                        **{
                            name: {"type": "string", "description": f.description or ""}
                            for name, f in JobCreate.model_fields.items()
                        },
                    },
                }
            }
        },
    }
}


def _public(job: Job, request: Request) -> dict[str, Any]:
    app = request.app
    url = result_url(job, app.state.objects, app.state.settings, str(request.base_url))
    return public_dict(job, url)


def _check_queue(jobs: Any, settings: Any) -> None:
    if jobs.queue_depth() >= settings.max_queue_depth:
        err = QueueFull(f"more than {settings.max_queue_depth} jobs are waiting; retry later")
        err.retry_after = 30  # type: ignore[attr-defined]
        raise err


def _probe(path: Path, settings: Any) -> VideoMeta:
    from service.media.probe import probe_video  # container inspection only

    info = probe_video(path, settings)
    return VideoMeta(
        width=int(info.width),
        height=int(info.height),
        fps=float(info.fps),
        frames=int(info.frames),
        duration_s=float(info.duration_s),
        has_audio=bool(info.has_audio),
    )


def _validate_background(spec: str, settings: Any) -> None:
    from service.media.background import validate_background

    validate_background(spec, settings)


def _store_inputs(objects: Any, job: Job, form: ParsedForm) -> None:
    video = form.files["video"]
    objects.put_file(job.input_key, video.path, video.content_type or "application/octet-stream")
    bg = form.files.get("background")
    if bg is not None and job.background.key:
        objects.put_file(job.background.key, bg.path, bg.content_type or "application/octet-stream")


@router.post(
    "",
    status_code=202,
    response_model=JobPublic,
    openapi_extra=MULTIPART_DOC,
    responses={413: {"description": "upload_too_large / video_too_large"}, 415: {"description": "not_a_video"},
               422: {"description": "invalid input"}, 503: {"description": "queue_full"}},
)
async def create_job(
    request: Request,
    owner: ApiKeyDep,
    settings: SettingsDep,
    jobs: JobStoreDep,
    objects: ObjectStoreDep,
    celery: CeleryDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JSONResponse:
    """Submit a video and a background; answers 202 with the queued job."""
    if idempotency_key:
        prior = await run_in_threadpool(jobs.idempotent_job, owner, idempotency_key)
        if prior is not None:
            return _accepted(prior, request, replayed=True)
    await run_in_threadpool(_check_queue, jobs, settings)
    limit = settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > 2 * limit + 1024 * 1024:
        raise UploadTooLarge(f"the request body ({declared} bytes) exceeds the accepted size")

    form = await parse_multipart(
        request.headers.get("content-type", ""), request.stream(), max_file_bytes=limit, spool_dir=settings.spool_dir
    )
    try:
        if "video" not in form.files:
            raise RequestInvalid("the 'video' file field is required")
        params = JobCreate.from_form(form.fields, settings.model)
        kind = params.background_choice("background" in form.files)
        if params.callback_url:
            from service.webhooks import check_callback_url

            await run_in_threadpool(check_callback_url, params.callback_url, settings)
        video = form.files["video"]
        if video.size == 0:
            raise EmptyFile("the uploaded video is empty")
        meta = await run_in_threadpool(_probe, video.path, settings)
        job = Job(
            owner=owner,
            options=JobOptions(
                model=params.model,
                output_format=params.output_format,
                composite=params.composite,
                harmonize=params.harmonize,
            ),
            video=meta,
            callback_url=params.callback_url,
            input_filename=video.filename[:200] or None,
        )
        job.input_key = f"{job_prefix(job.id)}input{video.path.suffix or '.mp4'}"
        if kind == "file":
            bg = form.files["background"]
            if bg.size == 0:
                raise EmptyFile("the uploaded background is empty")
            await run_in_threadpool(_validate_background, str(bg.path), settings)
            job.background = Background(
                kind="file", key=f"{job_prefix(job.id)}background{bg.path.suffix}", filename=bg.filename[:200] or None
            )
        elif kind == "color":
            await run_in_threadpool(_validate_background, str(params.background_color), settings)
            job.background = Background(kind="color", value=params.background_color)
        else:
            job.background = Background(kind="blur")
        job.progress.frames_total = meta.frames
        soft, hard = time_limits(settings, meta.duration_s)
        job.time_limit_s = soft
        await run_in_threadpool(_store_inputs, objects, job, form)
    finally:
        await run_in_threadpool(form.cleanup)

    stored, created = await run_in_threadpool(jobs.create, job, idempotency_key)
    if not created:  # a concurrent retry with the same Idempotency-Key won the race
        await run_in_threadpool(objects.delete_prefix, job_prefix(job.id))
        return _accepted(stored, request, replayed=True)
    try:
        await run_in_threadpool(
            lambda: celery.send_task(
                PROCESS_TASK, args=[job.id], task_id=job.id, queue=settings.queue_name,
                soft_time_limit=soft, time_limit=hard,
            )
        )
    except Exception as e:  # noqa: BLE001 - the broker is down: the job must not linger as queued
        log.exception("could not enqueue job %s", job.id)

        def mark(j: Job) -> None:
            from service.jobs import JobError

            j.error = JobError(code="enqueue_failed", message="the job queue is unavailable")

        await run_in_threadpool(jobs.transition, job.id, JobStatus.FAILED, mutate=mark)
        raise BackdropError("the job queue is unavailable; retry later", code="enqueue_failed") from e
    return _accepted(stored, request)


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
    offset: Annotated[int, Query(ge=0)] = 0,
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


@router.get(
    "/{job_id}/result",
    response_class=Response,
    responses={200: {"description": "the output video"}, 206: {"description": "a byte range"},
               307: {"description": "redirect to a presigned URL"}, 409: {"description": "result_not_ready"}},
)
async def read_job_result(
    request: Request, job_id: str, owner: ApiKeyDep, jobs: JobStoreDep, objects: ObjectStoreDep, settings: SettingsDep
) -> Response:
    """The output video: a redirect to a presigned URL on S3, streamed (with Range) on the local store."""
    job = await run_in_threadpool(jobs.get_for, owner, job_id)
    if job.status is not JobStatus.SUCCEEDED or job.result is None:
        raise ResultNotReady(f"job {job_id} is {job.status.value}; its result is not available")
    filename = f"{job.id}{Path(job.result.key).suffix}"
    url = await run_in_threadpool(objects.presigned_url, job.result.key, settings.presign_ttl_s, filename)
    if url:
        return RedirectResponse(url, status_code=307)
    path = objects.path(job.result.key)
    if not path.is_file():
        raise ResultNotReady(f"the result of job {job_id} is no longer stored")
    return FileResponse(path, media_type=job.result.content_type, filename=filename)


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
                    lambda: celery.send_task(WEBHOOK_TASK, args=[canceled.callback_url, body, "job.canceled"],
                                             queue=settings.queue_name)
                )
    else:
        await run_in_threadpool(jobs.delete, job)
    await run_in_threadpool(objects.delete_prefix, job_prefix(job.id))
    return Response(status_code=204)


"""The worker's tasks: one ``process_job`` per job, ``deliver_webhook`` for its callback and the
periodic ``housekeeping`` (lease reaper and expiry sweeper, ``service.workers.housekeeping``).

A job runs under a lease in Redis that a heartbeat thread keeps alive.  A message redelivered while
the lease is alive (its first worker is still running it) is re-queued for later; once the lease
has lapsed (that worker died) the reaper puts the job back and it restarts cleanly: a new attempt,
progress reset, the previous attempt's output deleted, the result written under the same key (never
two results).  Starts are counted: after ``max_attempts`` the job fails ``worker_lost``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import redis
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import beat_embedded_init, worker_process_init

from service.config import Settings, get_settings
from service.errors import (
    BackdropError,
    Canceled,
    IllegalTransition,
    JobNotFound,
    TransientStorageError,
    disk_full,
)
from service.jobs import Job, JobError, JobResult, JobStatus, JobStore, VideoMeta, public_dict, result_url
from service.options import SCENE_FORMATS
from service.parent_death import parent_death
from service.spool import Workdir, sweep_orphans
from service.storage import create_store, job_prefix
from service.workers import housekeeping
from service.workers.celery_app import HOUSEKEEPING_TASK, PROCESS_TASK, WEBHOOK_TASK, app

log = logging.getLogger(__name__)

_store: JobStore | None = None
_objects: Any = None


def job_store() -> JobStore:
    global _store
    if _store is None:
        settings = get_settings()
        _store = JobStore.from_settings(settings, retry_s=settings.redis_retry_s)
    return _store


def object_store() -> Any:
    global _objects
    if _objects is None:
        _objects = create_store()
    return _objects


@worker_process_init.connect
def _load_models(**_: Any) -> None:
    """Build the default model's ONNX session once per worker process, before the first job."""
    global _store, _objects
    _store, _objects = None, None  # connections are never shared across fork
    settings = get_settings()
    swept = sweep_orphans(settings.spool_dir)  # a process this one replaces may have died with its folders
    if swept:
        log.warning("removed %d work folders of worker processes that died", swept)
    try:
        from service.inference.models import get_model

        get_model(settings.model, settings)
        log.info("model %s loaded in worker process %d", settings.model, os.getpid())
    except Exception:  # noqa: BLE001 - a job will report the error with its code
        log.exception("could not preload model %s", settings.model)


@beat_embedded_init.connect
def _beat_dies_with_its_worker(**_: Any) -> None:
    """The beat a worker runs (``-B``: the light worker's housekeeping) is a process of its own.
    When its worker died without stopping it (SIGKILL), or its own shutdown lost a race (the
    SystemExit of its stop signal raised inside a ``__del__``, which Python ignores), it lived on
    alone, sending housekeeping into a queue nobody read, for good.  It now gets SIGKILL from the
    kernel when its worker's process ends (Linux); its schedule file is rebuilt if left half
    written."""
    arm = parent_death(signal.SIGKILL, os.getppid())
    if arm is not None:
        arm()


class Heartbeat(threading.Thread):
    """Keeps the job's lease alive; notices when it is lost (another worker took the job over)."""

    def __init__(self, store: JobStore, job_id: str, token: str, every: float):
        super().__init__(daemon=True, name=f"lease-{job_id[:8]}")
        self.store, self.job_id, self.token, self.every = store, job_id, token, every
        self.stop = threading.Event()
        self.lost = False

    def run(self) -> None:
        while not self.stop.wait(self.every):
            try:
                if not self.store.renew_lease(self.job_id, self.token) and not self.store.acquire_lease(
                    self.job_id, self.token
                ):
                    self.lost = True  # it lapsed (Redis was away) and another worker took the job over
                    return
            except Exception:  # noqa: BLE001 - Redis blip: try again next beat
                log.warning("lease renewal failed for %s", self.job_id, exc_info=True)


def _input_video(job: Job, workdir: Path, store: JobStore, attempt: int, settings: Settings) -> Path:
    """The input video in the work folder: fetched from its URL through the address guard
    (``service.fetch``) or copied from the object store.  An input the API could not inspect (a
    URL) is inspected here with the same checks as an upload, and the job's ``video`` metadata and
    ``frames_total`` are filled in."""
    if job.input_url:
        from service.fetch import fetch_to_file, url_suffix

        src = workdir / f"input{url_suffix(job.input_url)}"
        fetch_to_file(job.input_url, src, settings)
    else:
        src = workdir / f"input{Path(job.input_key).suffix or '.mp4'}"
        object_store().get_file(job.input_key, src)
    if job.video is None:
        from service.media.confined import inspect_video_confined

        info = inspect_video_confined(src, settings)
        meta = VideoMeta(
            width=int(info.width), height=int(info.height), fps=float(info.fps), frames=int(info.frames),
            duration_s=float(info.duration_s), has_audio=bool(info.has_audio),
        )
        try:
            store.set_video(job.id, meta, attempt)
        except redis.RedisError:
            log.warning("video metadata of %s not written (Redis unavailable)", job.id)
    return src


def background_spec(job: Job, workdir: Path, settings: Settings | None = None) -> str | None:
    """The job's background as ``replace_background`` takes it (a file fetched into ``workdir``, a
    colour, a blur), or None for an output that shows none: one given anyway is not fetched."""
    if job.options.output_format not in SCENE_FORMATS:
        return None
    bg = job.background
    if bg.kind == "file" and (bg.url or bg.key):
        from service.media.confined import inspect_background_confined

        settings = settings or get_settings()
        if bg.url:
            from service.fetch import fetch_to_file, url_suffix

            path = workdir / f"background{url_suffix(bg.url)}"
            fetch_to_file(bg.url, path, settings)
        else:
            path = workdir / f"background{Path(str(bg.key)).suffix}"
            object_store().get_file(str(bg.key), path)
        # the API's checks on an upload, before any work: a URL's or a direct upload's file was not
        # read whole by the API (an upload on S3 had its leading bytes checked)
        inspect_background_confined(path, settings)
        return str(path)
    if bg.kind == "color" and bg.value:
        return bg.value
    if bg.kind == "blur":
        return f"blur:{bg.value}" if bg.value else "blur"  # value: the blur strength the job asked for
    return None  # an output without a background scene (webm, mov, matte, greenscreen)


def _cleanup_objects(job_id: str) -> None:
    try:
        object_store().delete_prefix(job_prefix(job_id))
    except Exception:  # noqa: BLE001
        log.warning("could not delete objects of %s", job_id, exc_info=True)


def _finish_canceled(store: JobStore, job_id: str) -> None:
    try:
        store.transition(job_id, JobStatus.CANCELED)
    except (IllegalTransition, BackdropError):
        pass
    _cleanup_objects(job_id)


def time_limit_options(job: Job, settings: Settings) -> dict[str, Any]:
    if job.time_limit_s:
        return {"soft_time_limit": job.time_limit_s, "time_limit": job.time_limit_s + settings.task_time_grace_s}
    return {}


def send_job(job: Job, countdown: float | None = None) -> None:
    """Put a message for ``job`` on the video queue (the task id is the job id, so the reaper can
    tell whether the broker still holds one)."""
    settings = get_settings()
    process_job.apply_async(
        (job.id,), task_id=job.id, countdown=countdown, queue=settings.queue_name,
        **time_limit_options(job, settings),
    )


#: Least time a frame takes under ``fault_injection="slow"``.
SLOW_FRAME_S = 0.1


def _inject_fault(settings: Settings) -> None:
    """Testing only (``fault_injection``): die like a decoder crash, or hang past the soft limit
    (``slow`` acts in each job's progress: ``_slow_down``)."""
    if settings.fault_injection == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    if settings.fault_injection == "hang":
        while True:
            try:
                time.sleep(3600)
            except SoftTimeLimitExceeded:
                continue


def _slow_down(frames: int) -> None:
    """Testing only (``fault_injection="slow"``): wait ``SLOW_FRAME_S`` for each frame just
    reported, after its progress is written, so a job is still running for a while after its first
    progress on a machine of any speed (tests that kill its worker or delete it then)."""
    time.sleep(SLOW_FRAME_S * max(0, frames))


@app.task(name=PROCESS_TASK, bind=True, max_retries=None, acks_late=True, reject_on_worker_lost=False)
def process_job(self: Any, job_id: str) -> str:
    """Run one job: fetch its inputs, replace the background, upload the result, report."""
    settings = get_settings()
    store = job_store()
    job = store.get(job_id)
    if job is None or job.terminal:
        return "skipped"  # a duplicate delivery of a finished (or deleted) job: nothing to do
    if store.cancel_requested(job_id):
        _finish_canceled(store, job_id)
        return "canceled"

    token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    if not store.acquire_lease(job_id, token):
        # Redelivered while its first worker still holds the lease: look again later.
        send_job(job, countdown=settings.job_lease_s)
        return "leased"

    beat: Heartbeat | None = None
    workdir: Workdir | None = None
    outcome = "failed"
    t0 = time.monotonic()
    try:
        if job.status is JobStatus.RUNNING and job.attempts >= settings.max_attempts:
            # its worker died under it max_attempts times (the reaper usually settles this first)
            fail_job(store, job_id, "worker_lost", f"the worker running this job was lost {job.attempts} times")
            return "failed"
        beat = Heartbeat(store, job_id, token, max(0.2, settings.job_lease_s / 3))
        beat.start()
        # the spool is made here if need be (a job from a URL or an upload id may come before any
        # upload through the API); if it cannot be, the error ends this attempt and the reaper counts it
        workdir = Workdir(f"job-{job_id[:8]}-", settings.spool_dir)
        hard = (job.time_limit_s or 0) + settings.task_time_grace_s

        def start(j: Job) -> None:
            j.attempts += 1
            j.progress.frames_done = 0
            j.progress.frames_total = j.video.frames if j.video else 0
            j.progress.chunks_total = j.progress.chunks_done = 0
            j.error, j.result = None, None
            j.deadline_at = j.started_at + timedelta(seconds=hard) if j.started_at and j.time_limit_s else None

        try:
            job = store.transition(job_id, JobStatus.RUNNING, mutate=start)
        except IllegalTransition:
            return "skipped"  # canceled (or finished) between the checks above and now
        _inject_fault(settings)
        attempt = job.attempts
        outcome = _run(job, attempt, workdir.path, store, beat, settings)
        if outcome == "succeeded":
            job_now = store.get(job_id)
            store.record_processing(time.monotonic() - t0, job_now.result.frames if job_now and job_now.result else 0)
        return outcome
    except TransientStorageError as e:
        if self.request.retries < settings.task_max_retries:
            try:
                store.transition(job_id, JobStatus.QUEUED, allowed_from=frozenset({JobStatus.RUNNING}))
            except IllegalTransition:
                return "canceled"
            outcome = "retry"
            raise self.retry(exc=e, countdown=housekeeping.retry_delay_s(self.request.retries)) from e
        fail_job(store, job_id, e.code, e.message)
        return "failed"
    finally:
        if beat is not None:
            beat.stop.set()
        try:
            store.release_lease(job_id, token)
        except Exception:  # noqa: BLE001 - Redis is gone: the lease lapses by itself
            log.warning("could not release the lease of %s", job_id, exc_info=True)
        if workdir is not None:
            workdir.remove()
        if outcome in ("succeeded", "failed", "canceled"):
            notify_callback(store, job_id)


def _run(job: Job, attempt: int, workdir: Path, store: JobStore, beat: Heartbeat, settings: Any) -> str:
    from service.pipeline import ReplaceOptions, replace_background  # the worker floor only

    job_id = job.id
    objects = object_store()
    try:
        # a restart: whatever the previous attempt left behind goes first
        for key in objects.keys(job_prefix(job_id)):
            if "/output" in key or "/chunks/" in key:
                objects.delete_prefix(key)
        src = _input_video(job, workdir, store, attempt, settings)
        background = background_spec(job, workdir, settings)
        # the API validated the same model; a stored job from an older release fails with its code
        options = ReplaceOptions.parse(**job.options.model_dump())
        from service.workers.chunks import start_chunked

        if start_chunked(job, attempt, src, background, workdir, store, settings):
            return "chunked"  # its chunks run as tasks of their own; the last one sends the join
        from service.media.encode import OUTPUT_FORMATS

        ext, content_type = OUTPUT_FORMATS[job.options.output_format]
        out = workdir / f"output{ext}"

        last = {"t": 0.0, "c": 0.0, "canceled": False, "done": 0}

        # Progress and the cancel flag are best effort: a Redis outage longer than the store's
        # retries must not fail a job that is otherwise fine (its final state is written with retries).
        def progress(done: int, total: int) -> None:
            now = time.monotonic()
            if now - last["t"] >= settings.progress_interval_s or (total and done >= total):
                last["t"] = now
                try:
                    store.update_progress(job_id, done, total, attempt)
                except redis.RedisError:
                    log.warning("progress of %s not written (Redis unavailable)", job_id)
            if settings.fault_injection == "slow":
                _slow_down(done - int(last["done"]))
            last["done"] = done

        def cancel() -> bool:
            if beat.lost:
                return True
            now = time.monotonic()
            if now - last["c"] >= settings.cancel_poll_interval_s:
                last["c"] = now
                try:
                    last["canceled"] = store.cancel_requested(job_id)
                except redis.RedisError:
                    log.warning("cancel flag of %s not read (Redis unavailable)", job_id)
            return bool(last["canceled"])

        result = replace_background(
            src, background, out, options, progress=progress, cancel=cancel, settings=settings
        )
        if beat.lost:
            return "lost"
        if store.cancel_requested(job_id):
            _finish_canceled(store, job_id)
            return "canceled"
        key = f"{job_prefix(job_id)}output{ext}"
        size = objects.put_file(key, out, content_type)
        res = JobResult(
            key=key,
            size=size,
            duration_s=float(result.duration_s),
            format=job.options.output_format,
            content_type=content_type,
            frames=int(result.frames),
            width=int(result.width),
            height=int(result.height),
        )

        def done(j: Job) -> None:
            if j.attempts != attempt:
                raise IllegalTransition(f"job {job_id} was restarted by another worker")
            j.result = res
            j.progress.frames_done = j.progress.frames_total = res.frames

        try:
            store.transition(job_id, JobStatus.SUCCEEDED, mutate=done, allowed_from=frozenset({JobStatus.RUNNING}))
        except JobNotFound:  # deleted while it ran (DELETE of a job already marked canceled)
            _cleanup_objects(job_id)
            return "deleted"
        except IllegalTransition:
            current = store.get(job_id)
            if current is not None and current.status is JobStatus.CANCELED:
                _cleanup_objects(job_id)
                return "canceled"
            return "lost"
        return "succeeded"
    except Canceled:
        if beat.lost:
            return "lost"
        _finish_canceled(store, job_id)
        return "canceled"
    except TransientStorageError:
        raise
    except SoftTimeLimitExceeded:
        fail_job(store, job_id, "time_limit", "the job ran past its time limit")
        return "failed"
    except BackdropError as e:
        _raise_if_disk_full(job_id, e)  # a local store's write failure, say
        fail_job(store, job_id, e.code, e.message)
        return "failed"
    except Exception as e:  # noqa: BLE001 - reported on the job, logged in full here
        _raise_if_disk_full(job_id, e)
        log.exception("job %s failed", job_id)
        fail_job(store, job_id, "internal_error", f"{type(e).__name__}: {e}")
        return "failed"


def _raise_if_disk_full(job_id: str, e: Exception) -> None:
    """A full disk under the worker (its spool, a local store) is retried like a storage outage."""
    full = disk_full(e, "of the worker")
    if full is not None:
        log.warning("job %s: %s", job_id, e)
        raise full from e


def fail_job(store: JobStore, job_id: str, code: str, message: str) -> None:
    def set_error(j: Job) -> None:
        j.error = JobError(code=code, message=message[:1000])

    try:
        store.transition(job_id, JobStatus.FAILED, mutate=set_error)
    except (IllegalTransition, JobNotFound):  # finished meanwhile, or deleted: nothing to record
        pass
    # a failed job keeps its input for inspection until its TTL; a partial output never exists


def notify_callback(store: JobStore, job_id: str) -> None:
    job = store.get(job_id)
    if job is None or not job.callback_url or not job.terminal:
        return
    settings = get_settings()
    url = result_url(job, object_store(), settings)
    body = json.dumps(public_dict(job, url), separators=(",", ":"), default=str)
    deliver_webhook.apply_async(
        (job.callback_url, body, f"job.{job.status.value}", job.owner), queue=settings.light_queue_name
    )


@app.task(name=WEBHOOK_TASK, bind=True, max_retries=None, acks_late=True)
def deliver_webhook(self: Any, url: str, body: str, event: str, tenant: str = "local") -> str:
    """POST a callback signed with ``tenant``'s secret; retried with exponential backoff on failure."""
    from service.webhooks import deliver_once

    settings = get_settings()
    attempt = self.request.retries + 1
    try:
        status = deliver_once(url, body.encode(), event, settings, tenant=tenant)
        if 200 <= status < 300:
            return f"delivered ({status})"
        if 400 <= status < 500 and status not in (408, 409, 425, 429):
            log.warning("webhook %s refused with %d; not retried", url, status)
            return f"refused ({status})"
        error = f"HTTP {status}"
    except BackdropError as e:
        log.warning("webhook %s refused: %s", url, e.message)
        return f"refused ({e.code})"
    except Exception as e:  # noqa: BLE001 - network errors are retried
        error = f"{type(e).__name__}: {e}"
    if attempt >= settings.webhook_max_attempts:
        log.warning("webhook %s gave up after %d attempts: %s", url, attempt, error)
        return "gave up"
    raise self.retry(countdown=settings.webhook_backoff_s * 2 ** (attempt - 1))


@app.task(name=HOUSEKEEPING_TASK, acks_late=False, ignore_result=True)
def run_housekeeping() -> dict[str, int]:
    """The lease reaper and the expiry sweeper (``service.workers.housekeeping``), on the light
    queue every ``housekeeping_interval_s``; one run at a time across all housekeepers."""
    settings = get_settings()
    store = job_store()
    token = uuid.uuid4().hex
    if not store.hold("housekeeping", token, max(5.0, settings.housekeeping_interval_s * 4)):
        return {"skipped": 1}
    try:
        from service.workers.chunks import delete_chunks

        counts = housekeeping.reap(store, settings, send=send_job, notify=lambda jid: notify_callback(store, jid),
                                   cleanup=_cleanup_objects, cleanup_chunks=delete_chunks)
        counts.update(housekeeping.sweep(store, lambda jid: object_store().delete_prefix(job_prefix(jid))))
        counts.update(housekeeping.sweep_uploads(store, lambda prefix: object_store().delete_prefix(prefix)))
        return counts
    finally:
        store.let_go("housekeeping", token)

"""Long videos across workers (issue 16): ``process_job`` cuts a video longer than
``chunk_seconds`` at keyframes (``service.media.chunks``, packet copy), stores the pieces and sends
one ``process_chunk`` task per piece on the video queue, so any worker takes any chunk; the chunk
that finishes last sends ``join_chunks``, which concatenates the encoded chunks by packet copy,
muxes the input's audio once, and finishes the job.

This is a Celery group with a callback.  A chord would need a result backend and would count a
chunk whose worker died as failed; here the count of finished chunks lives in the job's own
record, updated in the same Redis transaction as its progress, so "done", "progress" and "who
sends the join" are one atomic step, and a chunk sent twice is counted once.

Failures, as for whole jobs:
- a chunk runs under a lease of its own (``lease:{id}:c{n}``) kept by a heartbeat; a chunk whose
  worker process dies is handed back to the broker (``reject_on_worker_lost``) and redone alone; a
  whole worker that dies leaves it unacknowledged, which the broker would redeliver only after its
  visibility timeout: the reaper runs the job again, whole, once the message has been held past
  ``housekeeping.held_too_long_s`` with no lease.  Starts are counted per chunk: after ``max_attempts`` the job fails
  ``worker_lost``;
- a chunk that fails fails the job; the other chunks see it at their next cancel poll and stop;
- cancel: every chunk polls the flag (and the job's state), stops, and the objects go;
- the chunk objects (``jobs/{id}/chunks/``) are deleted after the join and after any failure.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from celery import group
from celery.exceptions import SoftTimeLimitExceeded

from service.config import Settings, get_settings
from service.errors import BackdropError, Canceled, IllegalTransition, TransientStorageError, disk_full
from service.jobs import Job, JobResult, JobStatus, JobStore
from service.spool import Workdir
from service.storage import job_prefix
from service.workers.celery_app import CHUNK_TASK, JOIN_TASK, app
from service.workers.housekeeping import retry_delay_s
from service.workers.tasks import (
    Heartbeat,
    background_spec,
    fail_job,
    job_store,
    notify_callback,
    object_store,
    time_limit_options,
)

log = logging.getLogger(__name__)


def chunks_prefix(job_id: str) -> str:
    return f"{job_prefix(job_id)}chunks/"


def _prefix(job_id: str, attempt: int) -> str:
    return f"{chunks_prefix(job_id)}a{attempt}/"


def chunk_task_id(job_id: str, index: int, attempt: int) -> str:
    return f"{job_id}.c{index}.a{attempt}"


def join_task_id(job_id: str, attempt: int) -> str:
    return f"{job_id}.join.a{attempt}"


def delete_chunks(job_id: str) -> None:
    try:
        object_store().delete_prefix(chunks_prefix(job_id))
    except Exception:  # noqa: BLE001 - the expiry sweeper deletes the job's prefix later anyway
        log.warning("could not delete the chunk objects of %s", job_id, exc_info=True)


def start_chunked(job: Job, attempt: int, src: Path, background: str | None, workdir: Path,
                  store: JobStore, settings: Settings) -> bool:
    """Cut ``src`` into chunks and send their tasks when the job is long enough; False (nothing
    done) when it runs as one task: chunking off, a video not longer than one chunk, a choice of
    people (it follows people from the first frame), or an input that cannot be cut exactly."""
    from service.media.chunks import NotChunkable, info_to_json, plan_chunks, split_video
    from service.media.probe import probe_video

    if settings.chunk_seconds <= 0 or job.options.keep_points or job.options.people != "all":
        return False
    if job.video is not None and job.video.duration_s <= settings.chunk_seconds:
        return False
    info = probe_video(src, settings)
    try:
        plan = plan_chunks(info, settings.chunk_seconds, settings.chunk_warmup_frames)
        if plan is None:
            return False
        parts = split_video(info, plan, workdir / "chunks")
    except NotChunkable as e:
        log.info("job %s runs as one task: %s", job.id, e)
        return False
    objects = object_store()
    prefix = _prefix(job.id, attempt)
    for part in parts:
        objects.put_file(prefix + part.name, part, "video/mp4")
    # the chunks are joined by packet copy, so all of them take this worker's encoder preset
    fields = {"plan": plan.to_json(), "info": info_to_json(info), "suffix": src.suffix or ".mp4",
              "x264_preset": settings.x264_preset}
    if info.has_side_tracks:  # the join muxes the original's sound and subtitles: the stored input, or a copy of a fetched one
        if job.input_key:
            fields["source_key"] = job.input_key
        else:
            fields["source_key"] = prefix + "source" + (src.suffix or ".mp4")
            objects.put_file(fields["source_key"], src, "application/octet-stream")
    if background is not None and Path(background).is_file():  # fetched once, not once per chunk
        key = prefix + "background" + Path(background).suffix
        objects.put_file(key, Path(background), "application/octet-stream")
        fields["background_key"] = key
    elif background is not None:
        fields["background"] = background
    if not store.start_chunks(job.id, attempt, len(plan.chunks), fields):
        return True  # restarted or canceled meanwhile: that attempt owns the job now
    limits = time_limit_options(job, settings)
    group(
        process_chunk.si(job.id, c.index, attempt).set(
            task_id=chunk_task_id(job.id, c.index, attempt), queue=settings.queue_name, **limits
        )
        for c in plan.chunks
    ).apply_async()
    log.info("job %s cut into %d chunks of about %gs", job.id, len(plan.chunks), settings.chunk_seconds)
    return True


def _stopped(store: JobStore, job_id: str, settings: Settings, beat: Heartbeat) -> Any:
    """The cancel poll of a chunk: its lease lost, the job canceled, or the job over (another
    chunk failed it)."""
    last = {"t": 0.0, "v": False}

    def poll() -> bool:
        if beat.lost:
            return True
        now = time.monotonic()
        if now - last["t"] >= settings.cancel_poll_interval_s:
            last["t"] = now
            try:
                job = store.get(job_id)
                last["v"] = store.cancel_requested(job_id) or job is None or job.terminal
            except redis.RedisError:
                log.warning("cancel flag of %s not read (Redis unavailable)", job_id)
        return bool(last["v"])

    return poll


def _end_stopped(store: JobStore, job_id: str) -> str:
    """A chunk (or join) that stopped: cancel the job if that was asked, delete what it left."""
    outcome = "stopped"
    if store.cancel_requested(job_id):
        outcome = "canceled"
        try:
            store.transition(job_id, JobStatus.CANCELED)
        except (IllegalTransition, BackdropError):
            pass
        try:
            object_store().delete_prefix(job_prefix(job_id))
        except Exception:  # noqa: BLE001
            log.warning("could not delete objects of %s", job_id, exc_info=True)
    delete_chunks(job_id)
    _notify_once(store, job_id)
    return outcome


def _notify_once(store: JobStore, job_id: str) -> None:
    """The job's callback, once, whichever of its chunks ended it."""
    job = store.get(job_id)
    if job is not None and job.terminal and store.once(f"notify:{job_id}", 3600):
        notify_callback(store, job_id)


def _fail_chunked(store: JobStore, job_id: str, code: str, message: str) -> str:
    fail_job(store, job_id, code, message)
    delete_chunks(job_id)
    _notify_once(store, job_id)
    return "failed"


class _Leased:
    """A chunk's (or join's) lease and heartbeat, and its work folder."""

    def __init__(self, store: JobStore, name: str, settings: Settings):
        self.store, self.name = store, name
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.held = store.acquire_lease(name, self.token)
        self.beat = Heartbeat(store, name, self.token, max(0.2, settings.job_lease_s / 3))
        self.workdir: Path | None = None
        self._workdir: Workdir | None = None
        if self.held:
            self.beat.start()
            self._workdir = Workdir(f"chunk-{name[:8]}-", settings.spool_dir)
            self.workdir = self._workdir.path

    def close(self) -> None:
        if not self.held:
            return
        self.beat.stop.set()
        try:
            self.store.release_lease(self.name, self.token)
        except Exception:  # noqa: BLE001 - Redis is gone: the lease lapses by itself
            log.warning("could not release the lease %s", self.name, exc_info=True)
        if self._workdir is not None:
            self._workdir.remove()


def _usable(store: JobStore, job_id: str, attempt: int) -> tuple[Job | None, dict[str, str]]:
    job = store.get(job_id)
    if job is None or job.status is not JobStatus.RUNNING or job.attempts != attempt:
        return None, {}
    state = store.chunk_state(job_id)
    if state.get("attempt") != str(attempt):
        return None, {}
    return job, state


@app.task(name=CHUNK_TASK, bind=True, max_retries=None, acks_late=True, reject_on_worker_lost=True)
def process_chunk(self: Any, job_id: str, index: int, attempt: int) -> str:
    """Replace the background of one chunk (with its warm-up frames) and store its encoded video."""
    from service.media.chunks import ChunkPlan, chunk_info, info_from_json
    from service.media.encode import OUTPUT_FORMATS
    from service.pipeline import ReplaceOptions, Window, replace_background

    settings = get_settings()
    store = job_store()
    job, state = _usable(store, job_id, attempt)
    if job is None:
        current = store.get(job_id)
        if current is None or current.terminal:
            delete_chunks(job_id)
        return "skipped"  # finished, or restarted as a later attempt whose own chunks run
    if store.cancel_requested(job_id):
        return _end_stopped(store, job_id)
    if state.get(f"finished:{index}"):
        _maybe_join(store, job_id, attempt, settings)  # a redelivery after the work was done
        return "done"
    lease = _Leased(store, f"{job_id}:c{index}", settings)
    if not lease.held:
        # redelivered while its first run still holds it: look again later
        process_chunk.apply_async((job_id, index, attempt), task_id=chunk_task_id(job_id, index, attempt),
                                  countdown=settings.job_lease_s, queue=settings.queue_name,
                                  **time_limit_options(job, settings))
        return "leased"
    try:
        tries = store.chunk_started(job_id, str(index))
        if tries > settings.max_attempts:
            return _fail_chunked(store, job_id, "worker_lost",
                             f"the worker running chunk {index} was lost {tries - 1} times; it is not tried again")
        plan = ChunkPlan.from_json(state["plan"])
        span = plan.chunks[index]
        if state.get("x264_preset"):  # the planning worker's: a worker set otherwise still joins
            settings = settings.model_copy(update={"x264_preset": state["x264_preset"]})
        whole = info_from_json(state["info"])
        assert lease.workdir is not None
        objects = object_store()
        src = lease.workdir / f"in-{index:04d}.mp4"
        objects.get_file(f"{_prefix(job_id, attempt)}{src.name}", src)
        if "background_key" in state:
            background: str | None = str(lease.workdir / ("background" + Path(state["background_key"]).suffix))
            objects.get_file(state["background_key"], Path(background))  # type: ignore[arg-type]
        else:
            background = state.get("background") or background_spec(job, lease.workdir, settings)
        options = ReplaceOptions.parse(**job.options.model_dump())
        ext, content_type = OUTPUT_FORMATS[job.options.output_format]
        out = lease.workdir / f"out-{index:04d}{ext}"
        last = {"t": 0.0}

        def progress(done: int, total: int) -> None:
            now = time.monotonic()
            if now - last["t"] >= settings.progress_interval_s:
                last["t"] = now
                try:
                    store.chunk_progress(job_id, attempt, index, done)
                except redis.RedisError:
                    log.warning("progress of %s not written (Redis unavailable)", job_id)

        window = Window(chunk_info(whole, src), span.model_from_pts, span.start_pts, span.end_pts)
        result = replace_background(src, background, out, options, progress=progress,
                                    cancel=_stopped(store, job_id, settings, lease.beat), settings=settings,
                                    window=window)
        if lease.beat.lost:
            return "lost"
        if result.frames != span.frames:
            raise RuntimeError(f"chunk {index} wrote {result.frames} frames, not {span.frames}")
        objects.put_file(f"{_prefix(job_id, attempt)}{out.name}", out, content_type)
        if store.cancel_requested(job_id) or (store.get(job_id) or job).terminal:
            return _end_stopped(store, job_id)  # the upload raced a cancel: nothing stays
        done, total = store.chunk_progress(job_id, attempt, index, result.frames, finished=True)
        if total and done >= total:
            _send_join(job, attempt, settings)
        return "succeeded"
    except Canceled:
        return "lost" if lease.beat.lost else _end_stopped(store, job_id)
    except Exception as e:  # noqa: BLE001 - reported on the job (_failed)
        return _failed(self, store, job_id, e, settings, f"chunk {index}")
    finally:
        lease.close()


def _failed(task: Any, store: JobStore, job_id: str, e: Exception, settings: Settings, what: str) -> str:
    """How a chunk or join task that raised ``e`` ends: a storage hiccup is retried (with backoff,
    up to ``task_max_retries``); anything else fails the whole job with its code — ``time_limit``
    past the soft limit, the error's own code, or ``internal_error`` (logged in full here).  A full
    disk counts as a storage hiccup."""
    e = disk_full(e, "of the worker") or e
    if isinstance(e, TransientStorageError):
        if task.request.retries < settings.task_max_retries:
            raise task.retry(exc=e, countdown=retry_delay_s(task.request.retries)) from e
        return _fail_chunked(store, job_id, e.code, e.message)
    if isinstance(e, SoftTimeLimitExceeded):
        return _fail_chunked(store, job_id, "time_limit", "the job ran past its time limit")
    if isinstance(e, BackdropError):
        return _fail_chunked(store, job_id, e.code, e.message)
    log.error("%s of job %s failed", what, job_id, exc_info=e)
    return _fail_chunked(store, job_id, "internal_error", f"{type(e).__name__}: {e}")


def _send_join(job: Job, attempt: int, settings: Settings, countdown: float | None = None) -> None:
    join_chunks.apply_async((job.id, attempt), task_id=join_task_id(job.id, attempt), countdown=countdown,
                            queue=settings.queue_name, **time_limit_options(job, settings))


def _maybe_join(store: JobStore, job_id: str, attempt: int, settings: Settings) -> None:
    job, state = _usable(store, job_id, attempt)
    if job is not None and job.progress.chunks_total and job.progress.chunks_done >= job.progress.chunks_total:
        _send_join(job, attempt, settings)


@app.task(name=JOIN_TASK, bind=True, max_retries=None, acks_late=True, reject_on_worker_lost=True)
def join_chunks(self: Any, job_id: str, attempt: int) -> str:
    """Concatenate the encoded chunks, mux the input's audio once, store the result, finish the job."""
    from service.media.chunks import ChunkPlan, info_from_json
    from service.media.chunks import join_chunks as join_files
    from service.media.encode import FORMATS, OUTPUT_FORMATS, output_size

    settings = get_settings()
    store = job_store()
    job, state = _usable(store, job_id, attempt)
    if job is None:
        current = store.get(job_id)
        if current is None or current.terminal:
            delete_chunks(job_id)
        return "skipped"
    if store.cancel_requested(job_id):
        return _end_stopped(store, job_id)
    lease = _Leased(store, f"{job_id}:join", settings)
    if not lease.held:
        _send_join(job, attempt, settings, countdown=settings.job_lease_s)
        return "leased"
    try:
        tries = store.chunk_started(job_id, "join")
        if tries > settings.max_attempts:
            return _fail_chunked(store, job_id, "worker_lost",
                             f"the worker joining the chunks was lost {tries - 1} times; it is not tried again")
        assert lease.workdir is not None
        plan = ChunkPlan.from_json(state["plan"])
        whole = info_from_json(state["info"])
        objects = object_store()
        ext, content_type = OUTPUT_FORMATS[job.options.output_format]
        parts = []
        for c in plan.chunks:
            part = lease.workdir / f"out-{c.index:04d}{ext}"
            objects.get_file(f"{_prefix(job_id, attempt)}{part.name}", part)
            parts.append(part)
        source = None
        if "source_key" in state:
            source = lease.workdir / ("source" + state.get("suffix", ".mp4"))
            objects.get_file(state["source_key"], source)
        out = lease.workdir / f"output{ext}"
        joined = join_files(parts, whole, job.options.output_format, out, source)
        if joined.frames != sum(c.frames for c in plan.chunks):
            raise RuntimeError(f"the join holds {joined.frames} frames, not {sum(c.frames for c in plan.chunks)}")
        if store.cancel_requested(job_id):
            return _end_stopped(store, job_id)
        key = f"{job_prefix(job_id)}output{ext}"
        size = objects.put_file(key, out, content_type)
        tb = whole.time_base
        width, height = output_size(whole, FORMATS[job.options.output_format])
        res = JobResult(
            key=key, size=size, duration_s=float((joined.end_pts - joined.first_pts) * tb),
            format=job.options.output_format, content_type=content_type, frames=joined.frames,
            width=width, height=height,
        )

        def done(j: Job) -> None:
            if j.attempts != attempt:
                raise IllegalTransition(f"job {job_id} was restarted by another worker")
            j.result = res
            j.progress.frames_done = j.progress.frames_total = res.frames
            j.progress.chunks_done = j.progress.chunks_total

        try:
            finished = store.transition(job_id, JobStatus.SUCCEEDED, mutate=done,
                                        allowed_from=frozenset({JobStatus.RUNNING}))
        except IllegalTransition:
            current = store.get(job_id)
            if current is not None and current.status is JobStatus.CANCELED:
                return _end_stopped(store, job_id)
            return "lost"
        if finished.started_at is not None:
            seconds = (finished.finished_at or finished.started_at) - finished.started_at
            store.record_processing(seconds.total_seconds(), res.frames)
        delete_chunks(job_id)
        store.forget_chunks(job_id)
        _notify_once(store, job_id)
        return "succeeded"
    except Exception as e:  # noqa: BLE001 - reported on the job (_failed)
        return _failed(self, store, job_id, e, settings, "join")
    finally:
        lease.close()

"""Jobs: the pydantic model, its states and legal transitions, and the Redis-backed store.

Keys (all under ``backdrop:``):
  job:{id}             the job, as JSON (every record expires: ``job_ttl_s`` after its last move)
  owner:{owner}        ZSET of the owner's job ids by creation time (newest first when listed)
  queued / running     ZSETs of the ids in those states (queue depth, metrics)
  expiry               ZSET of finished job ids by expiry time (the sweeper deletes their objects then;
                       an id whose deletion failed stays, due again later)
  idem:{owner}:{hash}  Idempotency-Key → job id
  cancel:{id}          the cancel flag a worker polls
  lease:{id}           the worker token running the job (refreshed by heartbeat)
  lease:{id}:c{n}      the same for chunk n of a job cut into chunks (``lease:{id}:join`` for its join)
  chunks:{id}          HASH of a chunked job: its plan and video facts, and per chunk its starts
                       (``tries:n``), frames written (``done:n``) and whether it finished (``finished:n``)
  stats                HASH of counters (jobs entering each state, processing seconds, frames)
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, cast

import redis
from pydantic import BaseModel, Field, computed_field
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from service.config import Settings, get_settings
from service.errors import IllegalTransition, JobNotFound

P = "backdrop:"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})

#: Legal moves.  running → running is a clean restart of a redelivered job; running → queued puts a
#: job back to wait for a retry after a transient failure.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELED}),
    JobStatus.RUNNING: frozenset(
        {JobStatus.RUNNING, JobStatus.QUEUED, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED}
    ),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELED: frozenset(),
}


def can_move(src: JobStatus, dst: JobStatus) -> bool:
    return dst in TRANSITIONS[src]


def utcnow() -> datetime:
    return datetime.now(UTC)


def timestamp(when: datetime | None) -> str | None:
    """``when`` as the API writes times: ISO 8601 in UTC with ``Z``, as pydantic writes them, so
    that a job created (a JSONResponse), fetched (a response model) and called back reads alike."""
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z") if when else None


class Progress(BaseModel):
    frames_done: int = 0  # a chunked job: the sum over its chunks
    frames_total: int = 0
    chunks_total: int = 0  # 0: the job runs as one task
    chunks_done: int = 0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def percent(self) -> float:
        if self.frames_total <= 0:
            return 0.0
        return round(min(100.0, 100.0 * self.frames_done / self.frames_total), 1)


class JobError(BaseModel):
    code: str
    message: str


class JobResult(BaseModel):
    key: str
    size: int
    duration_s: float
    format: str
    content_type: str
    frames: int
    width: int
    height: int


class VideoMeta(BaseModel):
    width: int
    height: int
    fps: float
    frames: int
    duration_s: float
    has_audio: bool = False


class JobOptions(BaseModel):
    model: str = "rvm"
    output_format: str = "mp4"
    composite: str = "alpha"
    harmonize: float = 0.0
    keep_points: list[tuple[int, int]] = Field(default_factory=list)  # first-frame pixels of people who stay
    people: str = "all"


class Background(BaseModel):
    kind: str  # "file", "color" or "blur"
    value: str | None = None  # the colour, for "color"; the strength (0.05..1), for "blur" when given
    key: str | None = None  # the object key, for "file"
    filename: str | None = None
    url: str | None = None  # fetched by the worker instead of ``key`` (``background_url``)


class Job(BaseModel):
    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    owner: str = "local"
    status: JobStatus = JobStatus.QUEUED
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: Progress = Field(default_factory=Progress)
    error: JobError | None = None
    result: JobResult | None = None
    options: JobOptions = Field(default_factory=JobOptions)
    background: Background = Field(default_factory=lambda: Background(kind="blur"))
    input_key: str = ""
    input_filename: str | None = None
    #: ``video_url``: the worker fetches the input from here instead of ``input_key``.
    input_url: str | None = None
    #: Unknown (None) until inspected: at POST for an uploaded file, by the worker for a URL input
    #: (or an upload only partly checked by the API), which fills it in (``set_video``).
    video: VideoMeta | None = None
    callback_url: str | None = None
    attempts: int = 0
    time_limit_s: float | None = None
    #: When the running attempt passes its hard time limit (its worker process is killed then).
    deadline_at: datetime | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


class JobStore:
    def __init__(self, client: redis.Redis, settings: Settings | None = None):
        self.r = client
        self.settings = settings or get_settings()

    @classmethod
    def from_settings(cls, settings: Settings | None = None, *, retry_s: float = 0.0) -> JobStore:
        """A store on its own connection pool.  With ``retry_s`` a lost connection is retried with
        backoff for about that long (workers: a Redis restart must not leave a job half-written);
        without, an outage surfaces at once (the API answers 503)."""
        settings = settings or get_settings()
        retry: dict[str, Any] = {"retry": Retry(ExponentialBackoff(cap=1.0), retries=0)}
        if retry_s > 0:
            retry = {
                "retry": Retry(ExponentialBackoff(cap=4.0, base=0.25), retries=int(retry_s / 4) + 4),
                "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
            }
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=10, socket_connect_timeout=5, **retry)
        return cls(client, settings)

    # -- reading ---------------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        raw = self.r.get(P + f"job:{job_id}")
        return Job.model_validate_json(raw) if raw else None

    def get_for(self, owner: str, job_id: str) -> Job:
        """The job if ``owner`` owns it; ``JobNotFound`` otherwise (another owner's job is not revealed)."""
        job = self.get(job_id) if _plausible_id(job_id) else None
        if job is None or job.owner != owner:
            raise JobNotFound(f"no job {job_id!r}")
        return job

    def list_jobs(self, owner: str, offset: int = 0, limit: int = 20) -> tuple[list[Job], int]:
        key = P + f"owner:{owner}"
        ids = [_s(i) for i in self.r.zrevrange(key, offset, offset + limit - 1)]
        jobs: list[Job] = []
        gone: list[str] = []
        raws = self.r.mget([P + f"job:{i}" for i in ids]) if ids else []
        for i, raw in zip(ids, raws, strict=True):
            if raw is None:
                gone.append(i)
            else:
                jobs.append(Job.model_validate_json(raw))
        if gone:
            self.r.zrem(key, *gone)
        return jobs, int(self.r.zcard(key)) - len(gone)

    def queue_depth(self) -> int:
        return int(self.r.zcard(P + "queued"))

    def running_count(self) -> int:
        return int(self.r.zcard(P + "running"))

    def stats(self) -> dict[str, float]:
        return {_s(k): float(v) for k, v in self.r.hgetall(P + "stats").items()}

    # -- creating --------------------------------------------------------------------------------
    def idempotent_job(self, owner: str, idem_key: str) -> Job | None:
        job_id = self.r.get(self._idem(owner, idem_key))
        return self.get(_s(job_id)) if job_id else None

    def create(self, job: Job, idem_key: str | None = None) -> tuple[Job, bool]:
        """Store a new queued job.  With an Idempotency-Key already used, the earlier job and False."""
        if idem_key:
            ik = self._idem(job.owner, idem_key)
            if not self.r.set(ik, job.id, nx=True, ex=self.settings.idempotency_ttl_s):
                prior = self.get(_s(self.r.get(ik) or b""))
                if prior is not None:
                    return prior, False
                self.r.set(ik, job.id, ex=self.settings.idempotency_ttl_s)
        ts = job.created_at.timestamp()
        pipe = self.r.pipeline()
        pipe.set(P + f"job:{job.id}", job.model_dump_json(), ex=self.settings.job_ttl_s)
        pipe.zadd(P + f"owner:{job.owner}", {job.id: ts})
        pipe.zadd(P + "queued", {job.id: ts})
        pipe.hincrby(P + "stats", "jobs_queued", 1)
        pipe.execute()
        return job, True

    def _idem(self, owner: str, idem_key: str) -> str:
        return P + f"idem:{owner}:" + hashlib.sha256(idem_key.encode()).hexdigest()

    # -- moving ----------------------------------------------------------------------------------
    def transition(
        self,
        job_id: str,
        to: JobStatus,
        *,
        mutate: Callable[[Job], None] | None = None,
        allowed_from: frozenset[JobStatus] | None = None,
    ) -> Job:
        """Move a job to ``to`` atomically (WATCH/MULTI), applying ``mutate`` to it on the way."""
        key = P + f"job:{job_id}"
        out: dict[str, Job] = {}

        def txn(pipe: redis.client.Pipeline) -> None:
            raw = pipe.get(key)
            if raw is None:
                raise JobNotFound(f"no job {job_id!r}")
            job = Job.model_validate_json(raw)
            if allowed_from is not None and job.status not in allowed_from:
                raise IllegalTransition(f"job {job_id} cannot move from {job.status} to {to}")
            out["job"] = self._move(pipe, job, to, mutate)

        self.r.transaction(txn, key)
        return out["job"]

    def _move(
        self, pipe: redis.client.Pipeline, job: Job, to: JobStatus, mutate: Callable[[Job], None] | None
    ) -> Job:
        """Queue the writes that move ``job`` (read under WATCH) to ``to``; starts the MULTI block."""
        src = job.status
        if not can_move(src, to):
            raise IllegalTransition(f"job {job.id} cannot move from {src} to {to}")
        job.status = to
        now = utcnow()
        if to is JobStatus.RUNNING:
            job.started_at = now
        if to in TERMINAL:
            job.finished_at = now
            job.deadline_at = None
        if mutate is not None:
            mutate(job)
        ttl = self.settings.job_ttl_s
        pipe.multi()
        pipe.set(P + f"job:{job.id}", job.model_dump_json(), ex=ttl)
        if to in TERMINAL:
            pipe.zadd(P + "expiry", {job.id: now.timestamp() + ttl})
        for state, zkey in ((JobStatus.QUEUED, "queued"), (JobStatus.RUNNING, "running")):
            if to is state:
                pipe.zadd(P + zkey, {job.id: now.timestamp()})
            else:
                pipe.zrem(P + zkey, job.id)
        if src is not to:
            pipe.hincrby(P + "stats", f"jobs_{to.value}", 1)
        return job

    def settle_abandoned(self, job_id: str, max_attempts: int, now: datetime | None = None) -> Job | None:
        """A running job whose lease has lapsed (its worker died, or was killed at the hard time
        limit) is settled: past its deadline it fails ``time_limit``; after ``max_attempts`` starts
        it fails ``worker_lost``; else it goes back to ``queued`` (the caller sends it again).
        Atomic with the lease: a worker that takes the job over meanwhile wins.  None when the job
        needed nothing."""
        key, lease = P + f"job:{job_id}", P + f"lease:{job_id}"
        out: dict[str, Job] = {}

        def txn(pipe: redis.client.Pipeline) -> None:
            raw = pipe.get(key)
            if raw is None or pipe.exists(lease):
                return
            job = Job.model_validate_json(raw)
            if job.status is not JobStatus.RUNNING:
                return
            moment = now or utcnow()
            if job.deadline_at is not None and moment >= job.deadline_at:
                error = JobError(code="time_limit", message="the job ran past its hard time limit and was stopped")
            elif job.attempts >= max_attempts:
                error = JobError(
                    code="worker_lost",
                    message=f"the worker running this job was lost {job.attempts} times; it is not tried again",
                )
            else:
                out["job"] = self._move(pipe, job, JobStatus.QUEUED, None)
                return

            def fail(j: Job) -> None:
                j.error = error

            out["job"] = self._move(pipe, job, JobStatus.FAILED, fail)

        self.r.transaction(txn, key, lease)
        return out.get("job")

    def update_progress(self, job_id: str, done: int, total: int, attempt: int) -> bool:
        """Write progress while the job runs under ``attempt``; False once it no longer does."""

        def change(job: Job) -> None:
            job.progress = Progress(frames_done=done, frames_total=total)

        return self._update_running(job_id, attempt, change)

    def set_video(self, job_id: str, meta: VideoMeta, attempt: int) -> bool:
        """Fill in the video's metadata (and ``frames_total``) once the worker has inspected an
        input the API could not (a URL); False once the job no longer runs under ``attempt``."""

        def change(job: Job) -> None:
            job.video = meta
            job.progress = Progress(frames_done=0, frames_total=meta.frames)

        return self._update_running(job_id, attempt, change)

    def _update_running(self, job_id: str, attempt: int, change: Callable[[Job], None]) -> bool:
        """Apply ``change`` to the job atomically if it still runs under ``attempt`` (a worker that
        lost the job to another writes nothing); its TTL is kept."""
        key = P + f"job:{job_id}"
        ok = {"v": False}

        def txn(pipe: redis.client.Pipeline) -> None:
            raw = pipe.get(key)
            if raw is None:
                return
            job = Job.model_validate_json(raw)
            if job.status is not JobStatus.RUNNING or job.attempts != attempt:
                return
            change(job)
            pipe.multi()
            pipe.set(key, job.model_dump_json(), keepttl=True)
            ok["v"] = True

        self.r.transaction(txn, key)
        return ok["v"]

    # -- chunked jobs (issue 16; ``service.workers.chunks``) ----------------------------------------
    def start_chunks(self, job_id: str, attempt: int, total: int, fields: dict[str, str]) -> bool:
        """Record a job's chunk plan (``fields``) and set ``chunks_total``, if the job still runs
        under ``attempt``; the plan of an earlier attempt goes."""
        ckey = P + f"chunks:{job_id}"
        pipe = self.r.pipeline()
        pipe.delete(ckey)
        pipe.hset(ckey, mapping=cast(Any, {**fields, "attempt": str(attempt)}))
        pipe.expire(ckey, self.settings.job_ttl_s)
        pipe.execute()

        def change(job: Job) -> None:
            job.progress = Progress(frames_done=0, frames_total=job.progress.frames_total, chunks_total=total)

        return self._update_running(job_id, attempt, change)

    def chunk_state(self, job_id: str) -> dict[str, str]:
        return {_s(k): _s(v) for k, v in self.r.hgetall(P + f"chunks:{job_id}").items()}

    def chunk_started(self, job_id: str, part: str) -> int:
        """Count a start of chunk ``part`` (an index, or ``join``); the count so far."""
        return int(self.r.hincrby(P + f"chunks:{job_id}", f"tries:{part}", 1))

    def chunk_progress(self, job_id: str, attempt: int, index: int, done: int, finished: bool = False) -> tuple[int, int]:
        """Frames written by chunk ``index`` (and, with ``finished``, that it is complete): the
        job's ``frames_done`` becomes the sum over its chunks and ``chunks_done`` the chunks
        finished.  (chunks done, chunks total); (0, 0) once the job no longer runs under ``attempt``.

        A chunk run again within the attempt (its worker died) counts from 0 again; its count stays
        at the most it reached until the new run passes it, so a client's progress never goes back
        while the job's attempt is the same."""
        key, ckey = P + f"job:{job_id}", P + f"chunks:{job_id}"
        out = {"v": (0, 0)}

        def txn(pipe: redis.client.Pipeline) -> None:
            raw = pipe.get(key)
            if raw is None:
                return
            job = Job.model_validate_json(raw)
            if job.status is not JobStatus.RUNNING or job.attempts != attempt:
                return
            state = {_s(k): _s(v) for k, v in pipe.hgetall(ckey).items()}
            done_here = max(done, int(state.get(f"done:{index}", 0)))
            state[f"done:{index}"] = str(done_here)
            if finished:
                state[f"finished:{index}"] = "1"
            frames = sum(int(v) for k, v in state.items() if k.startswith("done:"))
            finished_n = sum(1 for k in state if k.startswith("finished:"))
            job.progress = Progress(frames_done=frames, frames_total=job.progress.frames_total,
                                    chunks_total=job.progress.chunks_total, chunks_done=finished_n)
            pipe.multi()
            pipe.hset(ckey, f"done:{index}", str(done_here))
            if finished:
                pipe.hset(ckey, f"finished:{index}", "1")
            pipe.set(key, job.model_dump_json(), keepttl=True)
            out["v"] = (finished_n, job.progress.chunks_total)

        self.r.transaction(txn, key, ckey)
        return out["v"]

    def forget_chunks(self, job_id: str) -> None:
        self.r.delete(P + f"chunks:{job_id}")

    def chunk_leases(self, job_id: str) -> list[str]:
        """The chunk and join leases of a job that are held now."""
        return [_s(k) for k in self.r.scan_iter(match=P + f"lease:{job_id}:*", count=100)]

    def once(self, name: str, ttl_s: float) -> bool:
        """True for the first caller only (for ``ttl_s``): one callback for many chunks."""
        return bool(self.r.set(P + f"once:{name}", b"1", nx=True, px=int(ttl_s * 1000)))

    def delete(self, job: Job) -> None:
        """Remove the job's record.  Its cancel flag is set, not removed: a job canceled a moment ago
        may still be running, and the flag (which expires by itself) is what stops its worker."""
        pipe = self.r.pipeline()
        pipe.delete(P + f"job:{job.id}", P + f"lease:{job.id}", P + f"chunks:{job.id}")
        self.request_cancel(job.id, pipe)
        pipe.zrem(P + f"owner:{job.owner}", job.id)
        for z in ("queued", "running", "expiry"):
            pipe.zrem(P + z, job.id)
        pipe.execute()

    # -- cancel flag and lease -------------------------------------------------------------------
    def request_cancel(self, job_id: str, pipe: redis.client.Pipeline | None = None) -> None:
        (pipe or self.r).set(P + f"cancel:{job_id}", b"1", ex=max(self.settings.job_ttl_s, 3600))

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.r.exists(P + f"cancel:{job_id}"))

    def acquire_lease(self, job_id: str, token: str) -> bool:
        return self.hold(f"lease:{job_id}", token, self.settings.job_lease_s)

    def hold(self, name: str, token: str, ttl_s: float) -> bool:
        """Take the lock ``name`` for ``ttl_s`` seconds unless someone holds it."""
        return bool(self.r.set(P + name, token, nx=True, px=int(ttl_s * 1000)))

    def let_go(self, name: str, token: str) -> None:
        """Release the lock ``name`` if ``token`` still holds it."""
        self.r.eval(self._RELEASE, 1, P + name, token)

    _RENEW = """if redis.call('get', KEYS[1]) == ARGV[1] then
        return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"""
    _RELEASE = """if redis.call('get', KEYS[1]) == ARGV[1] then
        return redis.call('del', KEYS[1]) else return 0 end"""

    def renew_lease(self, job_id: str, token: str) -> bool:
        ms = int(self.settings.job_lease_s * 1000)
        return bool(self.r.eval(self._RENEW, 1, P + f"lease:{job_id}", token, ms))

    def release_lease(self, job_id: str, token: str) -> None:
        self.let_go(f"lease:{job_id}", token)

    def lease_holder(self, job_id: str) -> str | None:
        v = self.r.get(P + f"lease:{job_id}")
        return _s(v) if v else None

    # -- metrics and housekeeping ----------------------------------------------------------------
    def record_processing(self, seconds: float, frames: int) -> None:
        pipe = self.r.pipeline()
        pipe.hincrbyfloat(P + "stats", "processing_seconds_sum", seconds)
        pipe.hincrby(P + "stats", "processing_seconds_count", 1)
        for le in PROCESSING_BUCKETS:
            if seconds <= le:
                pipe.hincrby(P + "stats", f"processing_seconds_bucket_{le:g}", 1)
        pipe.hincrby(P + "stats", "frames_total", frames)
        if seconds > 0:
            pipe.hset(P + "stats", "last_fps", frames / seconds)
        pipe.execute()

    def expired_ids(self, now: float | None = None, limit: int = 100) -> list[str]:
        """Ids of finished jobs whose TTL has passed.  They stay listed until ``forget_expired``:
        an id whose objects could not be deleted is tried again on a later sweep."""
        now = time.time() if now is None else now
        return [_s(i) for i in self.r.zrangebyscore(P + "expiry", 0, now, start=0, num=limit)]

    def forget_expired(self, ids: list[str]) -> None:
        if ids:
            self.r.zrem(P + "expiry", *ids)

    def retry_expired(self, ids: list[str], delay_s: float) -> None:
        if ids:
            self.r.zadd(P + "expiry", {i: time.time() + delay_s for i in ids})

    def ids_in(self, state: JobStatus, before: float | None = None) -> list[str]:
        """Ids in the ``queued`` or ``running`` index (entered before ``before``, a Unix time)."""
        return [_s(i) for i in self.r.zrangebyscore(P + state.value, 0, "+inf" if before is None else before)]

    def drop_from_index(self, state: JobStatus, job_id: str) -> None:
        """Remove an id whose record has expired from the ``queued``/``running`` index."""
        self.r.zrem(P + state.value, job_id)

    def ping(self) -> None:
        self.r.ping()


PROCESSING_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _plausible_id(job_id: str) -> bool:
    return 8 <= len(job_id) <= 64 and all(c in "0123456789abcdef-" for c in job_id)


def job_to_json(job: Job) -> dict[str, Any]:
    return json.loads(job.model_dump_json())


def public_dict(job: Job, result_url: str | None) -> dict[str, Any]:
    """What a client sees of a job (the API's ``JobPublic`` and the callback body)."""
    result = None
    if job.result is not None and job.status is JobStatus.SUCCEEDED:
        result = {
            "url": result_url,
            "size": job.result.size,
            "duration": job.result.duration_s,
            "format": job.result.format,
            "content_type": job.result.content_type,
            "frames": job.result.frames,
            "width": job.result.width,
            "height": job.result.height,
        }
    return {
        "id": job.id,
        "status": job.status.value,
        "progress": {
            "frames_done": job.progress.frames_done,
            "frames_total": job.progress.frames_total,
            "percent": job.progress.percent,
            "chunks_total": job.progress.chunks_total,
            "chunks_done": job.progress.chunks_done,
        },
        "created_at": timestamp(job.created_at),
        "started_at": timestamp(job.started_at),
        "finished_at": timestamp(job.finished_at),
        "error": job.error.model_dump() if job.error else None,
        "result": result,
        "options": job.options.model_dump(),
        "background": {"kind": job.background.kind, "value": job.background.value},
        "video": job.video.model_dump() if job.video else None,
        "callback_url": job.callback_url,
        "attempts": job.attempts,
    }


def result_url(job: Job, objects: Any, settings: Settings, base_url: str | None = None) -> str | None:
    """Presigned URL on S3; the API's own ``/jobs/{id}/result`` on the local store."""
    if job.result is None or job.status is not JobStatus.SUCCEEDED:
        return None
    url = objects.presigned_url(job.result.key, settings.presign_ttl_s, f"{job.id}{_ext(job.result.key)}")
    if url:
        return str(url)
    base = (base_url or settings.public_base_url or "").rstrip("/")
    return f"{base}/jobs/{job.id}/result"


def _ext(key: str) -> str:
    dot = key.rfind(".")
    return key[dot:] if dot > key.rfind("/") else ""

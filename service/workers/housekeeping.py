"""Housekeeping, run on a timer (the light worker's beat), never as a side effect of another job:

- the **lease reaper** settles running jobs whose lease has lapsed (their worker died, or was killed
  at the hard time limit): back to the queue, or failed ``worker_lost`` / ``time_limit`` with their
  callback; and re-sends queued jobs whose broker message is gone (Redis lost it, or enqueueing
  failed half-way);
- the **expiry sweeper** deletes the objects of jobs whose records have expired, keeping an id whose
  deletion failed for a later sweep.

Every step is idempotent and atomic per job, so two housekeepers running at once do no harm.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import redis

from service.config import Settings
from service.jobs import Job, JobStatus, JobStore, P

log = logging.getLogger(__name__)

#: kombu's Redis transport: messages wait in a list named after the queue (plus one list per
#: priority step) and, once a worker has taken them, in this hash until they are acknowledged.
UNACKED_KEY = "unacked"
#: ... and, for each of those, when it was taken (a sorted set of delivery tags by time)
UNACKED_INDEX_KEY = "unacked_index"
PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (3, 6, 9)
#: How long an object deletion that failed waits before the sweeper tries it again.
SWEEP_RETRY_S = 300.0


def broker_task_ids(client: redis.Redis, queues: Iterable[str]) -> set[str]:
    """Task ids of the messages the broker holds for ``queues``: waiting, or taken but not yet
    acknowledged (a worker holds retries and countdowns that way)."""
    raws: list[Any] = []
    for q in queues:
        for name in (q, *(f"{q}{PRIORITY_SEP}{p}" for p in PRIORITY_STEPS)):
            raws.extend(client.lrange(name, 0, -1))
    raws.extend(client.hvals(UNACKED_KEY))
    return _task_ids(raws)


def _task_ids(raws: Iterable[Any]) -> set[str]:
    """The task ids of Kombu messages as Redis holds them: a waiting message is the message's JSON,
    an unacknowledged one ``[message, exchange, routing_key]``; anything else is skipped."""
    ids: set[str] = set()
    for raw in raws:
        try:
            msg = json.loads(raw or b"")
            if isinstance(msg, list):
                msg = msg[0]
            ids.add(str(msg["headers"]["id"]))
        except (ValueError, KeyError, TypeError, IndexError):
            continue
    return ids


def held_long_ids(client: redis.Redis, held_s: float) -> set[str]:
    """Task ids of the messages a worker took more than ``held_s`` ago and has not acknowledged.

    A live worker takes one message per process (``worker_prefetch_multiplier`` 1) and starts it at
    once, and a chunk takes its lease as it starts; a retry's countdown (``retry_delay_s``) is held the
    same way, without a lease.  A chunk message held longer than that with no lease is one whose
    whole worker died (a node or container gone): Kombu gives it back only after the visibility
    timeout, which is as long as the hard time limit, so the job waited until its deadline and then
    failed ``time_limit``, hours later for a long video."""
    before = time.time() - held_s
    tags: list[Any] = list(client.zrangebyscore(UNACKED_INDEX_KEY, "-inf", before))
    if not tags:
        return set()
    return _task_ids(client.hmget(UNACKED_KEY, tags))


def retry_delay_s(retries: int) -> float:
    """How long a job or chunk waits before its retry number ``retries`` + 1 after a storage
    hiccup (a Celery countdown: its worker holds the message meanwhile): 2, 4, 8, ... up to 60 s."""
    return float(min(60, 2 ** (retries + 1)))


def held_too_long_s(settings: Settings) -> float:
    """How long a chunk's message may be held by a worker without the chunk's lease before its
    worker counts as gone (``held_long_ids``): well past the longest retry countdown and a few leases."""
    return max(retry_delay_s(settings.task_max_retries - 1) + 15, 10 * settings.job_lease_s)


def queued_grace_s(settings: Settings) -> float:
    """How long a queued job may go without a broker message before it is sent again: longer than
    the moment between the API storing the job and sending its message."""
    return max(10.0, 2 * settings.housekeeping_interval_s)


def reap(
    store: JobStore,
    settings: Settings,
    send: Callable[[Job], None],
    notify: Callable[[str], None],
    cleanup: Callable[[str], None],
    cleanup_chunks: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """Settle abandoned jobs (see module doc); returns counts by what was done.

    A job cut into chunks (issue 16) holds no lease of its own while its chunks wait or run: it is
    alive while a chunk or its join holds a lease or has a message in the broker (waiting, or
    taken and not yet acknowledged: a chunk whose worker process died goes back there), until its
    deadline; a message taken longer ago than ``held_too_long_s`` whose chunk holds no lease is
    one whose whole worker died, and does not count.  With none of these it is settled like any
    other (back to the queue, whole)."""
    counts = {"requeued": 0, "failed": 0, "resent": 0, "orphans": 0}
    for state in (JobStatus.RUNNING, JobStatus.QUEUED):
        for jid in store.ids_in(state):
            if store.get(jid) is None:  # the record expired: nothing will ever finish it
                store.drop_from_index(state, jid)
                cleanup(jid)
                counts["orphans"] += 1
    present: set[str] | None = None
    held_long: set[str] = set()
    for jid in store.ids_in(JobStatus.RUNNING):
        if store.lease_holder(jid):
            continue
        current = store.get(jid)
        chunked = current is not None and current.progress.chunks_total > 0
        if chunked and current is not None:
            if present is None:
                present = broker_task_ids(store.r, [settings.queue_name])
                held_long = held_long_ids(store.r, held_too_long_s(settings))
            late = current.deadline_at is not None and datetime.now(UTC) >= current.deadline_at
            alive = store.chunk_leases(jid) or any(i.startswith(jid + ".") and i not in held_long for i in present)
            if alive and not late:
                continue
        job = store.settle_abandoned(jid, settings.max_attempts)
        if job is None:
            continue
        if chunked and cleanup_chunks is not None:
            cleanup_chunks(jid)  # its chunks stop at their next poll; their objects go now
        if chunked and job.status is not JobStatus.QUEUED and not store.once(f"notify:{jid}", 3600):
            counts["failed"] += 1
            continue  # a chunk sent its callback already
        if job.status is JobStatus.QUEUED:
            log.warning("job %s lost its worker (attempt %d); queued again", jid, job.attempts)
            send(job)
            counts["requeued"] += 1
        else:
            log.warning("job %s failed: %s", jid, job.error.code if job.error else "?")
            notify(jid)
            counts["failed"] += 1
    stale = store.ids_in(JobStatus.QUEUED, before=time.time() - queued_grace_s(settings))
    if stale:
        present = broker_task_ids(store.r, [settings.queue_name])
        for jid in stale:
            job = store.get(jid)
            if jid not in present and job is not None and job.status is JobStatus.QUEUED:
                log.warning("queued job %s had no broker message; sent again", jid)
                send(job)
                counts["resent"] += 1
    return counts


def sweep(store: JobStore, delete_objects: Callable[[str], Any]) -> dict[str, int]:
    """Delete the objects of expired jobs; an id whose deletion fails stays due (see module doc)."""
    done: list[str] = []
    failed: list[str] = []
    for jid in store.expired_ids():
        if store.get(jid) is not None:
            continue  # the record outlives its expiry score (clock skew): next sweep
        try:
            delete_objects(jid)
            done.append(jid)
        except Exception:  # noqa: BLE001 - storage down: keep the id, try again later
            log.warning("could not delete the objects of expired job %s", jid, exc_info=True)
            failed.append(jid)
    store.forget_expired(done)
    store.retry_expired(failed, SWEEP_RETRY_S)
    return {"deleted": len(done), "kept": len(failed)}


#: Direct uploads (``POST /uploads``): a record per upload that expires with it, and a ZSET of
#: upload ids by expiry time, so that the objects of uploads never used by a job are deleted.
UPLOAD_RECORD = P + "upload:"
UPLOAD_EXPIRY = P + "uploads:expiry"


def upload_prefix(upload_id: str) -> str:
    return f"uploads/{upload_id}/"


def sweep_uploads(store: JobStore, delete_prefix: Callable[[str], Any], now: float | None = None) -> dict[str, int]:
    """Delete the objects of uploads that expired unused (a used upload's object moved to its
    job); an upload whose deletion fails is due again later."""
    now = time.time() if now is None else now
    due = [i.decode() if isinstance(i, bytes) else str(i)
           for i in store.r.zrangebyscore(UPLOAD_EXPIRY, 0, now, start=0, num=100)]
    done: list[str] = []
    failed: list[str] = []
    for uid in due:
        if store.r.exists(UPLOAD_RECORD + uid):
            continue  # renewed or clock skew: next sweep
        try:
            delete_prefix(upload_prefix(uid))
            done.append(uid)
        except Exception:  # noqa: BLE001 - storage down: keep the id, try again later
            log.warning("could not delete the object of expired upload %s", uid, exc_info=True)
            failed.append(uid)
    if done:
        store.r.zrem(UPLOAD_EXPIRY, *done)
    if failed:
        store.r.zadd(UPLOAD_EXPIRY, {u: now + SWEEP_RETRY_S for u in failed})
    return {"uploads_deleted": len(done), "uploads_kept": len(failed)}

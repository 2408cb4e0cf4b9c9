"""The lease reaper and a job cut into chunks (issue 16), against a real Redis and real Celery
messages in it: the job holds no lease of its own while its chunks wait or run; it is left alone
while a chunk holds a lease or has a message in the broker, settled when none has, failed
``time_limit`` past its deadline whatever its chunks do, and its chunk objects go then."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from service.config import Settings
from service.jobs import Job, JobStatus, JobStore, utcnow
from service.workers.celery_app import CHUNK_TASK, create_celery
from service.workers.housekeeping import reap


@pytest.fixture
def setup(redis_url: str) -> tuple[JobStore, Settings]:
    settings = Settings(redis_url=redis_url, queue_name="video-" + uuid.uuid4().hex[:6], job_lease_s=30)
    return JobStore.from_settings(settings), settings


def _chunked(store: JobStore, deadline_in_s: float | None = None) -> Job:
    job, _ = store.create(Job(owner="a"))

    def start(j: Job) -> None:
        j.attempts = 1
        j.deadline_at = utcnow() + timedelta(seconds=deadline_in_s) if deadline_in_s is not None else None

    store.transition(job.id, JobStatus.RUNNING, mutate=start)
    assert store.start_chunks(job.id, 1, 3, {"plan": "{}"})
    return job


def _reap(store: JobStore, settings: Settings) -> tuple[dict[str, int], list[str], list[str]]:
    sent: list[str] = []
    cleaned: list[str] = []
    counts = reap(store, settings, send=lambda j: sent.append(j.id), notify=lambda jid: None,
                  cleanup=lambda jid: None, cleanup_chunks=cleaned.append)
    return counts, sent, cleaned


def test_a_chunked_job_lives_while_a_chunk_is_leased_or_queued(setup: tuple[JobStore, Settings]) -> None:
    store, settings = setup
    job = _chunked(store)
    # a chunk running under its lease
    assert store.acquire_lease(f"{job.id}:c1", "token")
    assert _reap(store, settings)[1] == []
    store.release_lease(f"{job.id}:c1", "token")
    # no lease, but a chunk's message waits in the broker
    celery = create_celery(settings)
    celery.send_task(CHUNK_TASK, args=[job.id, 2, 1], task_id=f"{job.id}.c2.a1", queue=settings.queue_name)
    counts, sent, cleaned = _reap(store, settings)
    assert sent == [] and cleaned == [] and counts["requeued"] == 0
    assert store.get(job.id).status is JobStatus.RUNNING  # type: ignore[union-attr]
    # nothing left of it: settled like any job (back to the queue, whole), its chunk objects gone
    store.r.delete(settings.queue_name)
    counts, sent, cleaned = _reap(store, settings)
    assert sent == [job.id] and cleaned == [job.id] and counts["requeued"] == 1
    assert store.get(job.id).status is JobStatus.QUEUED  # type: ignore[union-attr]


def test_a_chunked_job_past_its_deadline_fails_whatever_its_chunks_do(setup: tuple[JobStore, Settings]) -> None:
    store, settings = setup
    job = _chunked(store, deadline_in_s=-1)
    assert store.acquire_lease(f"{job.id}:c0", "token")  # a chunk still runs
    counts, sent, cleaned = _reap(store, settings)
    after = store.get(job.id)
    assert after is not None and after.status is JobStatus.FAILED and after.error is not None
    assert after.error.code == "time_limit" and counts["failed"] == 1 and cleaned == [job.id] and sent == []

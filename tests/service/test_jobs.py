"""The job store against a real redis-server."""

from __future__ import annotations

import pytest
import redis

from service.config import Settings
from service.errors import IllegalTransition, JobNotFound
from service.jobs import TERMINAL, Job, JobStatus, JobStore, can_move, public_dict


@pytest.fixture
def store(redis_url: str) -> JobStore:
    return JobStore(redis.Redis.from_url(redis_url), Settings(job_ttl_s=60, job_lease_s=0.5))


def test_legal_transitions() -> None:
    assert can_move(JobStatus.QUEUED, JobStatus.RUNNING)
    assert can_move(JobStatus.RUNNING, JobStatus.SUCCEEDED)
    assert can_move(JobStatus.RUNNING, JobStatus.RUNNING)  # a clean restart
    assert not can_move(JobStatus.QUEUED, JobStatus.SUCCEEDED)
    for t in TERMINAL:
        assert not any(can_move(t, s) for s in JobStatus)


def test_lifecycle_index_and_ttl(store: JobStore) -> None:
    job, created = store.create(Job(owner="a"))
    assert created and store.queue_depth() == 1
    running = store.transition(job.id, JobStatus.RUNNING, mutate=lambda j: setattr(j, "attempts", 1))
    assert running.started_at is not None and store.queue_depth() == 0 and store.running_count() == 1
    assert store.update_progress(job.id, 5, 10, attempt=1)
    assert not store.update_progress(job.id, 6, 10, attempt=2)  # a stale attempt writes nothing
    got = store.get(job.id)
    assert got and got.progress.frames_done == 5 and got.progress.percent == 50.0
    done = store.transition(job.id, JobStatus.SUCCEEDED)
    assert done.finished_at is not None and store.running_count() == 0
    assert 0 < store.r.ttl(f"backdrop:job:{job.id}") <= 60
    with pytest.raises(IllegalTransition):
        store.transition(job.id, JobStatus.RUNNING)
    assert store.stats()["jobs_succeeded"] == 1


def test_owner_isolation_and_listing(store: JobStore) -> None:
    ids = [store.create(Job(owner="a"))[0].id for _ in range(3)]
    store.create(Job(owner="b"))
    jobs, total = store.list_jobs("a", 0, 2)
    assert total == 3 and [j.id for j in jobs] == ids[::-1][:2]  # newest first
    with pytest.raises(JobNotFound):
        store.get_for("b", ids[0])
    with pytest.raises(JobNotFound):
        store.get_for("a", "../../etc/passwd")
    store.delete(jobs[0])
    assert store.list_jobs("a", 0, 10)[1] == 2


def test_idempotency_key_returns_the_first_job(store: JobStore) -> None:
    first, created = store.create(Job(owner="a"), "key-1")
    second, created2 = store.create(Job(owner="a"), "key-1")
    assert created and not created2 and second.id == first.id
    assert store.idempotent_job("a", "key-1").id == first.id  # type: ignore[union-attr]
    assert store.idempotent_job("b", "key-1") is None  # keys are per owner


def test_lease_and_cancel_flag(store: JobStore) -> None:
    job, _ = store.create(Job(owner="a"))
    assert store.acquire_lease(job.id, "w1")
    assert not store.acquire_lease(job.id, "w2")
    assert store.renew_lease(job.id, "w1") and not store.renew_lease(job.id, "w2")
    store.release_lease(job.id, "w2")  # not the holder: no effect
    assert store.lease_holder(job.id) == "w1"
    store.release_lease(job.id, "w1")
    assert store.acquire_lease(job.id, "w2")
    assert not store.cancel_requested(job.id)
    store.request_cancel(job.id)
    assert store.cancel_requested(job.id)


def test_public_dict_and_owner_hash() -> None:
    d = public_dict(Job(owner="a"), None)
    assert d["status"] == "queued" and d["progress"]["percent"] == 0.0 and d["result"] is None
    assert "owner" not in d and "input_key" not in d

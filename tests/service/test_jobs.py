"""The job store against a real redis-server."""

from __future__ import annotations

import pytest
import redis

from service.config import Settings
from service.errors import IllegalTransition, JobNotFound
from service.jobs import TERMINAL, Job, JobStatus, JobStore, P, can_move, public_dict


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


def test_every_record_expires(store: JobStore) -> None:
    """A job record has a TTL in every state, so nothing lingers if its worker and the reaper are gone."""
    job, _ = store.create(Job(owner="a"))
    key = f"backdrop:job:{job.id}"
    assert 0 < store.r.ttl(key) <= 60
    store.transition(job.id, JobStatus.RUNNING, mutate=lambda j: setattr(j, "attempts", 1))
    assert 0 < store.r.ttl(key) <= 60
    assert store.update_progress(job.id, 1, 10, attempt=1)
    assert 0 < store.r.ttl(key) <= 60  # a progress write keeps it


def _running(store: JobStore, attempts: int, deadline_in_s: float | None = None) -> Job:
    from datetime import timedelta

    from service.jobs import utcnow

    job, _ = store.create(Job(owner="a"))

    def start(j: Job) -> None:
        j.attempts = attempts
        j.deadline_at = utcnow() + timedelta(seconds=deadline_in_s) if deadline_in_s is not None else None

    return store.transition(job.id, JobStatus.RUNNING, mutate=start)


def test_settle_abandoned(store: JobStore) -> None:
    # its worker still holds the lease: left alone
    held = _running(store, 1)
    assert store.acquire_lease(held.id, "w1")
    assert store.settle_abandoned(held.id, max_attempts=3) is None
    assert store.get(held.id).status is JobStatus.RUNNING  # type: ignore[union-attr]
    # lease lapsed, attempts left: queued again (the caller sends its message)
    lost = _running(store, 1)
    settled = store.settle_abandoned(lost.id, max_attempts=3)
    assert settled is not None and settled.status is JobStatus.QUEUED and store.queue_depth() == 1
    # lease lapsed after the last attempt: failed worker_lost
    spent = _running(store, 3)
    settled = store.settle_abandoned(spent.id, max_attempts=3)
    assert settled is not None and settled.status is JobStatus.FAILED and settled.error is not None
    assert settled.error.code == "worker_lost" and settled.finished_at is not None
    # past its hard limit: time_limit, whatever the attempts
    late = _running(store, 1, deadline_in_s=-1)
    settled = store.settle_abandoned(late.id, max_attempts=3)
    assert settled is not None and settled.error is not None and settled.error.code == "time_limit"
    # a finished job is never touched
    assert store.settle_abandoned(late.id, max_attempts=3) is None


def test_sweep_keeps_ids_whose_deletion_failed(store: JobStore) -> None:
    from service.workers.housekeeping import sweep

    ok, broken, alive = "a" * 32, "b" * 32, "c" * 32
    store.r.zadd("backdrop:expiry", {ok: 1, broken: 1, alive: 1})
    store.r.set(f"backdrop:job:{alive}", Job(id=alive).model_dump_json())  # record still there: not yet
    deleted: list[str] = []

    def delete(jid: str) -> None:
        if jid == broken:
            raise OSError("storage down")
        deleted.append(jid)

    assert sweep(store, delete) == {"deleted": 1, "kept": 1}
    assert deleted == [ok]
    due = store.expired_ids()
    assert due == [alive]  # ``broken`` waits for a later sweep, ``ok`` is forgotten
    assert store.r.zscore("backdrop:expiry", broken) is not None


def test_reaper_requeues_lost_jobs_and_resends_lost_messages(store: JobStore, redis_url: str) -> None:
    """Against a real Celery message in the broker: a queued job whose message is there is left
    alone; one whose message is gone is sent again; a running job without a lease is requeued."""
    import time
    import uuid

    from service.workers.celery_app import PROCESS_TASK, create_celery
    from service.workers.housekeeping import broker_task_ids, reap

    settings = Settings(redis_url=redis_url, queue_name="video-" + uuid.uuid4().hex[:6], job_lease_s=0.5)
    store.settings = settings
    celery = create_celery(settings)
    with_message, without = store.create(Job(owner="a"))[0], store.create(Job(owner="a"))[0]
    celery.send_task(PROCESS_TASK, args=[with_message.id], task_id=with_message.id, queue=settings.queue_name)
    assert broker_task_ids(store.r, [settings.queue_name]) == {with_message.id}
    old = time.time() - 600  # both have waited long past the grace
    store.r.zadd("backdrop:queued", {with_message.id: old, without.id: old})
    lost = _running(store, 1)
    sent: list[str] = []
    counts = reap(store, settings, send=lambda j: sent.append(j.id), notify=lambda jid: None, cleanup=lambda jid: None)
    assert counts["requeued"] == 1 and counts["resent"] == 1
    assert sorted(sent) == sorted([lost.id, without.id])
    # an index entry whose record expired is dropped, its objects cleaned
    ghost = "d" * 32
    store.r.zadd("backdrop:running", {ghost: old})
    cleaned: list[str] = []
    reap(store, settings, send=lambda j: None, notify=lambda jid: None, cleanup=cleaned.append)
    assert cleaned == [ghost] and store.r.zscore("backdrop:running", ghost) is None


def test_held_long_ids_reads_only_messages_taken_long_ago(store: JobStore) -> None:
    """Kombu keeps a taken message in the ``unacked`` hash and when it was taken in
    ``unacked_index``: only those taken before the cut count, and entries that are not a Kombu
    message (or whose hash entry is gone) are skipped, not fatal."""
    import json
    import time

    from service.workers.housekeeping import UNACKED_INDEX_KEY, UNACKED_KEY, broker_task_ids, held_long_ids

    def entry(task_id: str) -> str:
        return json.dumps([{"headers": {"id": task_id}, "body": ""}, "", "video"])

    now = time.time()
    store.r.hset(UNACKED_KEY, mapping={"t-old": entry("old-task"), "t-new": entry("new-task"),
                                      "t-bad": "not json", "t-odd": json.dumps({"no": "headers"})})
    store.r.zadd(UNACKED_INDEX_KEY, {"t-old": now - 300, "t-new": now - 5, "t-bad": now - 300,
                                     "t-odd": now - 300, "t-gone": now - 300})
    assert held_long_ids(store.r, 75) == {"old-task"}
    assert held_long_ids(store.r, 1) == {"old-task", "new-task"}
    assert held_long_ids(store.r, 3600) == set()
    assert broker_task_ids(store.r, ["video"]) == {"old-task", "new-task"}


def test_chunk_progress_sums_chunks_and_never_goes_back_within_an_attempt(store: JobStore) -> None:
    """frames_done is the sum over the chunks; a chunk run again (its worker died) starts counting
    from 0, which made a client's progress drop from 70 to 30 frames mid-job.  A new attempt starts
    again from 0, as the job itself does."""
    job = _running(store, 1)
    assert store.start_chunks(job.id, 1, 2, {"count": "2"})
    assert store.chunk_progress(job.id, 1, 0, 40) == (0, 2)
    store.chunk_progress(job.id, 1, 1, 30)
    assert store.get(job.id).progress.frames_done == 70  # type: ignore[union-attr]
    store.chunk_progress(job.id, 1, 0, 5)  # chunk 0 run again
    assert store.get(job.id).progress.frames_done == 70  # type: ignore[union-attr]
    assert store.chunk_progress(job.id, 1, 0, 50, finished=True) == (1, 2)
    progress = store.get(job.id).progress  # type: ignore[union-attr]
    assert (progress.frames_done, progress.chunks_done) == (80, 1)
    assert store.chunk_progress(job.id, 2, 1, 60) == (0, 0)  # not this job's attempt: nothing written
    assert store.get(job.id).progress.frames_done == 80  # type: ignore[union-attr]
    again = store.get(job.id).model_copy(update={"attempts": 2})  # type: ignore[union-attr]
    store.r.set(P + f"job:{job.id}", again.model_dump_json())  # the reaper sent it again, a worker took it
    assert store.start_chunks(job.id, 2, 2, {"count": "2"})
    store.chunk_progress(job.id, 2, 0, 10)
    assert store.get(job.id).progress.frames_done == 10  # type: ignore[union-attr]


def test_a_chunk_message_counts_as_abandoned_only_past_the_longest_retry_countdown() -> None:
    """A retry's countdown holds its message without a lease (2, 4, 8, ... s): held_too_long_s
    stays past the longest one the settings allow, and past ten leases."""
    from service.workers.housekeeping import held_too_long_s, retry_delay_s

    assert [retry_delay_s(r) for r in range(7)] == [2, 4, 8, 16, 32, 60, 60]
    assert held_too_long_s(Settings(task_max_retries=5, job_lease_s=1)) == 32 + 15
    assert held_too_long_s(Settings(task_max_retries=2, job_lease_s=2)) == 20
    assert held_too_long_s(Settings(task_max_retries=9, job_lease_s=1)) == 60 + 15

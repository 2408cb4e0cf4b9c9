"""Long videos in chunks across workers (issue 16), through real parts: redis-server, the API,
Celery worker processes.  A 20-second clip (talking-head.mp4 looped forward and back, downscaled,
10 frames/s, a keyframe a second, its AAC audio looped) is cut into 5-second chunks; the result is
compared with the sequential run of the same pipeline (``replace_background``, what a worker runs
with chunking off)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from stack import ApiServer, base_env, data_path, settings_from, wait_for
from test_end_to_end import objects_of, poll, submit

from service.jobs import JobStore
from service.media.chunks import chunk_pts

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from chunkclip import build_clip  # noqa: E402
from videoutil import alpha_channel, audio_packets, x264_options  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clip20(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("chunks") / "long.mp4"
    return build_clip(data_path("videos", "talking-head.mp4"), out, 20, 128, gop=10, fps=10)


@pytest.fixture(scope="module")
def sequential_matte(clip20: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from service.pipeline import ReplaceOptions, replace_background

    out = tmp_path_factory.mktemp("seq") / "matte.mp4"
    replace_background(clip20, None, out, ReplaceOptions(output_format="matte"))
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a > 0.5, b > 0.5
    union = (a | b).sum((1, 2))
    return np.where(union > 0, (a & b).sum((1, 2)) / np.maximum(union, 1), 1.0)


def _env(redis_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    return base_env(redis_url, tmp_path, BACKDROP_CHUNK_SECONDS="5", BACKDROP_CHUNK_WARMUP_FRAMES="8", **extra)


def _store(env: dict[str, str]) -> JobStore:
    return JobStore.from_settings(settings_from(env))


def test_chunked_job_matches_the_sequential_run(
    redis_url: str, tmp_path: Path, worker_factory: Any, clip20: Path, sequential_matte: Path
) -> None:
    env = _env(redis_url, tmp_path)
    # any worker takes any chunk; one set to another x264 preset (other SPS/PPS) still encodes its
    # chunks as the worker that cut the video does, or the join by packet copy would refuse them
    workers = [worker_factory(env, "a"), worker_factory({**env, "BACKDROP_X264_PRESET": "ultrafast"}, "b")]
    store = _store(env)
    with ApiServer(settings_from(env)) as api, api.client() as c:
        for w in workers:
            w.wait_ready()
        job = submit(c, clip20, output_format="matte")
        seen: list[Any] = []

        def chunked_and_done() -> bool:
            j = store.get(job["id"])
            if j is not None:
                seen.append(j.progress.model_copy())
            return j is not None and j.terminal

        wait_for(chunked_and_done, 300, 0.1, "the chunked job")
        done = poll(c, job["id"], {"succeeded", "failed", "canceled"}, 5)
        assert done["status"] == "succeeded", (done, workers[0].log(), workers[1].log())
        assert done["attempts"] == 1 and done["result"]["frames"] == 200
        assert done["progress"]["chunks_total"] == done["progress"]["chunks_done"] == 4  # the API shows them
        final = store.get(job["id"])
        assert final is not None and final.progress.chunks_total == 4 and final.progress.chunks_done == 4
        assert any(p.chunks_total == 4 and 0 < p.frames_done < 200 for p in seen)  # progress summed over chunks
        assert any(0 < p.chunks_done < 4 for p in seen)
        # one result object, nothing of the chunks left
        assert objects_of(api.settings.storage_dir, job["id"]) == ["input.mp4", "output.mp4"]
        out = api.settings.storage_dir / "jobs" / job["id"] / "output.mp4"
        # frame count and timestamps exact, audio bit-exact (the input's AAC packets, copied once)
        assert chunk_pts(out) == chunk_pts(sequential_matte) == chunk_pts(clip20)
        assert audio_packets(out) == audio_packets(clip20) == audio_packets(sequential_matte)
        assert len(audio_packets(out)) > 800
        # the matte matches the sequential run's, at the seams too
        a, b = alpha_channel(out), alpha_channel(sequential_matte)
        assert a.shape == b.shape and b.mean() > 0.2  # a person fills much of the frame
        iou = _iou(a, b)
        assert iou.mean() >= 0.98 and iou.min() >= 0.95, (iou.mean(), iou.min(), int(iou.argmin()))
        # both workers ran chunks, all with one preset
        assert all("process_chunk" in w.log() and "succeeded" in w.log() for w in workers)
        assert len(set(x264_options(out))) == 1

        # a video shorter than one chunk runs as one task, as before
        short = tmp_path / "short.mp4"
        build_clip(data_path("videos", "talking-head.mp4"), short, 4, 128, gop=10, fps=10)
        job2 = submit(c, short, output_format="matte")
        done2 = poll(c, job2["id"], {"succeeded", "failed"}, 120)
        assert done2["status"] == "succeeded" and done2["result"]["frames"] == 40
        j2 = store.get(job2["id"])
        assert j2 is not None and j2.progress.chunks_total == 0
        assert objects_of(api.settings.storage_dir, job2["id"]) == ["input.mp4", "output.mp4"]


def _lease_pid(r: redis.Redis, job_id: str, index: int) -> int | None:
    token = r.get(f"backdrop:lease:{job_id}:c{index}")
    return int(token.decode().split(":")[1]) if token else None


def test_a_chunk_whose_worker_dies_is_redone_alone(
    redis_url: str, tmp_path: Path, worker_factory: Any, clip20: Path
) -> None:
    env = _env(redis_url, tmp_path, BACKDROP_JOB_LEASE_S="2")
    worker = worker_factory(env)
    store = _store(env)
    r = redis.Redis.from_url(redis_url)
    with ApiServer(settings_from(env)) as api, api.client() as c:
        worker.wait_ready()
        job = submit(c, clip20, output_format="matte")
        jid = job["id"]
        # chunk 1 has written some frames: kill the pool process running it
        wait_for(lambda: int(store.chunk_state(jid).get("done:1", 0)) > 0, 240, 0.05, "chunk 1 under way")
        pid = _lease_pid(r, jid, 1)
        assert pid is not None and pid != worker.proc.pid
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: store.chunk_state(jid).get("tries:1") == "2", 120, 0.1, "chunk 1 started again")
        tries = store.chunk_state(jid)
        done = poll(c, jid, {"succeeded", "failed"}, 300)
        assert done["status"] == "succeeded", (done, worker.log())
        assert done["attempts"] == 1  # the job itself was not restarted
        assert tries.get("tries:0") == "1"  # the other chunks ran once
        assert done["result"]["frames"] == 200
        out = api.settings.storage_dir / "jobs" / jid / "output.mp4"
        assert chunk_pts(out) == chunk_pts(clip20)
        assert objects_of(api.settings.storage_dir, jid) == ["input.mp4", "output.mp4"]
        time.sleep(3)  # nothing runs it again
        again = c.get(f"/jobs/{jid}").json()
        assert again["status"] == "succeeded" and again["attempts"] == 1


def test_a_chunked_job_whose_whole_worker_dies_is_run_again(
    redis_url: str, tmp_path: Path, worker_factory: Any, clip20: Path
) -> None:
    """The whole video worker is SIGKILLed (a node or container gone) while it runs a chunk: the
    chunk's message stays taken in the broker until the visibility timeout (as long as the hard
    time limit), so the job waited for its deadline and failed time_limit.  Once the message has
    been held past ``held_too_long_s`` with no chunk lease, the reaper runs the job again, whole,
    on the worker that is left."""
    from service.workers.housekeeping import held_too_long_s

    # short leases and few retries (so short countdowns): the reaper gives up on the message sooner
    env = _env(redis_url, tmp_path, BACKDROP_JOB_LEASE_S="2", BACKDROP_HOUSEKEEPING_INTERVAL_S="1",
               BACKDROP_TASK_MAX_RETRIES="2")
    first = worker_factory(env, "a")
    store = _store(env)
    with ApiServer(settings_from(env)) as api, api.client() as c:
        first.wait_ready()
        job = submit(c, clip20, output_format="matte")
        jid = job["id"]
        wait_for(lambda: int(store.chunk_state(jid).get("done:0", 0)) > 0, 240, 0.05, "chunk 0 under way")
        killed = time.monotonic()
        first.kill()
        second = worker_factory(env, "b")
        second.wait_ready()
        done = poll(c, jid, {"succeeded", "failed"}, held_too_long_s(settings_from(env)) + 240)
        assert done["status"] == "succeeded" and done["attempts"] == 2, (done, second.log())
        assert done["result"]["frames"] == 200
        assert time.monotonic() - killed < held_too_long_s(settings_from(env)) + 240


def test_cancel_midway_stops_every_chunk_and_leaves_nothing(
    redis_url: str, tmp_path: Path, worker_factory: Any, clip20: Path
) -> None:
    env = _env(redis_url, tmp_path)
    workers = [worker_factory(env, "a"), worker_factory(env, "b")]
    store = _store(env)
    with ApiServer(settings_from(env)) as api, api.client() as c:
        for w in workers:
            w.wait_ready()
        job = submit(c, clip20, output_format="webm")
        jid = job["id"]
        wait_for(lambda: len(store.chunk_leases(jid)) == 2, 240, 0.05, "two chunks running at once")
        assert c.delete(f"/jobs/{jid}").status_code == 204
        assert c.get(f"/jobs/{jid}").json()["status"] == "canceled"
        # every chunk stops: no chunk holds a lease, none waits in the broker, nothing is stored
        from service.workers.housekeeping import broker_task_ids

        queue = env["BACKDROP_QUEUE_NAME"]
        wait_for(lambda: not store.chunk_leases(jid), 15, 0.1, "the chunks to stop")
        wait_for(lambda: not any(i.startswith(jid) for i in broker_task_ids(store.r, [queue])), 30, 0.2,
                 "the chunk messages to drain")
        wait_for(lambda: objects_of(api.settings.storage_dir, jid) == [], 10, 0.2, "the objects to go")
        final = c.get(f"/jobs/{jid}").json()
        assert final["status"] == "canceled" and final["result"] is None


def test_a_chunk_that_kills_its_worker_past_the_cap_fails_the_job_and_leaves_its_input_only(
    redis_url: str, tmp_path: Path, worker_factory: Any, clip20: Path
) -> None:
    env = _env(redis_url, tmp_path, BACKDROP_JOB_LEASE_S="2", BACKDROP_MAX_ATTEMPTS="1")
    worker = worker_factory(env)
    store = _store(env)
    r = redis.Redis.from_url(redis_url)
    with ApiServer(settings_from(env)) as api, api.client() as c:
        worker.wait_ready()
        job = submit(c, clip20, output_format="matte")
        jid = job["id"]
        wait_for(lambda: int(store.chunk_state(jid).get("done:0", 0)) > 0, 240, 0.05, "chunk 0 under way")
        pid = _lease_pid(r, jid, 0)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        done = poll(c, jid, {"succeeded", "failed"}, 120)
        assert done["status"] == "failed" and done["error"]["code"] == "worker_lost", (done, worker.log())
        assert "chunk 0" in done["error"]["message"]
        # the chunks after it stop without work; the chunk objects go, the input stays (as for any failed job)
        wait_for(lambda: objects_of(api.settings.storage_dir, jid) == ["input.mp4"], 30, 0.2, "the chunk objects to go")
        wait_for(lambda: not store.chunk_leases(jid), 15, 0.1, "no chunk running")
        assert c.get(f"/jobs/{jid}").json()["status"] == "failed"

"""Previews expire: the record by its Redis TTL, the objects by the sweeper (on the light queue's
beat), which keeps an id whose objects could not be deleted for the next sweep."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import redis

from service.config import Settings
from service.previews import Preview, PreviewStore, preview_prefix
from service.storage import LocalStore
from service.workers.celery_app import PREVIEW_SWEEP_TASK, PREVIEW_TASK, create_celery
from service.workers.preview import sweep


class _FailingStore(LocalStore):
    def delete_prefix(self, prefix: str) -> int:
        raise OSError("storage away")


def test_expired_previews_are_swept_and_failed_deletions_kept(web_redis_port: int, tmp_path: Path) -> None:
    r = redis.Redis(port=web_redis_port, db=63)
    r.flushdb()
    store = PreviewStore(r, Settings(preview_ttl_s=1, open_mode=True))
    objects = LocalStore(tmp_path / "objects")
    ids = []
    for _ in range(2):
        p = Preview()
        store.create(p)
        frame = tmp_path / "f.jpg"
        frame.write_bytes(b"x")
        objects.put_file(preview_prefix(p.id) + "frame.jpg", frame)
        ids.append(p.id)
    assert 0 < r.pttl(f"backdrop:preview:{ids[0]}") <= 1000
    assert sweep(store, objects) == 0  # nothing expired yet
    time.sleep(1.2)
    assert store.get(ids[0]) is None  # the record expired by itself
    assert sweep(store, _FailingStore(tmp_path / "objects")) == 0
    assert sorted(store.expired_ids()) == sorted(ids)  # kept for the next sweep
    assert sweep(store, objects) == 2
    assert objects.keys("previews/") == [] and store.expired_ids() == []


def test_previews_have_their_own_queue_and_the_sweep_runs_on_the_light_beat() -> None:
    s = Settings(open_mode=True, preview_queue_name="pq", light_queue_name="lq", queue_name="vq")
    conf: Any = create_celery(s).conf
    assert conf.task_routes[PREVIEW_TASK] == {"queue": "pq"}
    assert conf.task_routes[PREVIEW_SWEEP_TASK] == {"queue": "lq"}
    beat = {e["task"]: e for e in conf.beat_schedule.values()}
    assert beat[PREVIEW_SWEEP_TASK]["options"]["queue"] == "lq"

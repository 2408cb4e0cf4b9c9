"""Previews: the first frame of a video, cut out and on its new background, in a few seconds.

A preview is small and short-lived: the browser (or any client) sends one still frame and the
background options; a worker on the ``preview`` queue (its own process, so a long video job never
delays it) writes two pictures to object storage: the person cut out (RGBA PNG) and the frame as
the chosen output would show it (JPEG).  Everything about a preview expires after
``preview_ttl_s``: its Redis record by TTL, its objects by the preview sweeper.

Keys (under ``backdrop:``):
  preview:{id}        the preview, as JSON (expires after ``preview_ttl_s``)
  previews:expiry     ZSET of preview ids by expiry time (the sweeper deletes their objects then)

Import-light (pydantic and redis): the API imports it.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

import redis
from pydantic import BaseModel, Field

from service.config import Settings
from service.errors import PreviewNotFound
from service.jobs import JobError, P, utcnow

#: Object key names of a preview's outputs, under ``previews/{id}/``.
CUTOUT = "cutout.png"
COMPOSITE = "composite.jpg"


def preview_prefix(preview_id: str) -> str:
    return f"previews/{preview_id}/"


class PreviewStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Preview(BaseModel):
    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    owner: str = "local"
    status: PreviewStatus = PreviewStatus.QUEUED
    created_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    #: The one options model's fields (``service.options.Options``), background kind included.
    options: dict[str, Any] = Field(default_factory=dict)
    background_color: str | None = None
    #: The strength of a blurred background (None: the default), as ``background_blur_strength``.
    background_blur_strength: float | None = None
    frame_key: str = ""
    background_key: str | None = None
    width: int = 0
    height: int = 0
    #: Whether the output shows a scene (mp4, greenscreen, matte): then ``composite.jpg`` exists.
    has_composite: bool = False
    #: The people found on the frame (``service.inference.people.PersonFound``: id, box, point, score),
    #: largest first, for a UI to draw and pick from; a point sent back as ``keep_points`` keeps that person.
    people: list[dict[str, Any]] = Field(default_factory=list)
    seconds: float | None = None
    error: JobError | None = None

    @property
    def prefix(self) -> str:
        return preview_prefix(self.id)


class PreviewStore:
    """Preview records in Redis, each with its TTL; the expiry ZSET lists ids whose objects the
    sweeper deletes."""

    def __init__(self, client: redis.Redis, settings: Settings):
        self.r = client
        self.ttl = settings.preview_ttl_s

    def _key(self, preview_id: str) -> str:
        return P + f"preview:{preview_id}"

    def create(self, preview: Preview) -> None:
        pipe = self.r.pipeline()
        pipe.set(self._key(preview.id), preview.model_dump_json(), ex=self.ttl)
        pipe.zadd(P + "previews:expiry", {preview.id: time.time() + self.ttl})
        pipe.execute()

    def get(self, preview_id: str) -> Preview | None:
        if not (8 <= len(preview_id) <= 64 and preview_id.isalnum()):
            return None
        raw = self.r.get(self._key(preview_id))
        return Preview.model_validate_json(raw) if raw else None

    def get_for(self, owner: str, preview_id: str) -> Preview:
        """The preview if ``owner`` made it; ``PreviewNotFound`` otherwise (expired, unknown or
        another tenant's)."""
        preview = self.get(preview_id)
        if preview is None or preview.owner != owner:
            raise PreviewNotFound(f"no preview {preview_id[:64]!r} (previews expire after {self.ttl} s)")
        return preview

    def save(self, preview: Preview) -> bool:
        """Write ``preview`` back, keeping its TTL; False if it expired meanwhile."""
        return bool(self.r.set(self._key(preview.id), preview.model_dump_json(), xx=True, keepttl=True))

    def count_request(self, owner: str, now: float | None = None) -> int:
        """Previews ``owner`` asked for in the current minute, this one included (a fixed window:
        one counter per tenant and minute, expiring with it)."""
        minute = int((time.time() if now is None else now) // 60)
        key = P + f"previews:rate:{owner}:{minute}"
        pipe = self.r.pipeline()
        pipe.incr(key)
        pipe.expire(key, 120)
        return int(pipe.execute()[0])

    def expired_ids(self, now: float | None = None, limit: int = 200) -> list[str]:
        now = time.time() if now is None else now
        return [i.decode() if isinstance(i, bytes) else str(i)
                for i in self.r.zrangebyscore(P + "previews:expiry", 0, now, start=0, num=limit)]

    def forget(self, ids: list[str]) -> None:
        if ids:
            self.r.zrem(P + "previews:expiry", *ids)

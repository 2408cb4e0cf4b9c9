"""Back-pressure that holds under concurrency: a place in the queue is reserved atomically before
an upload is accepted, and the reservation becomes the queued job on success or is released.

Counting "queued jobs, then accept" in two steps let 30 concurrent POSTs past a depth of 3 (each
saw an empty queue while the others were still uploading).  Here one Lua script counts the queued
jobs *and* the uploads under way and takes a place only if there is one, globally
(``max_queue_depth``, 503 ``queue_full``) and per tenant (``tenant_max_queued``, 429
``quota_exceeded``).

Keys (beside the job store's, under ``backdrop:admission:``):
  reserved                ZSET reservation token → expiry (Redis time, ms): uploads under way
  tenant:{t}:reserved     the same, for one tenant
  tenant:{t}:queued       ZSET of the tenant's job ids admitted here; an id no longer in the job
                          store's ``queued`` index is dropped at the tenant's next admission, so the
                          count needs no hook in the job store and cannot drift

A reservation expires ``RESERVATION_TTL_S`` after it was last renewed (the upload renews it as
bytes arrive), so a crashed API process cannot hold places for ever.

``IdempotencyFingerprint`` is the other half of deciding whether a request gets in: a reused
``Idempotency-Key`` replays its job only for the same request.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass, field

from service.config import Settings
from service.errors import IdempotencyKeyReused, QueueFull, QuotaExceeded
from service.jobs import JobStatus, JobStore, P

A = P + "admission:"
#: How long a reservation lives without renewal, and how often a live upload renews it.
RESERVATION_TTL_S = 120.0
RENEW_EVERY_S = 15.0
#: Retry-After of a refusal: a queued job takes tens of seconds at least.
RETRY_AFTER_S = 30

# KEYS: queued index, reserved, tenant reserved, tenant queued.
# ARGV: token, ttl ms, max depth, tenant max, tenant keys' ttl s.
# Returns 0 (reserved), 1 (queue full), 2 (tenant quota).
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
for _, id in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do
  if not redis.call('ZSCORE', KEYS[1], id) then redis.call('ZREM', KEYS[4], id) end
end
if redis.call('ZCARD', KEYS[4]) + redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[4]) then return 2 end
if redis.call('ZCARD', KEYS[1]) + redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then return 1 end
local expiry = now + tonumber(ARGV[2])
redis.call('ZADD', KEYS[2], expiry, ARGV[1])
redis.call('ZADD', KEYS[3], expiry, ARGV[1])
redis.call('EXPIRE', KEYS[3], ARGV[5])
redis.call('EXPIRE', KEYS[4], ARGV[5])
return 0
"""

# KEYS: reserved, tenant reserved.  ARGV: token, ttl ms.  Returns 1 if the reservation was still held.
_RENEW = """
local t = redis.call('TIME')
local expiry = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[2])
local held = redis.call('ZADD', KEYS[1], 'XX', 'CH', expiry, ARGV[1])
redis.call('ZADD', KEYS[2], 'XX', expiry, ARGV[1])
return held
"""


class Admission:
    """Reservations of places in the queue, on the job store's Redis."""

    def __init__(self, jobs: JobStore, settings: Settings):
        self.r = jobs.r
        self.settings = settings
        self._reserve = self.r.register_script(_RESERVE)
        self._renew = self.r.register_script(_RENEW)

    def reserve(self, tenant: str) -> Reservation:
        """A place for one job of ``tenant``; ``QuotaExceeded`` or ``QueueFull`` when there is none."""
        res = Reservation(self, tenant, uuid.uuid4().hex)
        res.take()
        return res

    def reserved_count(self) -> int:
        """Uploads under way (live reservations), for tests and metrics."""
        return int(self.r.zcount(A + "reserved", f"({int(time.time() * 1000)}", "+inf"))

    def _keys(self, tenant: str) -> tuple[str, str, str]:
        return A + "reserved", A + f"tenant:{tenant}:reserved", A + f"tenant:{tenant}:queued"


@dataclass
class Reservation:
    """One place held while a request uploads and checks its inputs.  ``commit`` turns it into
    the queued job; ``release`` (always called in ``finally``) gives it back if it was not."""

    admission: Admission
    tenant: str
    token: str
    done: bool = False
    _renewed: float = field(default=0.0, repr=False)

    def take(self) -> None:
        adm, s = self.admission, self.admission.settings
        reserved, t_reserved, t_queued = adm._keys(self.tenant)
        outcome = int(adm._reserve(
            keys=[P + JobStatus.QUEUED.value, reserved, t_reserved, t_queued],
            args=[self.token, int(RESERVATION_TTL_S * 1000), s.max_queue_depth, s.tenant_max_queued,
                  max(s.job_ttl_s, 3600)],
        ))
        if outcome == 2:
            raise QuotaExceeded(
                f"this tenant already has {s.tenant_max_queued} jobs waiting or uploading; retry later",
                retry_after_s=RETRY_AFTER_S,
            )
        if outcome == 1:
            raise QueueFull(
                f"{s.max_queue_depth} jobs are waiting or uploading; retry later", retry_after_s=RETRY_AFTER_S
            )
        self._renewed = time.monotonic()

    def keep_alive(self) -> None:
        """Renew the reservation at most every ``RENEW_EVERY_S`` (called as upload bytes arrive)."""
        if time.monotonic() - self._renewed >= RENEW_EVERY_S:
            self.ensure()

    def ensure(self) -> None:
        """Make sure the place is still held just before the job is created: renew it, or take a new
        one if it lapsed (an upload stalled past ``RESERVATION_TTL_S``), which may refuse."""
        reserved, t_reserved, _ = self.admission._keys(self.tenant)
        if int(self.admission._renew(keys=[reserved, t_reserved], args=[self.token, int(RESERVATION_TTL_S * 1000)])):
            self._renewed = time.monotonic()
        else:
            self.take()

    def commit(self, job_id: str) -> None:
        """The job is in the job store's queued index now: count it there (and in the tenant's
        set) instead of as a reservation.  Call it only after the job was stored, so the place is
        never counted zero times."""
        reserved, t_reserved, t_queued = self.admission._keys(self.tenant)
        pipe = self.admission.r.pipeline(transaction=True)
        pipe.zadd(t_queued, {job_id: time.time()})
        pipe.expire(t_queued, max(self.admission.settings.job_ttl_s, 3600))
        pipe.zrem(reserved, self.token)
        pipe.zrem(t_reserved, self.token)
        pipe.execute()
        self.done = True

    def release(self) -> None:
        """Give the place back unless it was committed (safe to call twice)."""
        if self.done:
            return
        reserved, t_reserved, _ = self.admission._keys(self.tenant)
        pipe = self.admission.r.pipeline(transaction=True)
        pipe.zrem(reserved, self.token)
        pipe.zrem(t_reserved, self.token)
        pipe.execute()
        self.done = True


class IdempotencyFingerprint:
    """What an ``Idempotency-Key`` was first used for: the SHA-256 fingerprint of the request
    (``JobCreate.fingerprint``), kept beside the job store's key → job mapping for as long
    (``idempotency_ttl_s``).  The same key with a different request is refused, not replayed."""

    def __init__(self, jobs: JobStore, settings: Settings, owner: str, idem_key: str):
        self.r = jobs.r
        self.ttl = settings.idempotency_ttl_s
        self.key = P + f"idemfp:{owner}:" + hashlib.sha256(idem_key.encode()).hexdigest()

    def check(self, fingerprint: str) -> None:
        """``IdempotencyKeyReused`` if the key was first used for another request."""
        stored = self.r.get(self.key)
        if stored is not None and _text(stored) != fingerprint:
            raise IdempotencyKeyReused(
                "this Idempotency-Key was used for a different request (other options or files); "
                "use a new key for a new request"
            )

    def claim(self, fingerprint: str) -> None:
        """Record the fingerprint for the key unless it has one already (then it must be equal)."""
        if not self.r.set(self.key, fingerprint, nx=True, ex=self.ttl):
            self.check(fingerprint)


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v

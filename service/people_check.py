"""A job's choice of people (``keep_points``, ``people=largest``) checked before the job is queued.

The API never decodes a picture or runs a model, so it asks the preview lane: ``request`` sends
``backdrop.check_people`` (the preview worker, which no video job can occupy) with the stored
input's key and the options, then waits on a Redis list for the answer, which ``answer`` pushes.
The worker runs ``service.pipeline.first_frame_people`` — the first frame found and split the way
the job will split it — so a point on nobody is refused with 422 ``no_person_at_point`` before
anything is queued.

When no answer comes within ``people_check_timeout_s`` (no preview worker, or a slow one), the
job is queued anyway: its worker makes the same check on the same frame before any work and fails
the job with the same code.  Import-light (redis only): the API imports it.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from service.errors import BackdropError, InputError
from service.jobs import P

log = logging.getLogger(__name__)

#: How long an answer waits in Redis for the API that asked (it has given up by then).
ANSWER_TTL_S = 120


def answer_key(check_id: str) -> str:
    return P + f"peoplecheck:{check_id}"


@dataclass(frozen=True)
class CheckAnswer:
    """The worker's verdict: ``ok``, or the error's ``code`` and ``message`` (an ``InputError``)."""

    ok: bool
    code: str | None = None
    message: str | None = None
    people: int = 0

    def refusal(self) -> BackdropError | None:
        """The error to answer the POST with, or None to queue the job: a refusal carries the code
        of an input error (``no_person_at_point``, ``no_person_found``, an unreadable video...); a
        failure of the check itself has none, and the job's worker decides."""
        if self.ok or not self.code:
            return None
        cls = _input_error(self.code)
        return cls(self.message or self.code) if cls else InputError(self.message or self.code, code=self.code)


def _input_error(code: str) -> type[BackdropError] | None:
    """The input error class with ``code`` (its HTTP status and title come with it)."""
    todo: list[type[BackdropError]] = [InputError]
    while todo:
        cls = todo.pop()
        if cls.code == code:
            return cls
        todo.extend(cls.__subclasses__())
    return None


def request(r: Any, celery: Any, task: str, queue: str, input_key: str, options: dict[str, Any],
            timeout_s: float) -> CheckAnswer | None:
    """Ask the preview lane to check ``options`` against the stored video ``input_key``; its
    answer, or None if none came in ``timeout_s`` seconds (the job's worker checks then)."""
    check_id = uuid.uuid4().hex
    celery.send_task(task, args=[check_id, input_key, options], queue=queue, expires=timeout_s)
    deadline = time.monotonic() + timeout_s
    key = answer_key(check_id)
    while (left := deadline - time.monotonic()) > 0:
        # short waits: the API's Redis client has a socket timeout of its own
        got = r.blpop([key], timeout=max(1, min(5, int(left))))
        if got is not None:
            r.delete(key)
            return CheckAnswer(**json.loads(got[1]))
    log.warning("people check %s: no answer from the preview lane in %.0f s; the job's worker checks", check_id, timeout_s)
    return None


def answer(r: Any, check_id: str, verdict: CheckAnswer) -> None:
    """Push the verdict where the API waits for it (expiring if it no longer does)."""
    key = answer_key(check_id)
    pipe = r.pipeline()
    pipe.rpush(key, json.dumps(verdict.__dict__))
    pipe.expire(key, ANSWER_TTL_S)
    pipe.execute()

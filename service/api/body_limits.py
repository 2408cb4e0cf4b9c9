"""Limits on request bodies: a size cap on those read into memory whole, and an idle timeout on all.

FastAPI reads a route's body into memory before validating it (``POST /uploads``, ``POST
/uploads/{id}/complete``, any JSON), whatever its size and type: a 200 MB ``filename`` took the
API process from 213 to 759 MB before the model refused it.  Media never come that way: multipart
bodies to ``POST /jobs`` and ``POST /previews`` are spooled to disk by ``service.api.uploads`` under
their own limits, and ``PUT /uploads/{id}`` streams to the store, counted against the size the
upload declared.  Every other body is counted as it is received and refused past ``MAX_BODY_BYTES`` with
413 ``upload_too_large``, the same answer a body declared too large by its ``Content-Length`` gets
before anything is read.

Uvicorn bounds a request's headers but not the wait for its body: a client that sent the headers
and a few bytes of a large upload and then nothing held an upload slot for as long as it kept the
connection open (eight such connections kept every ``POST /jobs`` at 503 ``busy``).  So while a
body is incomplete, each wait for its next bytes is bounded by ``body_idle_timeout_s``; past it the
request is refused with 408 ``upload_stalled`` and the route's slot and spool are released.  A client
that drips a byte just inside each wait (a "slow POST") would hold the slot as long, so past that
first wait the body must also average ``body_min_rate_bytes_s`` (as Apache's ``mod_reqtimeout``
asks with ``MinRate``): the deadline for the bytes so far is the idle timeout plus one second for
each ``min_rate`` bytes received.  Once the body is complete, receiving is left alone (a long
download waits on it for the client's disconnect).
"""

from __future__ import annotations

import asyncio
import time

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api import problems
from service.errors import UploadTooLarge

#: Most bytes of a body read whole: far above any JSON this API takes (``POST /jobs`` takes 64 KB).
MAX_BODY_BYTES = 1024 * 1024


#: The routes that read their body a piece at a time, by method and path (``/uploads/{id}``: one
#: segment after ``/uploads``): every other route's body is read whole.
_STREAMING_POSTS = frozenset({"/jobs", "/previews"})


def _streamed(scope: Scope, headers: dict[bytes, bytes]) -> bool:
    """Whether the request goes to a route that streams its body to disk or to the store, not
    one that FastAPI reads whole.  The route is told by its path, not by the body's type alone: a
    multipart body sent to ``POST /uploads`` was taken for a streamed one and read whole, uncapped,
    before the API key was checked (500 MB took the API to 1 GB without a key)."""
    path = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    path = path.rstrip("/")
    if scope["method"] == "PUT":
        parts = path.split("/")
        return len(parts) == 3 and parts[1] == "uploads" and bool(parts[2])
    multipart = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower() == b"multipart/form-data"
    return scope["method"] == "POST" and multipart and path in _STREAMING_POSTS


class BodyLimits:
    """The size cap and the idle timeout of the module doc.  Both are raised inside the route's
    read, where FastAPI passes an ``HTTPException`` on to the app's handlers (problem+json); it turns
    any other error there into a 400."""

    def __init__(self, app: ASGIApp, idle_timeout_s: float, min_rate: int = 0, max_bytes: int = MAX_BODY_BYTES):
        self.app, self.idle_timeout_s, self.min_rate, self.max_bytes = app, idle_timeout_s, min_rate, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        cap = None if _streamed(scope, headers) else self.max_bytes
        too_large = f"the request body exceeds {self.max_bytes} bytes (media go as multipart, by URL or by upload)"
        declared = headers.get(b"content-length", b"")
        if cap is not None and declared.isdigit() and int(declared) > cap:
            await problems.from_error(UploadTooLarge(too_large))(scope, receive, send)
            return
        seen, complete, started = 0, False, time.monotonic()

        async def limited() -> Message:
            nonlocal seen, complete
            if complete:
                return await receive()
            wait = self.idle_timeout_s
            if self.min_rate:  # the deadline the average rate sets for the bytes so far
                wait = min(wait, started + self.idle_timeout_s + seen / self.min_rate - time.monotonic())
            try:
                message = await asyncio.wait_for(receive(), max(wait, 0.0))
            except TimeoutError:
                if wait < self.idle_timeout_s:
                    raise HTTPException(
                        408, f"the request body came at under {self.min_rate} bytes a second on average"
                    ) from None
                raise HTTPException(408, f"no bytes of the request body for {self.idle_timeout_s:g} s") from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True
            seen += len(message.get("body", b""))
            if cap is not None and seen > cap:
                raise HTTPException(413, too_large)
            return message

        await self.app(scope, limited, send)


__all__ = ["MAX_BODY_BYTES", "BodyLimits"]

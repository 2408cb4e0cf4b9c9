"""A cap on the request bodies that are read into memory whole.

FastAPI reads a route's body into memory before validating it (``POST /uploads``, ``POST
/uploads/{id}/complete``, any JSON), whatever its size: a 200 MB ``filename`` took the API process
from 213 to 759 MB before the model refused it.  Media never come that way: multipart bodies
(``POST /jobs``, ``POST /previews``) are spooled to disk by ``service.api.uploads`` under their own
limits, and ``PUT /uploads/{id}`` streams to the store, counted against the size the upload
declared.  Every other body is counted as it is received and refused past ``MAX_BODY_BYTES`` with
413 ``upload_too_large``, the same answer a body declared too large by its ``Content-Length`` gets
before anything is read.
"""

from __future__ import annotations

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api import problems
from service.errors import UploadTooLarge

#: Most bytes of a body read whole: far above any JSON this API takes (``POST /jobs`` takes 64 KB).
MAX_BODY_BYTES = 1024 * 1024


def _streamed(scope: Scope) -> bool:
    """Whether the request's body is streamed to disk by its route, not read whole."""
    if scope["method"] == "PUT":
        return True
    content_type = dict(scope["headers"]).get(b"content-type", b"")
    return content_type.split(b";", 1)[0].strip().lower() == b"multipart/form-data"


class BodyCap:
    """Refuses a body past ``MAX_BODY_BYTES`` on the routes that read it whole (module doc)."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _streamed(scope):
            await self.app(scope, receive, send)
            return
        detail = f"the request body exceeds {self.max_bytes} bytes (media go as multipart, by URL or by upload)"
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await problems.from_error(UploadTooLarge(detail))(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                # raised inside the route's read, where FastAPI passes an HTTPException on to the app's
                # handlers (413, problem+json); it turns any other error there into a 400
                raise HTTPException(413, detail)
            return message

        await self.app(scope, counted, send)


__all__ = ["MAX_BODY_BYTES", "BodyCap"]

"""Every error as RFC 9457 ``application/problem+json`` with a stable ``code``: our own exception
hierarchy, FastAPI's validation errors, Starlette's 404/405, a Redis outage (503
``dependency_unavailable``: never the caller's fault, never a 500) and anything unexpected.
Refusals that pass (503, 429) carry ``Retry-After``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from service.errors import (
    BackdropError,
    DependencyUnavailable,
    MethodNotAllowed,
    RangeNotSatisfiable,
    RequestInvalid,
    RetryLater,
    RouteNotFound,
    Unauthorized,
)

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "urn:backdrop:problem:"
#: Retry-After of a 503 that names no time of its own (a dependency down, storage failing).
DEFAULT_RETRY_AFTER_S = 5


def problem_body(status: int, code: str, title: str, detail: str) -> dict[str, Any]:
    """The members every problem of this API has (the app's answers, and the server's own 400)."""
    return {"type": TYPE_BASE + code, "title": title, "status": status, "detail": detail, "code": code}


def problem(
    status: int, code: str, title: str, detail: str, request: Request | None = None,
    headers: dict[str, str] | None = None, **extra: Any,
) -> JSONResponse:
    body = problem_body(status, code, title, detail)
    if request is not None:
        body["instance"] = request.url.path
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def from_error(err: BackdropError, request: Request | None = None) -> JSONResponse:
    headers: dict[str, str] = {}
    if isinstance(err, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="backdrop"'
    if isinstance(err, RetryLater):
        headers["Retry-After"] = str(err.retry_after_s)
    elif err.status == 503:
        headers["Retry-After"] = str(DEFAULT_RETRY_AFTER_S)
    if isinstance(err, RangeNotSatisfiable):
        headers["Content-Range"] = f"bytes */{err.size}"
    return problem(err.status, err.code, err.title, err.message, request, headers or None)


_HTTP_CODES = {
    404: (RouteNotFound.code, RouteNotFound.title),
    405: (MethodNotAllowed.code, MethodNotAllowed.title),
    408: ("upload_stalled", "Upload stalled"),
    413: ("upload_too_large", "Upload too large"),
    416: ("range_not_satisfiable", "Range not satisfiable"),
}


def install(app: FastAPI) -> None:
    @app.exception_handler(BackdropError)
    async def _backdrop(request: Request, exc: BackdropError) -> JSONResponse:
        if exc.status >= 500:
            log.warning("%s %s: %s (%s)", request.method, request.url.path, exc.message, exc.code)
        return from_error(exc, request)

    @app.exception_handler(RedisError)
    async def _redis(request: Request, exc: RedisError) -> JSONResponse:
        log.warning("%s %s: Redis failed: %r", request.method, request.url.path, exc)
        err = DependencyUnavailable("the job store is unavailable; retry shortly", retry_after_s=DEFAULT_RETRY_AFTER_S)
        return from_error(err, request)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        # nobody reads this answer; it keeps an abandoned upload out of the 500s and the error log
        log.info("%s %s: the client went away before its request was complete", request.method, request.url.path)
        return problem(400, RequestInvalid.code, RequestInvalid.title, "the request was not complete", request)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()
        ]
        detail = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors) or "invalid request"
        return problem(422, RequestInvalid.code, RequestInvalid.title, detail, request, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code, title = _HTTP_CODES.get(exc.status_code, (f"http_{exc.status_code}", "HTTP error"))
        detail = exc.detail if isinstance(exc.detail, str) else title
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route for {request.method} {request.url.path}"
        headers = dict(exc.headers or {})
        if exc.status_code == 503:
            headers.setdefault("Retry-After", str(DEFAULT_RETRY_AFTER_S))
        return problem(exc.status_code, code, title, detail, request, headers or None)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(500, "internal_error", "Internal error", "an unexpected error occurred", request)

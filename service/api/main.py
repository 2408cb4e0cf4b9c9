"""The FastAPI app factory.  ``service.api.main:app`` is what uvicorn serves."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api import problems
from service.api.body_limits import BodyLimits
from service.api.deps import key_digests
from service.api.metrics import JobsCollector
from service.api.routes import account, health, jobs, previews, uploads, web
from service.config import Settings, get_settings, is_loopback
from service.errors import OpenModeRefused
from service.jobs import JobStore
from service.spool import sweep_orphans
from service.storage import S3Store, create_store
from service.workers.celery_app import create_celery

log = logging.getLogger(__name__)


class LoopbackOnly:
    """In open mode (no API keys) answer loopback clients only, whatever address uvicorn was bound
    to: the check reads the connection's peer, not a setting."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] in ("http", "websocket") and not (client and is_loopback(str(client[0]))):
            err = OpenModeRefused("this Backdrop runs in open mode (no API keys) and answers loopback clients only")
            await problems.from_error(err)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    if settings.local_mode and not settings.open_mode:
        raise RuntimeError(
            "no BACKDROP_API_KEYS: set tenant:key pairs, or BACKDROP_OPEN_MODE=true to serve loopback clients "
            "without keys (`backdrop run` does that for you)"
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        objects = app.state.objects
        if isinstance(objects, S3Store):
            try:
                objects.ensure_bucket()
            except Exception:  # noqa: BLE001 - /readyz reports it
                log.warning("bucket %s is not reachable yet", settings.s3_bucket, exc_info=True)
        swept = await run_in_threadpool(sweep_orphans, settings.spool_dir)  # an API process that died left them
        if swept:
            log.warning("removed %d work folders of processes that died", swept)
        yield
        app.state.jobs.r.close()

    app = FastAPI(
        title="Backdrop",
        version="0.1.0",
        summary="Replace the background behind people in videos.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.jobs = JobStore.from_settings(settings)
    app.state.objects = create_store(settings)
    app.state.celery = create_celery(settings)
    app.state.key_digests = key_digests(settings)
    registry = CollectorRegistry()
    registry.register(
        JobsCollector(app.state.jobs, settings.queue_name, app.state.celery, settings.readiness_timeout_s)
    )
    app.state.registry = registry

    app.add_middleware(BodyLimits, idle_timeout_s=settings.body_idle_timeout_s, min_rate=settings.body_min_rate_bytes_s)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
            expose_headers=["Location", "Retry-After", "Idempotent-Replayed"],
        )
    if settings.local_mode:
        app.add_middleware(LoopbackOnly)
    problems.install(app)
    app.include_router(jobs.router)
    app.include_router(uploads.router)
    app.include_router(health.router)
    app.include_router(account.router)
    app.include_router(previews.router)
    app.include_router(web.router)
    app.mount("/static", web.static_files(), name="static")
    return app


app: FastAPI  # service.api.main:app, made by __getattr__ below on first access


def __getattr__(name: str) -> FastAPI:
    """``service.api.main:app`` for uvicorn, made on first access (importing the module for
    ``create_app`` must not read this process's settings)."""
    if name == "app":
        global app
        app = create_app()
        return app
    raise AttributeError(name)

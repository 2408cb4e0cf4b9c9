"""The FastAPI app factory.  ``service.api.main:app`` is what uvicorn serves."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import CollectorRegistry

from service.api import problems
from service.api.deps import key_digests
from service.api.metrics import JobsCollector
from service.api.routes import health, jobs
from service.config import Settings, get_settings
from service.jobs import JobStore
from service.storage import S3Store, create_store
from service.workers.celery_app import create_celery

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        objects = app.state.objects
        if isinstance(objects, S3Store):
            try:
                objects.ensure_bucket()
            except Exception:  # noqa: BLE001 - /readyz reports it
                log.warning("bucket %s is not reachable yet", settings.s3_bucket, exc_info=True)
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
    registry.register(JobsCollector(app.state.jobs, settings.queue_name))
    app.state.registry = registry

    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
            expose_headers=["Location", "Retry-After", "Idempotent-Replayed"],
        )
    problems.install(app)
    app.include_router(jobs.router)
    app.include_router(health.router)
    return app


app = create_app()

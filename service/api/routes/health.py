"""Liveness, readiness and metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.deps import CeleryDep, JobStoreDep, ObjectStoreDep, SettingsDep
from service.api.problems import problem

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def read_health() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


def _checks(jobs: Any, objects: Any, celery: Any, timeout: float) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        jobs.ping()
        out["redis"] = "ok"
    except Exception as e:  # noqa: BLE001
        out["redis"] = f"error: {type(e).__name__}"
    try:
        objects.check()
        out["storage"] = "ok"
    except Exception as e:  # noqa: BLE001
        out["storage"] = f"error: {getattr(e, 'message', type(e).__name__)}"
    if out["redis"] != "ok":
        out["workers"] = "error: broker unreachable"
        return out
    try:
        replies = celery.control.ping(timeout=timeout) or []
        out["workers"] = f"ok ({len(replies)})" if replies else "error: no worker answered"
    except Exception as e:  # noqa: BLE001
        out["workers"] = f"error: {type(e).__name__}"
    return out


@router.get("/readyz", responses={503: {"description": "not_ready"}})
async def read_readiness(
    request: Request, settings: SettingsDep, jobs: JobStoreDep, objects: ObjectStoreDep, celery: CeleryDep
) -> Any:
    """Readiness: Redis, the object store and at least one Celery worker answer."""
    checks = await run_in_threadpool(_checks, jobs, objects, celery, settings.readiness_timeout_s)
    if all(v.startswith("ok") for v in checks.values()):
        return {"status": "ok", "checks": checks}
    failed = ", ".join(f"{k} ({v})" for k, v in checks.items() if not v.startswith("ok"))
    return problem(503, "not_ready", "Service not ready", f"not ready: {failed}", request, checks=checks)


@router.get("/metrics", response_class=Response)
async def read_metrics(request: Request) -> Response:
    """Prometheus metrics: jobs by status, queue depth, processing seconds, frames per second."""
    data = await run_in_threadpool(generate_latest, request.app.state.registry)
    return Response(data, media_type=CONTENT_TYPE_LATEST)

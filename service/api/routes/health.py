"""Liveness, readiness and metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.deps import CeleryDep, JobStoreDep, ObjectStoreDep, SettingsDep
from service.api.metrics import count_workers
from service.api.problems import problem

router = APIRouter(tags=["health"])


@router.head("/healthz", include_in_schema=False)
@router.get("/healthz")
async def read_health() -> dict[str, str]:
    """Liveness: the process answers (to HEAD too, as uptime monitors ask)."""
    return {"status": "ok"}


def _checks(jobs: Any, objects: Any, celery: Any, timeout: float) -> tuple[dict[str, str], int | None]:
    """What this API process needs to serve (Redis, the object store), and how many workers answer
    (None when that could not be asked)."""
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
    workers = None
    if out["redis"] == "ok":
        try:
            workers = count_workers(celery, timeout)
        except Exception:  # noqa: BLE001 - reported as unknown
            workers = None
    return out, workers


@router.head("/readyz", include_in_schema=False)
@router.get("/readyz", responses={503: {"description": "not_ready"}})
async def read_readiness(
    request: Request, settings: SettingsDep, jobs: JobStoreDep, objects: ObjectStoreDep, celery: CeleryDep
) -> Any:
    """Readiness of this API process: Redis and the object store answer.  The number of workers that
    answer a ping is reported (``workers``) but is no reason to take the API out of service: jobs
    wait in the queue while workers roll over."""
    checks, workers = await run_in_threadpool(_checks, jobs, objects, celery, settings.readiness_timeout_s)
    if all(v == "ok" for v in checks.values()):
        return {"status": "ok", "checks": checks, "workers": workers}
    failed = ", ".join(f"{k} ({v})" for k, v in checks.items() if v != "ok")
    return problem(503, "not_ready", "Service not ready", f"not ready: {failed}", request, checks=checks,
                   workers=workers, headers={"Retry-After": "5"})


@router.get("/metrics", response_class=Response)
async def read_metrics(request: Request) -> Response:
    """Prometheus metrics: jobs by status, queue depth, processing seconds, frames per second."""
    data = await run_in_threadpool(generate_latest, request.app.state.registry)
    return Response(data, media_type=CONTENT_TYPE_LATEST)

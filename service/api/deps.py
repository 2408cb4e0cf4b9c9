"""``Annotated`` dependencies: settings, the caller (from the API key), the stores, Celery."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated, Any

from celery import Celery
from fastapi import Depends, Request

from service.config import Settings
from service.errors import Unauthorized
from service.jobs import JobStore


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_job_store(request: Request) -> JobStore:
    return request.app.state.jobs  # type: ignore[no-any-return]


def get_object_store(request: Request) -> Any:
    return request.app.state.objects


def get_celery(request: Request) -> Celery:
    return request.app.state.celery  # type: ignore[no-any-return]


def key_digests(settings: Settings) -> list[tuple[bytes, str]]:
    """(SHA-256 of the key, tenant) for every configured key."""
    return [(hashlib.sha256(key.encode()).digest(), tenant) for key, tenant in settings.tenant_keys.items()]


def get_owner(request: Request) -> str:
    """The caller's tenant id, which owns its jobs (so a rotated key keeps them).  Keys are compared
    as SHA-256 digests, in constant time, against every configured key (no early exit); in open mode
    everyone is ``local``."""
    settings: Settings = request.app.state.settings
    if settings.local_mode:
        return "local"
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("send 'Authorization: Bearer <API key>'")
    digest = hashlib.sha256(token.encode()).digest()
    tenant = None
    for known, name in request.app.state.key_digests:
        if hmac.compare_digest(digest, known):
            tenant = name
    if tenant is None:
        raise Unauthorized("invalid API key")
    return tenant


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
JobStoreDep = Annotated[JobStore, Depends(get_job_store)]
ObjectStoreDep = Annotated[Any, Depends(get_object_store)]
CeleryDep = Annotated[Celery, Depends(get_celery)]
ApiKeyDep = Annotated[str, Depends(get_owner)]

"""``Annotated`` dependencies: settings, the caller (from the API key), the stores, Celery."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated, Any

from celery import Celery
from fastapi import Depends, Request

from service.config import Settings
from service.errors import Unauthorized
from service.jobs import JobStore, owner_of


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_job_store(request: Request) -> JobStore:
    return request.app.state.jobs  # type: ignore[no-any-return]


def get_object_store(request: Request) -> Any:
    return request.app.state.objects


def get_celery(request: Request) -> Celery:
    return request.app.state.celery  # type: ignore[no-any-return]


def key_digests(settings: Settings) -> list[bytes]:
    return [hashlib.sha256(k.get_secret_value().encode()).digest() for k in settings.api_keys]


def get_owner(request: Request) -> str:
    """The caller's owner id.  Keys are compared as SHA-256 digests, in constant time, against
    every configured key (no early exit); in local open mode everyone is ``local``."""
    settings: Settings = request.app.state.settings
    if settings.local_mode:
        return "local"
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("send 'Authorization: Bearer <API key>'")
    digest = hashlib.sha256(token.encode()).digest()
    ok = False
    for known in request.app.state.key_digests:
        ok |= hmac.compare_digest(digest, known)
    if not ok:
        raise Unauthorized("invalid API key")
    return owner_of(token)


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
JobStoreDep = Annotated[JobStore, Depends(get_job_store)]
ObjectStoreDep = Annotated[Any, Depends(get_object_store)]
CeleryDep = Annotated[Celery, Depends(get_celery)]
ApiKeyDep = Annotated[str, Depends(get_owner)]

"""``/account``: who the caller is to this service, and the secret its callbacks are signed with."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from service.api.deps import ApiKeyDep, SettingsDep

router = APIRouter(prefix="/account", tags=["account"])


class AccountPublic(BaseModel):
    tenant: str = Field(description="The tenant the API key belongs to; it owns the jobs (keys can be rotated)")
    webhook_secret: str = Field(description="HMAC-SHA256 key of this tenant's callback signatures")


@router.get("", response_model=AccountPublic)
async def read_account(tenant: ApiKeyDep, settings: SettingsDep) -> dict[str, Any]:
    """The caller's tenant and its callback signing secret (each tenant has its own)."""
    from service.webhooks import tenant_webhook_secret

    return {"tenant": tenant, "webhook_secret": tenant_webhook_secret(tenant, settings)}

"""The web page at ``/`` (static HTML, CSS and JS from ``service/web``, no build step) and
``GET /limits``, what the page states before an upload and what any client may read.

The page calls the same JSON API as any other client (``/jobs``, ``/previews``); it is served with
a strict Content-Security-Policy: its own scripts and styles only, pictures and videos from blob:
URLs or the object store's presigned URLs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from starlette.staticfiles import StaticFiles

from service.api.deps import SettingsDep
from service.options import COMPOSITORS, MODEL_NAMES, OUTPUT_FORMATS

WEB_DIR = Path(__file__).resolve().parents[2] / "web"

router = APIRouter(tags=["web"])

#: img/media from anywhere over http(s): results and previews on S3 are presigned URLs elsewhere.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data: http: https:; "
    "media-src 'self' blob: http: https:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class LimitsPublic(BaseModel):
    max_upload_bytes: int = Field(description="Largest upload (video or background), bytes")
    max_duration_s: float = Field(description="Longest video, seconds")
    max_width: int
    max_height: int
    max_pixels: int = Field(description="Most pixels per frame")
    max_frames: int
    max_background_pixels: int = Field(description="Most pixels in a still background image")
    auth: str = Field(description="'key': send Authorization: Bearer <key>; 'open': no key (loopback only)")
    default_model: str
    models: list[str]
    output_formats: list[str]
    compositors: list[str]
    preview_ttl_s: int


@router.get("/limits", response_model=LimitsPublic)
async def read_limits(settings: SettingsDep) -> dict[str, Any]:
    """The limits on uploads and the choices a job has; public, so a page can show them before a key is given."""
    return {
        "max_upload_bytes": settings.max_upload_bytes,
        "max_duration_s": settings.max_duration_s,
        "max_width": settings.max_width,
        "max_height": settings.max_height,
        "max_pixels": settings.max_pixels,
        "max_frames": settings.max_frames,
        "max_background_pixels": settings.max_background_pixels,
        "auth": "open" if settings.local_mode else "key",
        "default_model": settings.model,
        "models": list(MODEL_NAMES),
        "output_formats": list(OUTPUT_FORMATS),
        "compositors": list(COMPOSITORS),
        "preview_ttl_s": settings.preview_ttl_s,
    }


@router.get("/", include_in_schema=False)
async def read_page() -> FileResponse:
    """The web page."""
    return FileResponse(WEB_DIR / "index.html", media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


class _Static(StaticFiles):
    """The page's files, with the page's security headers."""

    async def get_response(self, path: str, scope: Any) -> Any:
        response = await super().get_response(path, scope)
        for k, v in PAGE_HEADERS.items():
            response.headers.setdefault(k, v)
        return response


def static_files() -> StaticFiles:
    """Mounted at ``/static`` by the app factory (a mount cannot live in an APIRouter)."""
    return _Static(directory=WEB_DIR, check_dir=True)

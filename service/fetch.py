"""Inputs by URL (``video_url``, ``background_url``): judged by the API, fetched by the worker.

Both go through the webhooks' address guard (``service.webhooks``): the host is resolved once,
every address judged (private, loopback, link-local and metadata ranges refused in every IPv6
encoding, unless ``fetch_allow_private``), and the connection made to the address that was checked.
Redirects are followed here, at most ``MAX_REDIRECTS``, each hop judged again, so a redirect to
an internal address is refused like the URL itself.  The body is capped at ``max_upload_bytes``
(counted after decompression), each connect and read is bounded by ``fetch_timeout_s``, and the
whole transfer by ``fetch_deadline_s`` (a server that drips a byte at a time cannot hold a worker).

Errors carry their codes: ``fetch_refused``, ``fetch_failed`` (with the upstream status),
``fetch_too_large`` and ``fetch_timeout``.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from service.config import Settings
from service.errors import FetchFailed, FetchRefused, FetchTimeout, FetchTooLarge, UploadTooLarge
from service.webhooks import check_url, pinned_stream, read_capped

MAX_REDIRECTS = 3
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def check_fetch_url(url: str, settings: Settings) -> str:
    """``url`` if the worker may fetch it (http(s), no credentials, every address public unless
    ``fetch_allow_private``); ``FetchRefused`` otherwise.  Nothing is connected to."""
    return check_url(url, settings, allow_private=settings.fetch_allow_private, refuse=FetchRefused)


def url_suffix(url: str) -> str:
    """The file suffix the URL's path names (``.mp4``), or ``""``: FFmpeg and the header readers
    go by the bytes, the suffix only helps a human reading the work folder."""
    try:
        suffix = Path(httpx.URL(url).path).suffix.lower()
    except (httpx.InvalidURL, ValueError):
        return ""
    return suffix if 1 < len(suffix) <= 6 and suffix[1:].isalnum() else ""


class _DeadlineSink:
    """A file that refuses to be written past a moment (the total deadline of one fetch)."""

    def __init__(self, path: Path, deadline: float, url: str):
        self.fh = open(path, "wb")  # noqa: SIM115 - closed by fetch_to_file
        self.deadline, self.url = deadline, url

    def write(self, chunk: bytes) -> int:
        if time.monotonic() > self.deadline:
            raise FetchTimeout(f"fetching {self.url[:200]} took longer than allowed")
        return self.fh.write(chunk)


def fetch_to_file(url: str, dest: Path, settings: Settings, *, max_bytes: int | None = None) -> int:
    """Fetch ``url`` into ``dest`` (see module doc); returns the size in bytes."""
    cap = settings.max_upload_bytes if max_bytes is None else max_bytes
    deadline = time.monotonic() + settings.fetch_deadline_s
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        try:
            with pinned_stream(
                "GET", current, settings, timeout_s=settings.fetch_timeout_s,
                headers={"User-Agent": "backdrop-fetch/1", "Accept-Encoding": "identity"},
                allow_private=settings.fetch_allow_private, refuse=FetchRefused,
            ) as response:
                status = response.status_code
                if status in _REDIRECTS and response.headers.get("location"):
                    current = str(httpx.URL(current).join(response.headers["location"]))
                    continue
                if not 200 <= status < 300:
                    raise FetchFailed(
                        f"{_host(current)} answered HTTP {status} for the input URL", upstream_status=status
                    )
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > cap:
                    raise FetchTooLarge(f"the input URL's body ({declared} bytes) exceeds {cap} bytes")
                sink = _DeadlineSink(dest, deadline, current)
                try:
                    read_capped(response, cap, sink)  # type: ignore[arg-type]
                finally:
                    sink.fh.close()
                return dest.stat().st_size
        except UploadTooLarge:
            raise FetchTooLarge(f"the input URL's body exceeds {cap} bytes") from None
        except httpx.TimeoutException as e:
            raise FetchTimeout(f"fetching the input URL timed out ({type(e).__name__})") from None
        except httpx.HTTPError as e:
            raise FetchFailed(f"fetching the input URL failed: {type(e).__name__}: {e}"[:500]) from None
    raise FetchFailed(f"the input URL redirected more than {MAX_REDIRECTS} times")


def _host(url: str) -> str:
    try:
        return httpx.URL(url).host or "the server"
    except (httpx.InvalidURL, ValueError):
        return "the server"

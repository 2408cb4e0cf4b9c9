"""Completion callbacks: an address allow-list, HMAC-SHA256 signatures, one delivery attempt.

The signature covers ``{timestamp}.{body}`` and travels as ``Backdrop-Signature: t=<unix>,v1=<hex>``
(the scheme Stripe uses), so a receiver can refuse stale or replayed deliveries.  Retries with
backoff are the worker's job (``service.workers.tasks.deliver_webhook``): one attempt here.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
import time
from urllib.parse import urlsplit

import httpx

from service.config import Settings, get_settings
from service.errors import CallbackRefused

SIGNATURE_HEADER = "Backdrop-Signature"


def _addresses(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise CallbackRefused(f"callback host {host!r} does not resolve") from e
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


def check_callback_url(url: str, settings: Settings | None = None) -> str:
    """``url`` if it is an http(s) URL whose host resolves only to public addresses (or private
    ones are allowed by settings); ``CallbackRefused`` otherwise."""
    settings = settings or get_settings()
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as e:
        raise CallbackRefused(f"callback URL {url!r} is not a valid URL") from e
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CallbackRefused("callback URL must be an absolute http(s) URL")
    if parts.username or parts.password:
        raise CallbackRefused("callback URL must not carry credentials")
    if len(url) > 2048:
        raise CallbackRefused("callback URL too long")
    if settings.webhook_allow_private:
        return url
    for addr in _addresses(parts.hostname, port):
        if not addr.is_global or addr.is_multicast:
            raise CallbackRefused(
                f"callback URL resolves to a non-public address ({addr}); "
                "set BACKDROP_WEBHOOK_ALLOW_PRIVATE=true to allow it"
            )
    return url


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, header: str, body: bytes, *, tolerance_s: float = 300, now: float | None = None) -> bool:
    """True when ``header`` is a valid signature of ``body`` made within ``tolerance_s``."""
    try:
        fields = dict(item.split("=", 1) for item in header.split(","))
        ts = int(fields["t"])
    except (ValueError, KeyError):
        return False
    now = time.time() if now is None else now
    if abs(now - ts) > tolerance_s:
        return False
    expected = sign(secret, ts, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, fields.get("v1", ""))


def deliver_once(url: str, body: bytes, event: str, settings: Settings | None = None) -> int:
    """POST ``body`` to ``url`` once, signed.  Returns the HTTP status; raises httpx errors."""
    settings = settings or get_settings()
    check_callback_url(url, settings)  # again: DNS may have changed since the job was accepted
    ts = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "backdrop-webhook/1",
        "Backdrop-Event": event,
        SIGNATURE_HEADER: sign(settings.webhook_secret.get_secret_value(), ts, body),
    }
    with httpx.Client(timeout=settings.webhook_timeout_s, follow_redirects=False, trust_env=False) as client:
        return client.post(url, content=body, headers=headers).status_code

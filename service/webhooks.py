"""Completion callbacks: an address guard, per-tenant HMAC-SHA256 signatures, one delivery attempt.

The signature covers ``{timestamp}.{body}`` and travels as ``Backdrop-Signature: t=<unix>,v1=<hex>``
(the scheme Stripe uses), so a receiver can refuse stale or replayed deliveries.  Each tenant signs
with its own secret, derived from the master ``webhook_secret`` (``tenant_webhook_secret``), so one
tenant's receiver cannot forge callbacks to another's.  Retries with backoff are the worker's job
(``service.workers.tasks.deliver_webhook``): one attempt here.

Outgoing requests to client-chosen URLs go through ``pinned_stream``: the host is resolved once,
every address is judged (``is_public_address``), and the connection goes to a checked address with
the original Host header and TLS server name, so a DNS answer that changes between the check and
the connection (DNS rebinding) cannot point a request at an internal service.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
import ssl
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from ipaddress import IPv4Address, IPv6Address
from typing import BinaryIO

import httpx

from service.config import Settings, get_settings
from service.errors import CallbackRefused, InputError, UploadTooLarge

SIGNATURE_HEADER = "Backdrop-Signature"
MAX_URL_CHARS = 2048

_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated ::a.b.c.d
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # well-known NAT64 prefix: the last 32 bits are the destination
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # local-use NAT64 (RFC 8215): translated inside a network


def is_public_address(addr: IPv4Address | IPv6Address) -> bool:
    """True when a request to ``addr`` may only reach the public internet.

    IPv6 can carry an IPv4 address that a translator or tunnel will deliver to: IPv4-mapped
    (``::ffff:a.b.c.d``), IPv4-compatible (``::a.b.c.d``), NAT64 (``64:ff9b::/96``, and the
    local-use ``64:ff9b:1::/48``), 6to4 (``2002::/16``, bits 16-47) and Teredo (``2001::/32``: server
    and bitwise-NOT client).  Each embedded IPv4 is judged as well as the IPv6 itself, so
    ``[64:ff9b::a9fe:a9fe]`` (169.254.169.254, the cloud metadata service) or ``[::127.0.0.1]`` is
    refused.  The well-known NAT64 prefix is globally routed (DNS64 resolvers return it for
    IPv4-only hosts), so there only the embedded address decides.
    """
    if isinstance(addr, IPv6Address):
        embedded = [addr.ipv4_mapped, addr.sixtofour, *(addr.teredo or ())]
        if addr in _IPV4_COMPATIBLE or addr in _NAT64 or addr in _NAT64_LOCAL:
            embedded.append(IPv4Address(int(addr) & 0xFFFF_FFFF))
        if not all(is_public_address(v4) for v4 in embedded if v4 is not None):
            return False
        if addr in _NAT64:
            return True
        if addr in _NAT64_LOCAL or addr.is_site_local:
            return False
    return addr.is_global and not (
        addr.is_multicast or addr.is_unspecified or addr.is_reserved or addr.is_loopback
        or addr.is_link_local or addr.is_private
    )


def _what(refuse: type[InputError]) -> str:
    return "callback URL" if refuse is CallbackRefused else "input URL"


def _target(url: str, refuse: type[InputError] = CallbackRefused) -> httpx.URL:
    """``url`` parsed by the same parser that sends the request (no parser differential)."""
    what = _what(refuse)
    if len(url) > MAX_URL_CHARS:
        raise refuse(f"{what} too long")
    try:
        target = httpx.URL(url)
        host = target.host  # decodes an IDNA host: a malformed A-label ("xn--") raises here, not in the parse
    except (httpx.InvalidURL, TypeError, ValueError) as e:
        raise refuse(f"{what} {url[:200]!r} is not a valid URL") from e
    if target.scheme not in ("http", "https") or not host:
        raise refuse(f"{what} must be an absolute http(s) URL")
    if target.userinfo:
        raise refuse(f"{what} must not carry credentials")
    if target.port is not None and not 0 < target.port < 65536:
        raise refuse(f"{what} names port {target.port}, which no host has")  # httpx parses up to 2**32
    return target


def _checked_addresses(
    target: httpx.URL, settings: Settings, allow_private: bool | None = None,
    refuse: type[InputError] = CallbackRefused,
) -> list[IPv4Address | IPv6Address]:
    """The addresses ``target``'s host resolves to (one lookup), all judged; refused (``refuse``)
    if any is not public, unless ``allow_private`` (default: ``webhook_allow_private``; input URLs
    pass ``fetch_allow_private``)."""
    what = _what(refuse)
    if allow_private is None:
        allow_private = settings.webhook_allow_private
    host = target.raw_host.decode("ascii")
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as e:
            raise refuse(f"{what} host {host!r} does not resolve") from e
        # zone ids (fe80::1%eth0) are dropped: link-local is refused, and a URL cannot carry one
        addresses = list(dict.fromkeys(ipaddress.ip_address(str(i[4][0]).split("%")[0]) for i in infos))
    if not addresses:
        raise refuse(f"{what} host {host!r} does not resolve")
    if not allow_private:
        switch = "WEBHOOK" if refuse is CallbackRefused else "FETCH"
        for addr in addresses:
            if not is_public_address(addr):
                raise refuse(
                    f"{what} resolves to a non-public address ({addr}); "
                    f"set BACKDROP_{switch}_ALLOW_PRIVATE=true to allow it"
                )
    return addresses


def check_url(
    url: str, settings: Settings, *, allow_private: bool | None = None, refuse: type[InputError] = CallbackRefused
) -> str:
    """``url`` if it is an http(s) URL without credentials whose host resolves only to public
    addresses (or ``allow_private``); ``refuse`` otherwise.  Nothing is connected to: the API calls
    this to refuse a job early, and whoever connects later checks again (``pinned_stream``)."""
    _checked_addresses(_target(url, refuse), settings, allow_private, refuse)
    return url


def check_callback_url(url: str, settings: Settings | None = None) -> str:
    """``check_url`` for a callback (``webhook_allow_private``, ``CallbackRefused``)."""
    return check_url(url, settings or get_settings())


@contextmanager
def pinned_stream(
    method: str,
    url: str,
    settings: Settings,
    *,
    timeout_s: float,
    headers: Mapping[str, str] | None = None,
    content: bytes | None = None,
    verify: ssl.SSLContext | bool = True,
    allow_private: bool | None = None,
    refuse: type[InputError] = CallbackRefused,
) -> Iterator[httpx.Response]:
    """One request to ``url``, connected to an address checked by ``_checked_addresses`` (resolved
    once: no second lookup that a rebinding DNS server could answer differently).  The Host header
    and the TLS server name (SNI, and the name the certificate is verified against) stay the URL's
    host.  Redirects are not followed; ``timeout_s`` bounds each connect, read and write.  Yields the
    response with its body unread: read it with ``read_capped``.  ``verify`` is httpx's (an
    ``ssl.SSLContext`` for a private CA).  ``allow_private`` and ``refuse`` say which switch applies
    and what a refusal raises (webhooks: ``webhook_allow_private``, ``CallbackRefused``; input URLs:
    ``fetch_allow_private``, ``FetchRefused``).  Raises ``refuse`` or ``httpx.HTTPError``."""
    target = _target(url, refuse)
    addresses = _checked_addresses(target, settings, allow_private, refuse)
    host_header = target.netloc.decode("ascii")
    extensions = {}
    if not _is_ip(target.host):
        extensions["sni_hostname"] = target.raw_host.decode("ascii")
    with httpx.Client(timeout=timeout_s, follow_redirects=False, trust_env=False, verify=verify) as client:
        for i, addr in enumerate(addresses):
            request = client.build_request(
                method, target.copy_with(host=str(addr)), headers={**(headers or {}), "Host": host_header},
                content=content, extensions=extensions,
            )
            try:
                response = client.send(request, stream=True)
            except httpx.ConnectError:
                if i == len(addresses) - 1:
                    raise
                continue  # another checked address of the same host (e.g. IPv4 after IPv6)
            try:
                yield response
            finally:
                response.close()
            return


def read_capped(response: httpx.Response, max_bytes: int, sink: BinaryIO | None = None) -> bytes:
    """The (decoded) body of a streamed ``response``, at most ``max_bytes`` (counted after
    decompression, so a compressed bomb stops early); written to ``sink`` instead when one is given
    (then ``b""`` is returned).  ``UploadTooLarge`` past the cap."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > max_bytes:
            host = response.request.headers.get("Host")
            raise UploadTooLarge(f"the answer from {host} is larger than {max_bytes} bytes")
        if sink is not None:
            sink.write(chunk)
        else:
            chunks.append(chunk)
    return b"".join(chunks)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def tenant_webhook_secret(tenant_id: str, settings: Settings | None = None) -> str:
    """The secret ``tenant_id``'s callbacks are signed with: HMAC-SHA256(master ``webhook_secret``,
    ``"webhook:" + tenant_id``) in hex.  Derived, not stored: nothing to provision per tenant, and
    rotating the master rotates every tenant's secret."""
    settings = settings or get_settings()
    master = settings.webhook_secret.get_secret_value().encode()
    return hmac.new(master, f"webhook:{tenant_id}".encode(), hashlib.sha256).hexdigest()


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


def deliver_once(url: str, body: bytes, event: str, settings: Settings | None = None, *, tenant: str) -> int:
    """POST ``body`` to ``url`` once, signed with ``tenant``'s secret, through the address guard
    (checked again here: DNS may have changed since the job was accepted).  Returns the HTTP
    status; the answer's body is not read.  Raises ``CallbackRefused`` or httpx errors."""
    settings = settings or get_settings()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "backdrop-webhook/1",
        "Backdrop-Event": event,
        SIGNATURE_HEADER: sign(tenant_webhook_secret(tenant, settings), int(time.time()), body),
    }
    with pinned_stream("POST", url, settings, timeout_s=settings.webhook_timeout_s, headers=headers, content=body) as r:
        return r.status_code

"""Callback signatures (one secret per tenant), the address guard (encoded IPv4 forms, DNS
rebinding, pinned connections with the original Host and TLS name) and deliveries to receivers on
this machine.

Names are resolved by a fake DNS (``socket.getaddrinfo`` patched in-process): it stands for the
DNS server a rebinding attacker controls.  IP literals go to the real resolver, and every connection
is a real one to a receiver on 127.0.0.1 or 127.0.0.2; no test reaches another machine.
"""

from __future__ import annotations

import datetime
import io
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.config import Settings
from service.errors import CallbackRefused, UploadTooLarge
from service.webhooks import (
    SIGNATURE_HEADER,
    check_callback_url,
    deliver_once,
    pinned_stream,
    read_capped,
    sign,
    tenant_webhook_secret,
    verify,
)

PUBLIC = "93.184.216.34"  # a global address: only ever judged here, never connected to


class Receiver(ThreadingHTTPServer):
    """An HTTP(S) receiver on this machine that records every request it gets."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, status: int = 204,
                 headers: dict[str, str] | None = None, body: bytes = b"") -> None:
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self._record(self.rfile.read(int(self.headers.get("Content-Length", 0))))

            def do_GET(self) -> None:  # noqa: N802
                self._record(b"")

            def _record(self, data: bytes) -> None:
                outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": data})
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a: object) -> None:
                pass

        super().__init__((host, port), Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


class Listener:
    """A bare TCP listener: tells whether any connection reached it (accepted or waiting in the
    backlog), without speaking HTTP."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sock = socket.socket()
        self.sock.bind((host, port))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]

    def reached(self) -> bool:
        self.sock.settimeout(0.5)
        try:
            conn, _ = self.sock.accept()
        except TimeoutError:
            return False
        conn.close()
        return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[dict[str, list[list[str]]], list[str]]]:
    """``answers[name]``: the address lists the fake DNS gives for ``name``, one per lookup (the
    last one repeats); ``lookups``: every name looked up."""
    real = socket.getaddrinfo
    answers: dict[str, list[list[str]]] = {}
    lookups: list[str] = []

    def fake(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in answers:
            return real(host, port, *args, **kwargs)
        lookups.append(name)
        queue = answers[name]
        ips = queue.pop(0) if len(queue) > 1 else queue[0]
        return [info for ip in ips for info in real(ip, port, *args, **kwargs)]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    yield answers, lookups


def test_sign_and_verify() -> None:
    body = b'{"id":"x"}'
    header = sign("s3cret", 1_700_000_000, body)
    assert verify("s3cret", header, body, now=1_700_000_010)
    assert not verify("other", header, body, now=1_700_000_010)
    assert not verify("s3cret", header, body + b" ", now=1_700_000_010)
    assert not verify("s3cret", header, body, now=1_700_009_999)  # stale
    assert not verify("s3cret", "garbage", body)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/x", "http://localhost/x", "http://10.1.2.3/", "http://169.254.169.254/latest",
        "http://[::1]/", "http://192.168.0.1/", "http://100.64.0.1/", "http://0.0.0.0/", "http://[::]/",
        "http://[fe80::1]/", "http://[fc00::1]/", "http://[fec0::1]/", "http://[ff02::1]/", "http://224.0.0.1/",
        # IPv4 embedded in IPv6: mapped, compatible, NAT64 (well-known and local-use), 6to4, Teredo
        "http://[::ffff:127.0.0.1]/", "http://[::ffff:a9fe:a9fe]/", "http://[::127.0.0.1]/",
        "http://[::a9fe:a9fe]/", "http://[64:ff9b::a9fe:a9fe]/", "http://[64:ff9b::7f00:1]/",
        "http://[64:ff9b:1::a9fe:a9fe]/", "http://[64:ff9b:1::5db8:d822]/", "http://[2002:7f00:1::1]/",
        "http://[2002:a9fe:a9fe::]/",
        "http://[2001:0:4136:e378:8000:63bf:80ff:fefe]/",  # Teredo, client ~0x80fffefe = 127.0.0.1
        # IPv4 spelt in decimal, hex or octal (the resolver reads them as 127.0.0.1)
        "http://2130706433/", "http://0x7f.1/", "http://017700000001/", "http://0177.0.0.1/",
        "ftp://example.com/", "http://user:pw@example.com/", "not a url", "http:///x",
        "http://xn--/", "https://xn--zz-/", "http://xn--a.com/",  # malformed IDNA A-labels
        "http://" + "a" * 2100 + ".com/",
        "http://93.184.216.34:99999/x", "https://93.184.216.34:0/x",  # ports no host has (httpx parses them)
    ],
)
def test_private_encoded_and_odd_urls_are_refused(url: str) -> None:
    with pytest.raises(CallbackRefused) as e:
        check_callback_url(url, Settings())
    assert e.value.code == "callback_refused"


@pytest.mark.parametrize(
    "url",
    ["https://93.184.216.34/hook", "http://[2606:4700:4700::1111]/",
     "http://[64:ff9b::5db8:d822]/",  # NAT64 (DNS64) of a public IPv4: allowed, only the IPv4 decides
     "http://[2002:5db8:d822::1]/"],  # 6to4 of a public IPv4
)
def test_public_addresses_are_accepted(url: str) -> None:
    assert check_callback_url(url, Settings()) == url  # judged only: nothing is connected to


def test_private_allowed_by_setting() -> None:
    assert check_callback_url("http://127.0.0.1:9/x", Settings(webhook_allow_private=True))


def test_name_resolving_to_any_private_address_is_refused(dns: Any) -> None:
    answers, _ = dns
    answers["mixed.test"] = [[PUBLIC, "10.0.0.7"]]
    with pytest.raises(CallbackRefused, match="10.0.0.7"):
        check_callback_url("http://mixed.test/hook", Settings())


def test_dns_rebinding_is_refused_and_nothing_connects(dns: Any) -> None:
    """Public when the API checks the URL, 127.0.0.1 when the worker delivers: refused, and no
    connection reaches the receiver listening on 127.0.0.1."""
    answers, lookups = dns
    receiver = Listener("127.0.0.1")
    try:
        url = f"http://rebind.test:{receiver.port}/hook"
        answers["rebind.test"] = [[PUBLIC], ["127.0.0.1"]]
        assert check_callback_url(url, Settings()) == url
        with pytest.raises(CallbackRefused, match="127.0.0.1"):
            deliver_once(url, b"{}", "job.succeeded", Settings(), tenant="alice")
        assert lookups == ["rebind.test", "rebind.test"]
        assert not receiver.reached()
    finally:
        receiver.close()


def test_delivery_connects_to_the_checked_address_with_its_host_header(dns: Any) -> None:
    """The name is resolved once: a second lookup would answer 127.0.0.2, where a listener waits on
    the same port; the delivery reaches 127.0.0.1 (the checked address) with the original Host."""
    answers, lookups = dns
    with Receiver("127.0.0.1") as checked:
        port = checked.server_address[1]
        other = Listener("127.0.0.2", port)
        try:
            answers["hook.test"] = [["127.0.0.1"], ["127.0.0.2"]]
            settings = Settings(webhook_allow_private=True)
            status = deliver_once(f"http://hook.test:{port}/cb?x=1", b'{"id":"j1"}', "job.failed", settings,
                                  tenant="alice")
            assert status == 204
            assert lookups == ["hook.test"]
            (req,) = checked.requests
            assert req["headers"]["Host"] == f"hook.test:{port}" and req["path"] == "/cb?x=1"
            assert req["headers"]["Backdrop-Event"] == "job.failed" and req["body"] == b'{"id":"j1"}'
            assert not other.reached()
        finally:
            other.close()


def test_redirects_are_not_followed() -> None:
    elsewhere = Listener("127.0.0.1")
    try:
        with Receiver(status=302, headers={"Location": f"http://127.0.0.1:{elsewhere.port}/"}) as r:
            url = f"http://127.0.0.1:{r.server_address[1]}/hook"
            assert deliver_once(url, b"{}", "job.succeeded", Settings(webhook_allow_private=True), tenant="a") == 302
        assert not elsewhere.reached()
    finally:
        elsewhere.close()


def _tls_contexts(tmp_path: Path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context with a certificate for ``name``, client context trusting its test CA)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def cert(subject: str, key: Any, issuer: str, issuer_key: Any, ca: bool) -> x509.Certificate:
        b = (x509.CertificateBuilder()
             .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
             .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(hours=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                            critical=False))
        if ca:
            b = b.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), True)
        else:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = cert("backdrop test CA", ca_key, "backdrop test CA", ca_key, True)
    leaf = cert(name, leaf_key, "backdrop test CA", ca_key, False)
    pem = serialization.Encoding.PEM
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(pem))
    (tmp_path / "leaf.key").write_bytes(leaf_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "leaf.pem", tmp_path / "leaf.key")
    client = ssl.create_default_context(cadata=ca.public_bytes(pem).decode())
    return server, client


def test_tls_keeps_the_server_name_and_verifies_the_original_host(dns: Any, tmp_path: Path) -> None:
    """Connected to the pinned 127.0.0.1, the TLS handshake names ``hook.test`` (SNI) and the
    certificate is checked against it: a certificate for ``hook.test`` passes; the same receiver
    reached as ``other.test`` fails verification."""
    answers, _ = dns
    answers["hook.test"] = answers["other.test"] = [["127.0.0.1"]]
    server_ctx, client_ctx = _tls_contexts(tmp_path, "hook.test")
    seen_sni: list[str | None] = []
    server_ctx.sni_callback = lambda sock, server_name, ctx: seen_sni.append(server_name)  # type: ignore[assignment,misc,return-value]
    settings = Settings(webhook_allow_private=True)
    with Receiver(status=200, body=b"ok") as r:
        r.socket = server_ctx.wrap_socket(r.socket, server_side=True)
        port = r.server_address[1]
        with pinned_stream("GET", f"https://hook.test:{port}/x", settings, timeout_s=5, verify=client_ctx) as resp:
            assert resp.status_code == 200 and read_capped(resp, 100) == b"ok"
        assert seen_sni == ["hook.test"]
        assert r.requests[0]["headers"]["Host"] == f"hook.test:{port}"
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED|match"):
            with pinned_stream("GET", f"https://other.test:{port}/x", settings, timeout_s=5, verify=client_ctx):
                pass


def test_read_capped() -> None:
    with Receiver(status=200, body=b"x" * 100_000) as r:
        url = f"http://127.0.0.1:{r.server_address[1]}/v.mp4"
        settings = Settings(webhook_allow_private=True)
        sink = io.BytesIO()
        with pinned_stream("GET", url, settings, timeout_s=5) as resp:
            assert read_capped(resp, 100_000, sink) == b""
        assert sink.getvalue() == b"x" * 100_000
        with pytest.raises(UploadTooLarge), pinned_stream("GET", url, settings, timeout_s=5) as resp:
            read_capped(resp, 99_999)


def test_tenant_secrets_differ_and_derive_from_the_master() -> None:
    s = Settings(webhook_secret="m" * 40)  # type: ignore[arg-type]
    alice, bob = tenant_webhook_secret("alice", s), tenant_webhook_secret("bob", s)
    assert alice != bob and len(alice) == 64 and "m" * 40 not in (alice, bob)
    assert alice == tenant_webhook_secret("alice", s)
    assert alice != tenant_webhook_secret("alice", Settings(webhook_secret="n" * 40))  # type: ignore[arg-type]


def test_delivery_is_signed_with_the_tenant_secret() -> None:
    settings = Settings(webhook_allow_private=True, webhook_secret="k" * 40)  # type: ignore[arg-type]
    body = json.dumps({"id": "j1"}).encode()
    with Receiver() as r:
        status = deliver_once(f"http://127.0.0.1:{r.server_address[1]}/hook", body, "job.succeeded", settings,
                              tenant="alice")
    assert status == 204
    (req,) = r.requests
    sig = req["headers"][SIGNATURE_HEADER]
    assert req["body"] == body
    assert verify(tenant_webhook_secret("alice", settings), sig, body)
    assert not verify(tenant_webhook_secret("bob", settings), sig, body)
    assert not verify("k" * 40, sig, body)  # the master secret itself signs nothing

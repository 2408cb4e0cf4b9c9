"""Callback signatures, the address allow-list and one delivery to a loopback receiver."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from service.config import Settings
from service.errors import CallbackRefused
from service.webhooks import SIGNATURE_HEADER, check_callback_url, deliver_once, sign, verify


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
    ["http://127.0.0.1:9/x", "http://localhost/x", "http://10.1.2.3/", "http://169.254.169.254/latest",
     "http://[::1]/", "http://192.168.0.1/", "ftp://example.com/", "http://user:pw@example.com/", "not a url"],
)
def test_private_and_odd_urls_are_refused(url: str) -> None:
    with pytest.raises(CallbackRefused) as e:
        check_callback_url(url, Settings())
    assert e.value.code == "callback_refused"


def test_public_address_and_allow_private() -> None:
    assert check_callback_url("https://93.184.216.34/hook", Settings())
    assert check_callback_url("http://127.0.0.1:9/x", Settings(webhook_allow_private=True))


def test_delivery_is_signed() -> None:
    got: dict[str, object] = {}

    class H(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            got["body"] = self.rfile.read(int(self.headers["Content-Length"]))
            got["sig"] = self.headers[SIGNATURE_HEADER]
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a: object) -> None:
            pass

    srv = HTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.handle_request, daemon=True).start()
    settings = Settings(webhook_allow_private=True, webhook_secret="k")  # type: ignore[arg-type]
    body = json.dumps({"id": "j1"}).encode()
    status = deliver_once(f"http://127.0.0.1:{srv.server_port}/hook", body, "job.succeeded", settings)
    srv.server_close()
    assert status == 204 and got["body"] == body
    assert verify("k", str(got["sig"]), body)

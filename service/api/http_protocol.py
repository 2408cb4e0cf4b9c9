"""uvicorn's HTTP/1.1 protocol (h11) with its one answer of its own in problem+json.

Bytes that h11 cannot parse as a request (a ``Content-Length`` that is not a number, two that
disagree, a header line with no colon, a request line or headers past h11's size limit) never reach
the app: uvicorn answers them itself with a plain-text 400 and closes the connection.  A client
that reads every error as RFC 9457 would then find no ``code``.  This subclass answers the same 400
as ``malformed_request`` problem+json, like every other error of the API.  The API is served with
it (``uvicorn --http service.api.http_protocol:ProblemH11Protocol``: ``HTTP_PROTOCOL``) by
``backdrop run``, the API image and its Kubernetes deployment.
"""

from __future__ import annotations

import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.api.problems import PROBLEM_JSON, problem_body
from service.errors import MalformedRequest

#: uvicorn's ``--http`` value that serves the API with this protocol.
HTTP_PROTOCOL = "service.api.http_protocol:ProblemH11Protocol"

_DETAIL = (
    "the request is not valid HTTP/1.1: its request line, a header or its framing (such as a "
    "Content-Length that is not one number) could not be parsed; the connection is closed"
)
_BODY = json.dumps(
    problem_body(MalformedRequest.status, MalformedRequest.code, MalformedRequest.title, _DETAIL)
).encode()


class ProblemH11Protocol(H11Protocol):
    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to an unparsable request (``msg`` is its fixed log line), as problem+json.
        h11 lets a server answer after the client's protocol error; the connection then closes."""
        headers = [
            (b"content-type", PROBLEM_JSON.encode()),
            (b"content-length", str(len(_BODY)).encode()),
            (b"connection", b"close"),
        ]
        self.transport.write(self.conn.send(h11.Response(status_code=400, headers=headers, reason=b"Bad Request")))
        self.transport.write(self.conn.send(h11.Data(data=_BODY)))
        self.transport.write(self.conn.send(h11.EndOfMessage()))
        self.transport.close()

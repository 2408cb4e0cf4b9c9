"""Streaming multipart parser for ``POST /jobs``, off the event loop.

Each file part is written to its own temp file in chunks as the request arrives, counting bytes and
hashing them (SHA-256, for the idempotency fingerprint): past ``max_upload_bytes`` the upload stops
at once with ``UploadTooLarge`` (413), so a huge body never fills memory or the disk.  Text fields
are small and capped.

The event loop only receives the body; parsing and file writes run in a worker thread, fed in
batches of about ``FEED_BYTES``, so a slow disk or a large upload never stalls other requests.
``UploadSlots`` caps the uploads one API process takes at once (``max_concurrent_uploads``).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import anyio
import python_multipart as multipart
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.concurrency import run_in_threadpool

from service.errors import Busy, DependencyUnavailable, RequestInvalid, UploadTooLarge
from service.spool import Workdir

MAX_FIELD_BYTES = 8 * 1024
MAX_PARTS = 32
FILE_FIELDS = frozenset({"video", "background"})
#: Body bytes gathered on the event loop before one hand-over to the parsing thread.
FEED_BYTES = 1024 * 1024


class UploadSlots:
    """At most ``limit`` uploads at once in this process; past it ``Busy`` (503, Retry-After).
    Taken and given back on the event loop only, so a plain counter is enough."""

    def __init__(self, limit: int):
        self.limit = limit
        self.taken = 0

    def take(self) -> None:
        if self.taken >= self.limit:
            raise Busy(f"this server already takes {self.limit} uploads at once; retry shortly", retry_after_s=2)
        self.taken += 1

    def give_back(self) -> None:
        self.taken -= 1


def upload_slots(state: object, limit: int) -> UploadSlots:
    """The app's ``UploadSlots`` (made on first use, kept on ``app.state``)."""
    slots = getattr(state, "upload_slots", None)
    if slots is None:
        slots = UploadSlots(limit)
        setattr(state, "upload_slots", slots)  # noqa: B010 - Starlette's State takes attributes
    return slots


@dataclass
class SpooledFile:
    field: str
    filename: str
    content_type: str
    path: Path
    size: int = 0
    hasher: hashlib._Hash = dataclasses.field(default_factory=hashlib.sha256, repr=False)

    @property
    def sha256(self) -> str:
        return self.hasher.hexdigest()


@dataclass
class ParsedForm:
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, SpooledFile] = field(default_factory=dict)
    spool: Workdir | None = None  # where the file parts are written

    @property
    def workdir(self) -> Path | None:
        return self.spool.path if self.spool is not None else None

    def cleanup(self) -> None:
        if self.spool is not None:
            self.spool.remove()


def _suffix(filename: str) -> str:
    suffix = Path(filename.replace("\\", "/")).suffix.lower()
    return suffix if 1 < len(suffix) <= 6 and suffix[1:].isalnum() else ""


class _Parser:
    def __init__(self, spool: Workdir, max_file_bytes: int):
        self.form = ParsedForm(spool=spool)
        self.max_file_bytes = max_file_bytes
        self._name = b""
        self._value = b""
        self._headers: dict[bytes, bytes] = {}
        self._field: str | None = None
        self._data = bytearray()
        self._file: SpooledFile | None = None
        self._fh: BinaryIO | None = None
        self._parts = 0
        self.ended = False

    def on_part_begin(self) -> None:
        self._headers, self._field, self._file, self._data = {}, None, None, bytearray()
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise RequestInvalid("too many parts in the multipart body")

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._name.lower()] = self._value
        self._name, self._value = b"", b""

    def on_headers_finished(self) -> None:
        _, opts = parse_options_header(self._headers.get(b"content-disposition", b""))
        if b"name" not in opts:
            raise RequestInvalid('a multipart part lacks its Content-Disposition "name"')
        name = opts[b"name"].decode("utf-8", "replace")
        self._field = name
        if b"filename" in opts or name in FILE_FIELDS:
            if name not in FILE_FIELDS:
                raise RequestInvalid(f"unexpected file field {name!r}; send 'video' and optionally 'background'")
            if name in self.form.files:
                raise RequestInvalid(f"field {name!r} sent twice")
            filename = opts.get(b"filename", b"").decode("utf-8", "replace")
            assert self.form.workdir is not None
            path = self.form.workdir / f"{name}{_suffix(filename)}"
            ctype = self._headers.get(b"content-type", b"application/octet-stream").decode("latin-1")
            self._file = SpooledFile(name, filename, ctype, path)
            self.form.files[name] = self._file
            self._fh = open(path, "wb")  # noqa: SIM115 - closed in on_part_end / close()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        n = end - start
        if self._file is not None:
            self._file.size += n
            if self._file.size > self.max_file_bytes:
                raise UploadTooLarge(
                    f"{self._file.field!r} is larger than the {self.max_file_bytes} bytes accepted"
                )
            assert self._fh is not None
            chunk = data[start:end]
            self._file.hasher.update(chunk)
            self._fh.write(chunk)
        else:
            if len(self._data) + n > MAX_FIELD_BYTES:
                raise RequestInvalid(f"field {self._field!r} is too long")
            self._data += data[start:end]

    def on_part_end(self) -> None:
        if self._file is not None:
            self.close()
            if not self._file.filename and not self._file.size:
                # what an HTML form sends for a file input left empty: a field not given
                del self.form.files[self._file.field]
                self._file.path.unlink(missing_ok=True)
        elif self._field is not None:
            if self._field in self.form.fields:
                raise RequestInvalid(f"field {self._field!r} sent twice")
            self.form.fields[self._field] = self._data.decode("utf-8", "replace")

    def on_end(self) -> None:
        self.ended = True

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


async def parse_multipart(
    content_type: str,
    stream: AsyncIterator[bytes],
    *,
    max_file_bytes: int,
    spool_dir: Path | None,
    tick: Callable[[], None] | None = None,
) -> ParsedForm:
    """Parse a ``multipart/form-data`` body into text fields and spooled files (see module doc).
    ``tick`` is called in the parsing thread after each batch (it keeps a queue reservation alive)."""
    ctype, params = parse_options_header(content_type or "")
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise RequestInvalid(
            "send the job as multipart/form-data (a 'video' file and the options), or as JSON or a urlencoded "
            "form naming the video by video_url or video_upload_id"
        )
    try:
        spool = await run_in_threadpool(Workdir, "upload-", spool_dir)
    except OSError as e:
        raise _spool_failed(e) from e
    p = _Parser(spool, max_file_bytes)
    callbacks = {
        "on_part_begin": p.on_part_begin,
        "on_part_data": p.on_part_data,
        "on_part_end": p.on_part_end,
        "on_header_field": p.on_header_field,
        "on_header_value": p.on_header_value,
        "on_header_end": p.on_header_end,
        "on_headers_finished": p.on_headers_finished,
        "on_end": p.on_end,
    }

    def feed(chunks: list[bytes], final: bool) -> None:
        for chunk in chunks:
            parser.write(chunk)
        if final:
            parser.finalize()
            if not p.ended:  # a body cut short would leave a truncated file that looks whole
                raise RequestInvalid("the multipart body ends before its closing boundary")
        if tick is not None:
            tick()

    try:
        parser = multipart.MultipartParser(params[b"boundary"], callbacks)  # type: ignore[arg-type]
        pending: list[bytes] = []
        size = 0
        async for chunk in stream:
            if chunk:
                pending.append(chunk)
                size += len(chunk)
            if size >= FEED_BYTES:
                await run_in_threadpool(feed, pending, False)
                pending, size = [], 0
        await run_in_threadpool(feed, pending, True)
    except FormParserError as e:
        await _discard(p)
        raise RequestInvalid(f"malformed multipart body: {e}") from e
    except OSError as e:
        await _discard(p)
        raise _spool_failed(e) from e
    except BaseException:
        await _discard(p)
        raise
    return p.form


def _spool_failed(e: OSError) -> DependencyUnavailable:
    """The spool folder is full or unusable: the server's trouble, not the caller's (503)."""
    return DependencyUnavailable(f"the upload could not be spooled ({e.strerror or type(e).__name__}); retry later")


async def _discard(p: _Parser) -> None:
    """Close and delete what was spooled, even when the request is being cancelled."""

    def discard() -> None:
        p.close()
        p.form.cleanup()

    with anyio.CancelScope(shield=True):
        await run_in_threadpool(discard)

"""Streaming multipart parser for ``POST /jobs``.

Each file part is written to its own temp file in chunks as the request arrives, counting bytes:
past ``max_upload_bytes`` the upload stops at once with ``UploadTooLarge`` (413), so a huge body
never fills memory or the disk.  Text fields are small and capped.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import python_multipart as multipart
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header

from service.errors import RequestInvalid, UploadTooLarge

MAX_FIELD_BYTES = 8 * 1024
MAX_PARTS = 32
FILE_FIELDS = frozenset({"video", "background"})


@dataclass
class SpooledFile:
    field: str
    filename: str
    content_type: str
    path: Path
    size: int = 0


@dataclass
class ParsedForm:
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, SpooledFile] = field(default_factory=dict)
    workdir: Path | None = None

    def cleanup(self) -> None:
        for f in self.files.values():
            f.path.unlink(missing_ok=True)
        if self.workdir is not None:
            for p in self.workdir.glob("*"):
                p.unlink(missing_ok=True)
            self.workdir.rmdir()


def _suffix(filename: str) -> str:
    suffix = Path(filename.replace("\\", "/")).suffix.lower()
    return suffix if 1 < len(suffix) <= 6 and suffix[1:].isalnum() else ""


class _Parser:
    def __init__(self, workdir: Path, max_file_bytes: int):
        self.form = ParsedForm(workdir=workdir)
        self.max_file_bytes = max_file_bytes
        self._name = b""
        self._value = b""
        self._headers: dict[bytes, bytes] = {}
        self._field: str | None = None
        self._data = bytearray()
        self._file: SpooledFile | None = None
        self._fh: BinaryIO | None = None
        self._parts = 0

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
            self._fh.write(data[start:end])
        else:
            if len(self._data) + n > MAX_FIELD_BYTES:
                raise RequestInvalid(f"field {self._field!r} is too long")
            self._data += data[start:end]

    def on_part_end(self) -> None:
        if self._file is not None:
            self.close()
        elif self._field is not None:
            if self._field in self.form.fields:
                raise RequestInvalid(f"field {self._field!r} sent twice")
            self.form.fields[self._field] = self._data.decode("utf-8", "replace")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


async def parse_multipart(
    content_type: str, stream: AsyncIterator[bytes], *, max_file_bytes: int, spool_dir: Path | None
) -> ParsedForm:
    """Parse a ``multipart/form-data`` body into text fields and spooled files (see module doc)."""
    ctype, params = parse_options_header(content_type or "")
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise RequestInvalid("send the job as multipart/form-data (a 'video' file and the options)")
    if spool_dir is not None:
        os.makedirs(spool_dir, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="upload-", dir=spool_dir))
    p = _Parser(workdir, max_file_bytes)
    callbacks = {
        "on_part_begin": p.on_part_begin,
        "on_part_data": p.on_part_data,
        "on_part_end": p.on_part_end,
        "on_header_field": p.on_header_field,
        "on_header_value": p.on_header_value,
        "on_header_end": p.on_header_end,
        "on_headers_finished": p.on_headers_finished,
    }
    try:
        parser = multipart.MultipartParser(params[b"boundary"], callbacks)  # type: ignore[arg-type]
        async for chunk in stream:
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except FormParserError as e:
        p.close()
        p.form.cleanup()
        raise RequestInvalid(f"malformed multipart body: {e}") from e
    except BaseException:
        p.close()
        p.form.cleanup()
        raise
    return p.form

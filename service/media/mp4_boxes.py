"""The boxes of an ISO-BMFF file (MP4, MOV, 3GP), walked by their sizes without reading their
payloads: the header inspection (``inspect.mp4_video_track``) and the metadata count
(``metadata_bombs``) read them so."""

from __future__ import annotations

import struct
from typing import BinaryIO

__all__ = ["LEADING_BOXES", "MAX_BOXES", "boxes", "find_box"]

#: The box types an MP4, MOV or 3GP file starts with (old QuickTime files may start with one
#: other than ``ftyp``)
LEADING_BOXES = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip")

#: Boxes listed at most in one parent: a header longer than this is not walked further
MAX_BOXES = 10_000


def boxes(fh: BinaryIO, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """(type, payload start, payload end) of the ISO-BMFF boxes between ``start`` and ``end``."""
    out: list[tuple[bytes, int, int]] = []
    pos = start
    while pos + 8 <= end and len(out) < MAX_BOXES:
        fh.seek(pos)
        head = fh.read(16)
        if len(head) < 8:
            break
        size, kind = struct.unpack(">I4s", head[:8])
        body = pos + 8
        if size == 1 and len(head) == 16:
            size, body = struct.unpack(">Q", head[8:16])[0], pos + 16
        elif size == 0:
            size = end - pos
        if size < body - pos or pos + size > end:
            break
        out.append((kind, body, pos + size))
        pos += size
    return out


def find_box(fh: BinaryIO, start: int, end: int, kind: bytes) -> tuple[int, int] | None:
    """(payload start, end) of the first ``kind`` box between ``start`` and ``end``."""
    return next(((s, e) for k, s, e in boxes(fh, start, end) if k == kind), None)

"""Whether an ASF file (WMV, WMA) is encrypted, from its Header Object.

FFmpeg opens a DRM-protected WMV (Windows Media DRM, PlayReady) as if it were plain, only logging a
warning, and its decoder then refuses the first packet: the job failed as ``corrupt_video`` after
the upload was accepted.  The header says so before anything is read: a Content Encryption or
Extended Content Encryption object, or a stream whose properties carry the Encrypted Content flag
(PlayReady's files, whose Advanced Content Encryption object sits in the Header Extension).
"""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

HEADER = uuid.UUID("75B22630-668E-11CF-A6D9-00AA0062CE6C").bytes_le
CONTENT_ENCRYPTION = uuid.UUID("2211B3FB-BD23-11D2-B4B7-00A0C955FC6E").bytes_le
EXTENDED_CONTENT_ENCRYPTION = uuid.UUID("298AE614-2622-4C17-B935-DAE07EE9289C").bytes_le
STREAM_PROPERTIES = uuid.UUID("B7DC0791-A9B7-11CF-8EE6-00C00C205365").bytes_le
#: Where a Stream Properties object's Flags sit: after its GUID and size (24), its stream and error
#: correction types (32), time offset (8) and two lengths (8).
_FLAGS_AT = 72
_ENCRYPTED_FLAG = 0x8000
#: The Header Object is read whole up to this size; real ones are a few kB (a long script of
#: markers, tens of kB).  Past it the header is not judged.
MAX_HEADER_BYTES = 1 << 20
MAX_OBJECTS = 1024


def asf_encrypted(path: Path) -> bool:
    """True where the ASF file's header marks its content encrypted; False for any other file."""
    with open(path, "rb") as fh:
        head = fh.read(30)
        if len(head) < 30 or head[:16] != HEADER:
            return False
        size, count = struct.unpack_from("<QI", head, 16)
        if size > MAX_HEADER_BYTES or size < 30:
            return False
        header = head + fh.read(size - 30)
    pos = 30
    for _ in range(min(count, MAX_OBJECTS)):
        if pos + 24 > len(header):
            break
        guid = header[pos:pos + 16]
        (length,) = struct.unpack_from("<Q", header, pos + 16)
        if length < 24:
            break
        if guid in (CONTENT_ENCRYPTION, EXTENDED_CONTENT_ENCRYPTION):
            return True
        if guid == STREAM_PROPERTIES and pos + _FLAGS_AT + 2 <= len(header):
            (flags,) = struct.unpack_from("<H", header, pos + _FLAGS_AT)
            if flags & _ENCRYPTED_FLAG:
                return True
        pos += length
    return False

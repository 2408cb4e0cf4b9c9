"""Whether a Matroska/WebM or AVI file is shorter than its own header says: an upload cut short.

An MP4's index lists every sample, so a cut one is caught by counting its packets
(``inspect_video``).  Matroska and AVI index nothing that FFmpeg counts, and FFmpeg reads a cut file
as far as it goes without complaint: a WebM cut at 60 % came out as 26 frames of 60, exit 0.  Both
containers record their size at the top, though: a Matroska ``Segment`` its length in bytes, an AVI
each ``RIFF`` chunk's (one, then one ``AVIX`` chunk a gigabyte or so in OpenDML files).  A file that
ends before the size its header declares is cut short.

Writers that cannot seek back (a browser's ``MediaRecorder``, a live capture, a recording that
crashed before it was closed) leave the size unknown (Matroska's all-ones length; in AVI 0 or a
placeholder near 4 GiB): such files are read as far as they go, as before, since nothing says
where they should end.  MPEG-TS, FLV and Ogg record no size at all.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

EBML_HEADER = 0x1A45DFA3
SEGMENT = 0x18538067
#: RIFF sizes from here up are placeholders a writer could not go back to fill in (FFmpeg's
#: 0xFFFFFFFF, MEncoder's 0xFFFFFFF8), not sizes: AVI writers keep a RIFF chunk under 2 GiB (old
#: readers took its size as signed), OpenDML ones under 1 GiB
UNWRITTEN_RIFF = 0xFFFFFF00
#: RIFF chunks walked at most: an OpenDML AVI holds one a gigabyte or so, so 64 cover far more than
#: any upload; a file of millions of tiny chunks (a 100 MB one took 8 s to walk) is not judged
MAX_RIFF_CHUNKS = 64


def cut_short(path: Path) -> str | None:
    """Why ``path`` is cut short (for ``corrupt_video``), or None where its header declares no size
    past its end (or it is neither Matroska nor AVI)."""
    with open(path, "rb") as fh:
        size = fh.seek(0, 2)
        fh.seek(0)
        head = fh.read(12)
        if head[:4] == EBML_HEADER.to_bytes(4, "big"):
            end = _matroska_end(fh)
            kind = "Matroska segment declares"
        elif head[:4] == b"RIFF" and head[8:12] == b"AVI ":
            end = _riff_end(fh, size)
            kind = "AVI chunks declare"
        else:
            return None
    if end is None or end <= size:
        return None
    return f"the video file is cut short: its {kind} {end} bytes, the file holds {size}"


def vint(fh: BinaryIO, *, keep_marker: bool) -> tuple[int, bool] | None:
    """One EBML variable-length integer at the file's position: (value, all value bits set), or
    None where it is malformed.  Element IDs keep their length marker (``keep_marker``); sizes do
    not, and a size whose bits are all set is "unknown"."""
    first = fh.read(1)
    if not first or first[0] == 0:
        return None
    length = 8 - first[0].bit_length() + 1
    rest = fh.read(length - 1)
    if len(rest) != length - 1:
        return None
    value = int.from_bytes(first + rest, "big")
    bits = 7 * length
    if keep_marker:
        return value, False
    value &= (1 << bits) - 1
    return value, value == (1 << bits) - 1


def ebml_element(fh: BinaryIO) -> tuple[int, int, int | None] | None:
    """(ID, where its data starts, where it ends: None for an unknown size) of the EBML element at
    the file's position, or None where it is malformed."""
    ident, size = vint(fh, keep_marker=True), vint(fh, keep_marker=False)
    if ident is None or size is None:
        return None
    start = fh.tell()
    return ident[0], start, None if size[1] else start + size[0]


def _matroska_end(fh: BinaryIO) -> int | None:
    """Where the first Segment ends, as its size says (None: unknown size, or no Segment)."""
    found = segment(fh)
    return None if found is None else found[1]


def segment(fh: BinaryIO) -> tuple[int, int | None] | None:
    """Where the first Segment's data starts and where it ends (None: an unknown size), or None
    where there is no Segment where it belongs, after the EBML header and any Void elements."""
    fh.seek(0)
    for _ in range(16):  # the EBML header, then Void elements a writer may leave before the Segment
        element = vint(fh, keep_marker=True)
        length = vint(fh, keep_marker=False)
        if element is None or length is None:
            return None
        (ident, _), (n, unknown) = element, length
        start = fh.tell()
        if ident == SEGMENT:
            return start, None if unknown else start + n
        if unknown:
            return None
        fh.seek(start + n)
    return None


def _riff_end(fh: BinaryIO, size: int) -> int | None:
    """Where the file's RIFF chunks end, one after another as their sizes say (None where a size
    was never written: 0, or FFmpeg's and MEncoder's placeholders, 0xFFFFFFFF and 0xFFFFFFF8, which
    a file written to a pipe keeps, or more than ``MAX_RIFF_CHUNKS`` chunks).  The last chunk's pad
    byte after an odd size is not required: some writers leave it off."""
    pos = end = 0
    for _ in range(MAX_RIFF_CHUNKS):
        if pos + 8 > size:
            break
        fh.seek(pos)
        tag, n = struct.unpack("<4sI", fh.read(8))
        if tag != b"RIFF":  # junk or padding after the last chunk
            break
        if n == 0 or n >= UNWRITTEN_RIFF:
            return None
        end = pos + 8 + n
        pos = end + (n & 1)
    else:
        return None if pos + 8 <= size else end  # chunks past the walk's bound: not judged
    return end

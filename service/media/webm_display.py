"""A WebM's display size (its pixels' shape), written into its header once FFmpeg has finished it.

FFmpeg's Matroska muxer writes a video track's DisplayWidth and DisplayHeight (how wide a player
shows the picture) only from the stream's own aspect (``AVStream.sample_aspect_ratio``), which PyAV
gives no way to set; the codec's, which MP4 and MOV carry, it leaves alone.  So an anamorphic video
(DV, DVD, HDV: a 16:9 picture in 720x480 pixels) came out of a WebM at the shape of its pixels,
squeezed, while its background had been fitted to the picture as it is shown.

The muxer, writing a file it can seek in, leaves a Void element after its SeekHead (room for the
index of the file's top-level elements).  ``write_display_size`` adds the two elements to the video
track's Video element and takes as many bytes from that Void as the Tracks element grows by, so
nothing after the Tracks moves: only what lies between the Void and the Tracks (the Info) and the
Tracks' start shift towards the front, and the SeekHead's positions of those are rewritten.  Where
the file is not laid out so (no Void before the Tracks, too little room in it) it is left as it is,
with a warning.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

from service.media.declared_size import ebml_element, segment

log = logging.getLogger(__name__)

SEEK_HEAD, SEEK, SEEK_POSITION = 0x114D9B74, 0x4DBB, 0x53AC
VOID, TRACKS, TRACK_ENTRY, TRACK_TYPE, VIDEO, CLUSTER = 0xEC, 0x1654AE6B, 0xAE, 0x83, 0xE0, 0x1F43B675
DISPLAY_WIDTH, DISPLAY_HEIGHT = 0x54B0, 0x54BA
#: How much of the file's start is read: the header up to the Tracks (FFmpeg writes a few hundred bytes).
HEAD_BYTES = 1 << 16


class _Layout(Exception):
    """The file is not laid out as this module expects."""


def write_display_size(path: Path, width: int, height: int, pixel_aspect: Fraction) -> bool:
    """Give the WebM at ``path`` (video ``width`` x ``height``, pixels ``pixel_aspect`` wide) the
    display size FFmpeg writes for a WebM whose stream has that aspect (``width x aspect`` by
    ``height``).  True where the file says so now (or needed nothing), False where it was left as
    it was (logged)."""
    display_width = round(width * pixel_aspect)
    if display_width == width or display_width <= 0:
        return True
    try:
        with open(path, "r+b") as fh:
            head = fh.read(HEAD_BYTES)
            new = _with_display_size(head, display_width, height)
            if new is not None:
                fh.seek(0)
                fh.write(new)
        return True
    except _Layout as e:
        log.warning("the WebM %s keeps square pixels (its %s:%s pixel shape is not written): %s",
                    path.name, pixel_aspect.numerator, pixel_aspect.denominator, e)
        return False


def _with_display_size(head: bytes, display_width: int, display_height: int) -> bytes | None:
    """The file's start up to the end of its Tracks, rewritten; None where its video track already
    has a display size."""
    fh = io.BytesIO(head)
    found = segment(fh)
    if found is None:
        raise _Layout("no Segment after the EBML header")
    segment_data = found[0]
    children: list[tuple[int, int, int, int]] = []  # (id, start, data start, end) of the Segment's first elements
    for child in _elements(fh, segment_data, len(head)):
        if child[0] == CLUSTER:
            raise _Layout("no Tracks before the first Cluster")
        children.append(child)
        if child[0] == TRACKS:
            break
    else:
        raise _Layout(f"no Tracks in the file's first {len(head)} bytes")
    voids = [k for k, (eid, *_) in enumerate(children) if eid == VOID]
    seek_heads = [k for k, (eid, *_) in enumerate(children) if eid == SEEK_HEAD]
    if not voids or any(k > voids[-1] for k in seek_heads):
        raise _Layout("no Void element after the SeekHead before the Tracks")
    void = voids[-1]
    _, tracks_start, tracks_data, tracks_end = children[-1]
    tracks = _tracks_with_display_size(fh, head, tracks_data, tracks_end, display_width, display_height)
    if tracks is None:
        return None
    tracks = _encoded(TRACKS, tracks)
    _, void_start, _, void_end = children[void]
    room = void_end - void_start - (len(tracks) - (tracks_end - tracks_start))
    if room < 2:
        raise _Layout(f"the Void before the Tracks has {void_end - void_start} bytes, too few")
    moved = head[void_end:tracks_start]
    shift = (void_start + room) - void_end  # how far the elements between the Void and the Tracks move
    out = bytearray(head[:void_start] + _void(room) + moved + tracks)
    old_places = {start - segment_data: start + shift - segment_data for _, start, _, _ in children[void + 1:]}
    for k in seek_heads:  # before the Void: at the same place in ``out``
        _, _, data, end = children[k]
        _move_seek_positions(fh, out, data, end, old_places)
    if len(out) != tracks_end:  # never: the Void gave up what the Tracks took
        raise _Layout("the rewritten header would not end where the Tracks did")
    return bytes(out)


def _tracks_with_display_size(
    fh: BinaryIO, head: bytes, start: int, end: int, display_width: int, display_height: int,
) -> bytes | None:
    """The Tracks element's data (``start``..``end`` of ``head``) with DisplayWidth and DisplayHeight
    added to its video track's Video element (the only video track Backdrop writes); None where that
    has them already."""
    out, done = bytearray(), False
    for eid, at, data, stop in _elements(fh, start, end):
        if eid != TRACK_ENTRY or done or _uint_child(fh, data, stop, TRACK_TYPE) != 1:
            out += head[at:stop]
            continue
        entry = bytearray()
        for cid, cat, cdata, cstop in _elements(fh, data, stop):
            if cid != VIDEO:
                entry += head[cat:cstop]
                continue
            if _uint_child(fh, cdata, cstop, DISPLAY_WIDTH) is not None:
                return None
            video = head[cdata:cstop] + _encoded(DISPLAY_WIDTH, _uint(display_width))
            entry += _encoded(VIDEO, video + _encoded(DISPLAY_HEIGHT, _uint(display_height)))
            done = True
        out += _encoded(TRACK_ENTRY, bytes(entry))
    if not done:
        raise _Layout("no video track with a Video element")
    return bytes(out)


def _move_seek_positions(fh: BinaryIO, out: bytearray, start: int, end: int, places: dict[int, int]) -> None:
    """Rewrite in ``out`` each SeekPosition of the SeekHead whose data is ``start``..``end`` that
    ``places`` moves, in the bytes it had (it only gets smaller)."""
    for eid, _, data, stop in _elements(fh, start, end):
        if eid != SEEK:
            continue
        for cid, _, cdata, cstop in _elements(fh, data, stop):
            if cid == SEEK_POSITION:
                old = _uint_at(fh, cdata, cstop)
                if old in places:
                    out[cdata:cstop] = places[old].to_bytes(cstop - cdata, "big")


def _elements(fh: BinaryIO, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(id, start, data start, end) of each element from ``start`` to ``end``, in order; each read
    from its own place, so walks inside one another share ``fh``."""
    at = start
    while at < end:
        fh.seek(at)
        found = ebml_element(fh)
        if found is None or found[2] is None:
            raise _Layout(f"no element of known size at byte {at}")
        eid, data, stop = found[0], found[1], found[2]
        if stop > end:
            raise _Layout(f"element {eid:#x} runs past byte {end}")
        yield eid, at, data, stop
        at = stop


def _uint_child(fh: BinaryIO, start: int, end: int, wanted: int) -> int | None:
    """The unsigned value of the first ``wanted`` element from ``start`` to ``end``."""
    for eid, _, data, stop in _elements(fh, start, end):
        if eid == wanted:
            return _uint_at(fh, data, stop)
    return None


def _uint_at(fh: BinaryIO, start: int, end: int) -> int:
    fh.seek(start)
    return int.from_bytes(fh.read(end - start), "big")


def _encoded(eid: int, data: bytes) -> bytes:
    """An element: its id, its size (the fewest bytes that hold it), its data."""
    length = 1
    while len(data) >= (1 << (7 * length)) - 1:
        length += 1
    size = (1 << (7 * length)) | len(data)
    return eid.to_bytes((eid.bit_length() + 7) // 8, "big") + size.to_bytes(length, "big") + data


def _uint(value: int) -> bytes:
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


def _void(length: int) -> bytes:
    """A Void element ``length`` bytes long in all (at least 2)."""
    if length - 2 <= 126:
        return bytes([VOID, 0x80 | (length - 2)]) + bytes(length - 2)
    return bytes([VOID, 0x01]) + (length - 9).to_bytes(7, "big") + bytes(length - 9)

"""Matroska/WebM files whose metadata alone takes minutes to open: refused before FFmpeg reads them.

FFmpeg keeps a file's tags in a dictionary that it searches whole for each tag it adds, so reading
them takes time growing with the square of their number: a 1.6 MB WebM holding 100,000 tags took
74 s of CPU to open (measured on a 2-core EPYC), every time the file is opened (the API's check,
then the worker's probe, decoder and sound), and ten times as many would take two hours.  Nothing
interrupts it: the tags are converted after they are read, with no I/O for a time-out to act on.
Chapters cost memory instead (about 1 kB each, read whole at open).

The walk reads the Segment's top-level elements (and those its SeekHead points to: FFmpeg writes
Tags after the clusters) and counts the SimpleTag and ChapterAtom elements in each Tags and
Chapters element, stopping as soon as a count passes its limit.  Real files hold tens of tags
and chapters.  Other containers' tags cost the same per tag but take more bytes each (MP4: 40
bytes, against Matroska's 16); they are not walked here.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from service.media.declared_size import EBML_HEADER, SEGMENT, vint

__all__ = ["MAX_CHAPTERS", "MAX_TAGS", "metadata_bomb"]

#: The most tags (SimpleTag elements, nested ones too) a file may hold: 4096 open in 0.1 s
MAX_TAGS = 4096
#: The most chapters (ChapterAtom elements, nested ones too) a file may mark
MAX_CHAPTERS = 10_000
#: Top-level elements walked at most (clusters, mostly: an hour of video holds a few thousand)
MAX_TOP_LEVEL = 100_000

_TAGS, _CHAPTERS, _CLUSTER = 0x1254C367, 0x1043A770, 0x1F43B675
_SEEK_HEAD, _SEEK, _SEEK_ID, _SEEK_POSITION = 0x114D9B74, 0x4DBB, 0x53AB, 0x53AC
#: what each counted element is found in: Tags > Tag > SimpleTag (> SimpleTag), Chapters >
#: EditionEntry > ChapterAtom (> ChapterAtom)
_COUNTED = {_TAGS: (0x67C8, frozenset({0x7373, 0x67C8})), _CHAPTERS: (0xB6, frozenset({0x45B9, 0xB6}))}


def metadata_bomb(path: Path) -> str | None:
    """Why ``path`` is refused (for ``video_too_large``), or None: it is no Matroska file, or it
    holds no more than ``MAX_TAGS`` tags and ``MAX_CHAPTERS`` chapters."""
    with open(path, "rb") as fh:
        if fh.read(4) != EBML_HEADER.to_bytes(4, "big"):
            return None
        segment = _segment_start(fh)
        if segment is None:
            return None
        counts = {_TAGS: 0, _CHAPTERS: 0}
        for ident, start, end in _metadata_elements(fh, segment):
            limit = MAX_TAGS if ident == _TAGS else MAX_CHAPTERS
            counts[ident] += _count(fh, start, end, *_COUNTED[ident], limit - counts[ident])
            if counts[_TAGS] > MAX_TAGS:
                return f"the file holds more than {MAX_TAGS} tags, past what this service reads"
            if counts[_CHAPTERS] > MAX_CHAPTERS:
                return f"the file marks more than {MAX_CHAPTERS} chapters, past what this service reads"
    return None


def _element(fh: BinaryIO) -> tuple[int, int, int | None] | None:
    """(ID, where its data starts, where it ends: None for an unknown size) of the element at the
    file's position, or None where it is malformed."""
    ident, size = vint(fh, keep_marker=True), vint(fh, keep_marker=False)
    if ident is None or size is None:
        return None
    start = fh.tell()
    return ident[0], start, None if size[1] else start + size[0]


def _segment_start(fh: BinaryIO) -> int | None:
    """Where the first Segment's data starts (after the EBML header and any Void elements)."""
    fh.seek(0)
    for _ in range(16):
        element = _element(fh)
        if element is None:
            return None
        ident, start, end = element
        if ident == SEGMENT:
            return start
        if end is None:
            return None
        fh.seek(end)
    return None


def _metadata_elements(fh: BinaryIO, segment: int) -> list[tuple[int, int, int]]:
    """The Tags and Chapters elements FFmpeg reads, as (ID, data start, end): those at the top
    level up to the first element of unknown size (a live recording's clusters), and those the
    SeekHead points to."""
    found: dict[int, tuple[int, int, int]] = {}
    pointed: set[int] = set()
    fh.seek(segment)
    for _ in range(MAX_TOP_LEVEL):
        at = fh.tell()
        element = _element(fh)
        if element is None:
            break
        ident, start, end = element
        if end is None:
            break
        if ident in _COUNTED:
            found[at] = (ident, start, end)
        elif ident == _SEEK_HEAD:
            pointed |= _seek_positions(fh, start, end, segment)
        fh.seek(end)
    for at in sorted(pointed - found.keys()):
        fh.seek(at)
        element = _element(fh)
        if element is not None and element[0] in _COUNTED and element[2] is not None:
            found[at] = (element[0], element[1], element[2])
    return list(found.values())


def _seek_positions(fh: BinaryIO, start: int, end: int, segment: int) -> set[int]:
    """Where a SeekHead's entries for Tags and Chapters point (file offsets)."""
    positions = set()
    for seek_start, seek_end in _children(fh, start, end, _SEEK):
        target, position = None, None
        fh.seek(seek_start)
        while fh.tell() < seek_end:
            element = _element(fh)
            if element is None or element[2] is None:
                break
            ident, data, data_end = element[0], element[1], element[2]
            value = int.from_bytes(fh.read(min(8, data_end - data)), "big")
            if ident == _SEEK_ID:
                target = value
            elif ident == _SEEK_POSITION:
                position = value
            fh.seek(data_end)
        if target in _COUNTED and position is not None:
            positions.add(segment + position)
    return positions


def _children(fh: BinaryIO, start: int, end: int, wanted: int) -> list[tuple[int, int]]:
    """The (data start, end) of each ``wanted`` element directly inside ``start``..``end``."""
    out: list[tuple[int, int]] = []
    fh.seek(start)
    while fh.tell() < end and len(out) < MAX_TOP_LEVEL:
        element = _element(fh)
        if element is None or element[2] is None:
            break
        ident, data, data_end = element[0], element[1], element[2]
        if ident == wanted:
            out.append((data, data_end))
        fh.seek(data_end)
    return out


def _count(fh: BinaryIO, start: int, end: int, counted: int, inside: frozenset[int], budget: int) -> int:
    """How many ``counted`` elements lie in ``start``..``end``, at any depth through the ``inside``
    elements; past ``budget`` the walk stops (and past 16 elements visited for each one allowed,
    empty ones, it answers ``budget + 1``: no real file nests so)."""
    count, visits = 0, 0
    stack = [(start, end)]
    while stack and count <= budget:
        begin, finish = stack.pop()
        fh.seek(begin)
        while fh.tell() < finish and count <= budget:
            element = _element(fh)
            if element is None or element[2] is None:
                break
            visits += 1
            if visits > 16 * (budget + 1):
                return budget + 1
            ident, data, data_end = element[0], element[1], element[2]
            if ident == counted:
                count += 1
            if ident in inside:
                stack.append((data, min(data_end, finish)))
            fh.seek(min(data_end, finish))
    return count

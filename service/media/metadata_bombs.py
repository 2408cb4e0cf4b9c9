"""Files whose metadata alone takes minutes to open: refused before FFmpeg reads them.

FFmpeg keeps a file's tags in a dictionary that it searches whole for each tag it adds, so reading
them takes time growing with the square of their number: a 1.6 MB WebM holding 100,000 tags took
74 s of CPU to open (measured on a 2-core EPYC), every time the file is opened (the API's check,
then the worker's probe, decoder and sound), and ten times as many would take two hours.  Nothing
interrupts it: the tags are converted after they are read, with no I/O for a time-out to act on.
Chapters cost memory instead (about 1 kB each, read whole at open).

Each container's tags are counted where FFmpeg reads them when it opens the file, stopping as
soon as a count passes its limit; real files hold tens.  Matroska/WebM: the SimpleTag and
ChapterAtom elements of the Segment's Tags and Chapters elements (top-level, and where its
SeekHead points).  MP4/MOV: the items of each ``udta`` and ``ilst`` box in ``moov`` (its tracks'
too).  FLV: the properties of the script data (``onMetaData``) among its first tags.  Measured
here at 20,000 tags: MP4 0.9 s (770 kB), FLV 0.8 s (230 kB), growing with the square.  Other
containers (NUT, Ogg, AVI) are not counted: an upload's first reading runs in a child process
that a CPU limit ends (``confined``), which bounds them and any bomb not known here; this count
answers the known ones in milliseconds instead of at that limit.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from service.media.declared_size import EBML_HEADER, ebml_element, segment
from service.media.mp4_boxes import LEADING_BOXES, boxes, find_box

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


_TOO_MANY_TAGS = f"the file holds more than {MAX_TAGS} tags, past what this service reads"


def metadata_bomb(path: Path) -> str | None:
    """Why ``path`` is refused (for ``video_too_large``), or None: it holds no more than
    ``MAX_TAGS`` tags and ``MAX_CHAPTERS`` chapters where they are counted (or is of another
    container)."""
    with open(path, "rb") as fh:
        head = fh.read(12)
        if head[:3] == b"FLV":
            return _TOO_MANY_TAGS if _flv_tags(fh) > MAX_TAGS else None
        if head[4:8] in LEADING_BOXES:
            moov = find_box(fh, 0, fh.seek(0, 2), b"moov")
            return _TOO_MANY_TAGS if moov and _mp4_tags(fh, *moov) > MAX_TAGS else None
        if head[:4] != EBML_HEADER.to_bytes(4, "big"):
            return None
        found = segment(fh)
        if found is None:
            return None
        counts = {_TAGS: 0, _CHAPTERS: 0}
        for ident, start, end in _metadata_elements(fh, found[0]):
            limit = MAX_TAGS if ident == _TAGS else MAX_CHAPTERS
            counts[ident] += _count(fh, start, end, *_COUNTED[ident], limit - counts[ident])
            if counts[_TAGS] > MAX_TAGS:
                return _TOO_MANY_TAGS
            if counts[_CHAPTERS] > MAX_CHAPTERS:
                return f"the file marks more than {MAX_CHAPTERS} chapters, past what this service reads"
    return None


def _metadata_elements(fh: BinaryIO, segment_data: int) -> list[tuple[int, int, int]]:
    """The Tags and Chapters elements FFmpeg reads, as (ID, data start, end): those at the top
    level up to the first element of unknown size (a live recording's clusters), and those the
    SeekHead points to."""
    found: dict[int, tuple[int, int, int]] = {}
    pointed: set[int] = set()
    fh.seek(segment_data)
    for _ in range(MAX_TOP_LEVEL):
        at = fh.tell()
        element = ebml_element(fh)
        if element is None:
            break
        ident, start, end = element
        if end is None:
            break
        if ident in _COUNTED:
            found[at] = (ident, start, end)
        elif ident == _SEEK_HEAD:
            pointed |= _seek_positions(fh, start, end, segment_data)
        fh.seek(end)
    for at in sorted(pointed - found.keys()):
        fh.seek(at)
        element = ebml_element(fh)
        if element is not None and element[0] in _COUNTED and element[2] is not None:
            found[at] = (element[0], element[1], element[2])
    return list(found.values())


def _seek_positions(fh: BinaryIO, start: int, end: int, segment_data: int) -> set[int]:
    """Where a SeekHead's entries for Tags and Chapters point (file offsets)."""
    positions = set()
    for seek_start, seek_end in _children(fh, start, end, _SEEK):
        target, position = None, None
        fh.seek(seek_start)
        while fh.tell() < seek_end:
            element = ebml_element(fh)
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
            positions.add(segment_data + position)
    return positions


def _children(fh: BinaryIO, start: int, end: int, wanted: int) -> list[tuple[int, int]]:
    """The (data start, end) of each ``wanted`` element directly inside ``start``..``end``."""
    out: list[tuple[int, int]] = []
    fh.seek(start)
    while fh.tell() < end and len(out) < MAX_TOP_LEVEL:
        element = ebml_element(fh)
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
            element = ebml_element(fh)
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


def _mp4_tags(fh: BinaryIO, start: int, end: int) -> int:
    """The items of the ``udta`` and ``ilst`` boxes in ``start``..``end`` (a ``moov``), through
    ``meta`` boxes and tracks; past ``MAX_TAGS`` the count stops."""
    total = 0
    stack = [(start, end)]
    while stack and total <= MAX_TAGS:
        begin, finish = stack.pop()
        for kind, body, box_end in boxes(fh, begin, finish):
            if kind in (b"udta", b"ilst"):
                children = boxes(fh, body, box_end)
                total += len(children)
                stack += [(_meta_body(fh, b, e), e) for k, b, e in children if k == b"meta"]
            elif kind == b"meta":
                stack.append((_meta_body(fh, body, box_end), box_end))
            elif kind == b"trak":
                stack.append((body, box_end))
    return total


def _meta_body(fh: BinaryIO, body: int, end: int) -> int:
    """Where a ``meta`` box's children start: after its version and flags in MP4 (a full box),
    at once in QuickTime."""
    fh.seek(body + 4)
    head = fh.read(8)
    return body + 4 if len(head) == 8 and head[4:8] == b"hdlr" and body + 4 < end else body


#: FLV tags read for script data: FFmpeg reads the first ones when it opens the file
_FLV_TAGS_READ = 64
#: AMF0 value types: number, boolean, string, object, null, undefined, ECMA array, object end,
#: strict array, date, long string
_AMF_NUMBER, _AMF_BOOL, _AMF_STRING, _AMF_OBJECT, _AMF_NULL, _AMF_UNDEFINED = 0, 1, 2, 3, 5, 6
_AMF_ECMA, _AMF_END, _AMF_ARRAY, _AMF_DATE, _AMF_LONG_STRING = 8, 9, 10, 11, 12


def _flv_tags(fh: BinaryIO) -> int:
    """The properties of the script data among an FLV file's first tags (FFmpeg makes each a tag
    of the file); past ``MAX_TAGS`` the count stops."""
    fh.seek(5)
    header = fh.read(4)
    if len(header) < 4:
        return 0
    pos = int.from_bytes(header, "big") + 4  # the header, then the first tag's "previous size"
    total = 0
    for _ in range(_FLV_TAGS_READ):
        fh.seek(pos)
        tag = fh.read(11)
        if len(tag) < 11:
            break
        size = int.from_bytes(tag[1:4], "big")
        if tag[0] & 0x1F == 18:  # script data
            total += _amf_keys(fh.read(size), MAX_TAGS - total)
            if total > MAX_TAGS:
                break
        pos += 11 + size + 4
    return total


def _amf_keys(data: bytes, budget: int) -> int:
    """The property names in AMF0 ``data`` (objects' and ECMA arrays', at any depth; a strict
    array's values have none: an FLV's keyframe index holds thousands), counted up to
    ``budget`` + 1."""
    count, pos = 0, 0
    open_: list[int] = []  # each container being read: -1 an object, else a strict array's values left
    while pos < len(data) and count <= budget:
        if open_ and open_[-1] == 0:
            open_.pop()
            continue
        if open_ and open_[-1] < 0:  # in an object: a name, or its end
            if data[pos : pos + 3] == b"\x00\x00\x09":
                pos += 3
                open_.pop()
                continue
            pos += 2 + int.from_bytes(data[pos : pos + 2], "big")
            count += 1
        elif open_:
            open_[-1] -= 1
        if pos >= len(data):
            break
        kind, pos = data[pos], pos + 1
        if kind == _AMF_NUMBER:
            pos += 8
        elif kind == _AMF_BOOL:
            pos += 1
        elif kind == _AMF_STRING:
            pos += 2 + int.from_bytes(data[pos : pos + 2], "big")
        elif kind == _AMF_LONG_STRING:
            pos += 4 + int.from_bytes(data[pos : pos + 4], "big")
        elif kind == _AMF_DATE:
            pos += 10
        elif kind in (_AMF_OBJECT, _AMF_ECMA):
            pos += 4 if kind == _AMF_ECMA else 0  # an ECMA array's count, which FFmpeg does not trust
            open_.append(-1)
        elif kind == _AMF_ARRAY:
            open_.append(int.from_bytes(data[pos : pos + 4], "big"))
            pos += 4
        elif kind not in (_AMF_NULL, _AMF_UNDEFINED, _AMF_END):
            break  # a type FFmpeg does not read either
    return count

"""What a HEIF picture's header says (AVIF, HEIC), read from its boxes without decoding it.

A HEIF (ISO-BMFF) file's ``meta`` box lists the items (the picture, or a grid of tiles; an alpha
plane; Exif), where their bytes lie (``iloc``), how they refer to each other (``iref``: a grid's
tiles) and their properties (``iprp``): the size (``ispe``), a quarter-turn (``irot``) and mirror
(``imir``) to apply when showing it, the colours (``colr``: CICP numbers or an ICC profile) and the
codec's set-up (``av1C``, ``hvcC``).  An AVIF's pictures are AV1, a HEIC's
(an iPhone's photos) HEVC, a large one cut into 512x512 tiles; either may have an alpha plane (an
auxiliary picture, ``auxl``) and a clean aperture (``clap``: a crop).  The worker decodes each
coded picture with FFmpeg and assembles them from here (``service.media.background``); the API
checks the size against the limits before anything is decoded.

Standard library only: the API imports it (through ``service.media.inspect``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO, Literal

from service.media.picture_size import av1_sizes

Format = Literal["avif", "heic"]
#: Major brands that name a still picture of each kind (``avis``, ``hevc``: sequences, which open
#: as videos instead).
MAJOR_BRANDS: dict[bytes, Format] = {b"avif": "avif", b"heic": "heic", b"heix": "heic"}
#: Major brands of a HEIF picture of any codec: the compatible brands then tell which.
GENERIC_BRANDS = (b"mif1", b"mif2", b"miaf")
#: The item type of each kind's coded pictures.
CODECS: dict[str, bytes] = {"avif": b"av01", "heic": b"hvc1"}
#: The largest ``meta`` box read: a picture's is a few kB, with Exif and XMP some more.
MAX_META_BYTES = 4 << 20
#: Boxes walked at the top level, and items or properties listed, before the header is refused.
MAX_ITEMS = 10_000
#: How much of an AV1 item is read to find its sequence header (which comes first).
AV1_HEAD_BYTES = 1 << 16
#: The auxiliary type of an alpha plane (``auxC``), in AVIF's and in older MPEG spelling.
ALPHA_URNS = (b"urn:mpeg:mpegB:cicp:systems:auxiliary:alpha", b"urn:mpeg:hevc:2015:auxid:1")


class HeifError(ValueError):
    """A HEIF picture whose header is malformed, or whose bytes are not all in the file."""


#: An item's bytes: construction method (0: in the file, 1: in ``idat``) and (offset, length) extents.
Place = tuple[int, list[tuple[int, int]]]


@dataclass(frozen=True)
class Tile:
    """One coded picture: the whole picture, or one tile of a grid (row by row)."""

    width: int
    height: int
    config: bytes  # the decoder's set-up: the hvcC (or av1C) property's body
    place: Place


@dataclass(frozen=True)
class Coded:
    """A picture as coded: in one piece, or a grid of tiles of one size, row by row."""

    columns: int  # tiles across (1 for a picture in one piece)
    tiles: tuple[Tile, ...]


@dataclass(frozen=True)
class HeifHeader:
    format: Format
    width: int  # as stored, before ``crop`` and ``rotation``
    height: int
    crop: tuple[int, int, int, int] | None  # clap's clean aperture (left, top, width, height), cut out first
    rotation: int  # degrees anticlockwise to show it upright: 0, 90, 180 or 270, turned next
    mirror: int | None  # then imir's axis: 0 exchanges top and bottom, 1 left and right (cv2.flip's codes); None
    icc: bytes | None  # an ICC profile (colr prof/rICC)
    cicp: tuple[int, int, int, bool] | None  # colr nclx: primaries, transfer, matrix, full range
    picture: Coded
    alpha: Coded | None  # its alpha plane (an auxiliary picture of the same size), if it has one
    premultiplied: bool  # its colours already multiplied by that alpha (a ``prem`` reference to it)
    idat: bytes  # the meta box's own item data (a grid's description), where items lie in it


def kind(head: bytes) -> Format | None:
    """The HEIF picture the leading bytes announce (an ``ftyp`` box: its major brand, or a generic
    one with ``avif`` or ``heic`` among the compatible brands in ``head``), or None."""
    if head[4:8] != b"ftyp":
        return None
    major = head[8:12]
    if major in MAJOR_BRANDS:
        return MAJOR_BRANDS[major]
    if major not in GENERIC_BRANDS:
        return None
    (size,) = struct.unpack(">I", head[:4])
    compatible = head[16:min(size, len(head))]
    brands = [compatible[i:i + 4] for i in range(0, len(compatible) - 3, 4)]
    return next((MAJOR_BRANDS[b] for b in brands if b in MAJOR_BRANDS), None)


def _boxes(data: bytes, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """(type, body start, body end) of the boxes in ``data[start:end]``."""
    out: list[tuple[bytes, int, int]] = []
    pos = start
    while pos + 8 <= end:
        if len(out) >= MAX_ITEMS:
            raise HeifError("the picture's header holds too many boxes")
        size, box = struct.unpack_from(">I4s", data, pos)
        body = pos + 8
        if size == 1:
            (size,) = struct.unpack_from(">Q", data, body)
            body += 8
        elif size == 0:
            size = end - pos
        if size < body - pos or pos + size > end:
            raise HeifError(f"the picture's {box.decode('latin-1')!r} box runs past its container")
        out.append((box, body, pos + size))
        pos += size
    return out


def read_header(fh: BinaryIO, size: int) -> HeifHeader:
    """The primary picture's header, after checking that every byte range its items name lies in
    the file (a cut upload is refused before anything decodes it), that a grid's tiles cover it,
    and that no AV1 picture is coded larger than it says."""
    fh.seek(0)
    form = kind(fh.read(64))
    if form is None:
        raise HeifError("not an AVIF or HEIC picture")
    try:
        return _read_header(fh, size, form)
    except (struct.error, IndexError):
        raise HeifError(f"the {form.upper()}'s header is malformed or cut short") from None


def _read_header(fh: BinaryIO, size: int, form: Format) -> HeifHeader:
    name = form.upper()
    meta = _meta_box(fh, size)
    children = {box: (start, end) for box, start, end in _boxes(meta, 4, len(meta))}
    for need in (b"pitm", b"iinf", b"iloc", b"iprp"):
        if need not in children:
            raise HeifError(f"the {name} has no {need.decode()!r} box")
    primary = _primary(meta, *children[b"pitm"])
    types = _item_types(meta, *children[b"iinf"])
    idat_span = children.get(b"idat")
    idat = meta[idat_span[0]:idat_span[1]] if idat_span else b""
    places = _locations(meta, *children[b"iloc"], size, idat_size=len(idat))
    props, assoc = _properties(meta, *children[b"iprp"])
    refs = _references(meta, *children[b"iref"]) if b"iref" in children else {}

    def of(item: int) -> dict[bytes, bytes]:
        return {props[i - 1][0]: props[i - 1][1] for i in assoc.get(item, []) if 0 < i <= len(props)}

    def size_of(item: int) -> tuple[int, int]:
        ispe = of(item).get(b"ispe")
        if ispe is None or len(ispe) < 12:
            raise HeifError(f"a picture in the {name} has no size (ispe)")
        return struct.unpack_from(">II", ispe, 4)  # type: ignore[return-value]

    codec = CODECS[form]
    setup = b"av1C" if codec == b"av01" else b"hvcC"

    def tile(item: int) -> Tile:
        if types.get(item) != codec or places.get(item, (2, []))[0] not in (0, 1):
            raise HeifError(f"a picture in the {name} is not {'AV1' if form == 'avif' else 'HEVC'} or has no data")
        config = of(item).get(setup)
        if config is None:
            raise HeifError(f"a picture in the {name} has no decoder set-up ({setup.decode()})")
        return Tile(*size_of(item), config, places[item])

    def coded(item: int) -> Coded:
        """The picture ``item`` (the primary one or its alpha plane), in one piece or a grid."""
        width, height = size_of(item)
        if types.get(item) == codec:
            return Coded(1, (tile(item),))
        if types.get(item) != b"grid":
            found = types.get(item, b"none").decode("latin-1")
            raise HeifError(f"the {name}'s picture is not {'AV1' if form == 'avif' else 'HEVC'} (its item is {found!r})")
        rows, columns = _grid(_item_bytes(fh, idat, places.get(item), 16), width, height, name)
        tiles = tuple(tile(t) for t in refs.get((item, b"dimg"), []))
        if len(tiles) != rows * columns:
            raise HeifError(f"the {name}'s grid of {rows}x{columns} has {len(tiles)} tiles")
        w, h = tiles[0].width, tiles[0].height
        if any((t.width, t.height) != (w, h) for t in tiles):
            raise HeifError(f"the {name}'s grid tiles differ in size")
        # MIAF's rule (the last row and column reach into the picture), and with one row or column
        # tiles no more than twice the picture, or one coding block (64) more: the decoder allocates
        # for a whole tile (libheif writes a picture 29 wide in one tile 64 wide)
        if not ((columns - 1) * w < width <= columns * w <= max(2 * width, width + 64)
                and (rows - 1) * h < height <= rows * h <= max(2 * height, height + 64)):
            raise HeifError(f"the {name}'s {rows}x{columns} tiles of {w}x{h} do not make its {width}x{height} picture")
        return Coded(columns, tiles)

    width, height = size_of(primary)
    picture = coded(primary)
    for item, item_type in types.items():
        if item_type == b"av01":  # the picture, its tiles, its alpha plane: each decoded within its size
            coded_size = _coded_size(_item_bytes(fh, idat, places.get(item), AV1_HEAD_BYTES))
            shown = size_of(item)
            if coded_size[0] > shown[0] or coded_size[1] > shown[1]:
                raise HeifError(f"an AVIF picture declared {shown[0]}x{shown[1]} holds AV1 frames of "
                                f"up to {coded_size[0]}x{coded_size[1]}")
    planes = [item for (item, kind), targets in refs.items() if kind == b"auxl" and primary in targets
              and (aux := of(item).get(b"auxC")) is not None and aux[4:].split(b"\0")[0] in ALPHA_URNS]
    alpha = None
    if planes:
        if size_of(planes[0]) != (width, height):
            raise HeifError(f"the {name}'s alpha plane is {'x'.join(map(str, size_of(planes[0])))}, "
                            f"its picture {width}x{height}")
        alpha = coded(planes[0])
    premultiplied = alpha is not None and planes[0] in refs.get((primary, b"prem"), [])
    mine = of(primary)
    rotation = (mine[b"irot"][0] & 3) * 90 if mine.get(b"irot") else 0
    mirror = mine[b"imir"][0] & 1 if mine.get(b"imir") else None
    icc, cicp = _colours([body for box, body in _all(props, assoc.get(primary, [])) if box == b"colr"])
    if cicp is None and types.get(primary) == b"grid":
        _, cicp = _colours([body for box, body in _all(props, assoc.get(next(iter(refs[(primary, b"dimg")])), []))
                            if box == b"colr"])
    crop = _clean_aperture(mine.get(b"clap"), width, height)
    return HeifHeader(form, width, height, crop, rotation, mirror, icc, cicp, picture, alpha, premultiplied, idat)


def _all(props: list[tuple[bytes, bytes]], indices: list[int]) -> list[tuple[bytes, bytes]]:
    return [props[i - 1] for i in indices if 0 < i <= len(props)]


def item_bytes(fh: BinaryIO, header: HeifHeader, tile: Tile) -> bytes:
    """The whole of one coded picture's data (``read_header`` has checked it lies in the file)."""
    return _item_bytes(fh, header.idat, tile.place, None)


def _item_bytes(fh: BinaryIO, idat: bytes, place: Place | None, most: int | None) -> bytes:
    """An item's data, its first ``most`` bytes at most."""
    if place is None or place[0] not in (0, 1):
        raise HeifError("a picture's bytes cannot be found (iloc)")
    method, extents = place
    out = bytearray()
    for offset, length in extents:
        want: int | None = length or None  # 0: to the end of the file (or of idat)
        if most is not None:
            want = min(want or most, most - len(out))
        if method == 0:
            fh.seek(offset)
            out += fh.read(-1 if want is None else want)
        else:
            out += idat[offset:None if want is None else offset + want]
        if most is not None and len(out) >= most:
            break
    return bytes(out)


def _grid(data: bytes, width: int, height: int, name: str) -> tuple[int, int]:
    """(rows, columns) of a grid item's description; its output size must be the picture's."""
    if len(data) < 8 or data[0] != 0:
        raise HeifError(f"the {name}'s grid description is malformed")
    rows, columns = data[2] + 1, data[3] + 1
    out = struct.unpack_from(">II" if data[1] & 1 else ">HH", data, 4)
    if out != (width, height):
        raise HeifError(f"the {name}'s grid makes {out[0]}x{out[1]}, its header says {width}x{height}")
    return rows, columns


def _meta_box(fh: BinaryIO, size: int) -> bytes:
    """The top-level ``meta`` box's body (a full box: version and flags first)."""
    pos = 0
    for _ in range(MAX_ITEMS):
        if pos + 8 > size:
            break
        fh.seek(pos)
        head = fh.read(16)
        box_size, kind = struct.unpack_from(">I4s", head)
        body = pos + 8
        if box_size == 1:
            (box_size,) = struct.unpack_from(">Q", head, 8)
            body += 8
        elif box_size == 0:
            box_size = size - pos
        if box_size < body - pos or pos + box_size > size:
            raise HeifError(f"the picture is cut short (its {kind.decode('latin-1')!r} box)")
        if kind == b"meta":
            if box_size > MAX_META_BYTES:
                raise HeifError("the picture's header (meta box) is too large")
            fh.seek(body)
            return fh.read(pos + box_size - body)
        pos += box_size
    raise HeifError("the picture has no meta box")


def _primary(data: bytes, start: int, end: int) -> int:
    version = data[start]
    return int(struct.unpack_from(">H" if version == 0 else ">I", data, start + 4)[0])


def _item_types(data: bytes, start: int, end: int) -> dict[int, bytes]:
    """item ID → item type (``av01``, ``grid``, ``Exif``, ...) from ``iinf``'s ``infe`` boxes."""
    skip = 6 if data[start] == 0 else 8  # version, flags, entry count (16 or 32 bits)
    types: dict[int, bytes] = {}
    for kind, body, _end in _boxes(data, start + skip, end):
        if kind != b"infe" or data[body] < 2:
            continue
        if data[body] == 2:
            item, _, item_type = struct.unpack_from(">HH4s", data, body + 4)
        else:
            item, _, item_type = struct.unpack_from(">IH4s", data, body + 4)
        types[item] = item_type
    return types


def _locations(data: bytes, start: int, end: int, size: int, idat_size: int) -> dict[int, Place]:
    """Where each item's bytes lie (``iloc``), after checking that every extent is inside the file
    (or inside ``idat``)."""
    version = data[start]
    pos = start + 4
    offset_size, length_size = data[pos] >> 4, data[pos] & 15
    base_size, index_size = data[pos + 1] >> 4, data[pos + 1] & 15
    if any(s not in (0, 4, 8) for s in (offset_size, length_size, base_size)):
        raise HeifError("the picture's item locations (iloc) are malformed")
    pos += 2
    count, pos = _uint(data, pos, 2 if version < 2 else 4)
    if count > MAX_ITEMS:
        raise HeifError("the picture lists too many items")
    places: dict[int, Place] = {}
    for _ in range(count):
        item, pos = _uint(data, pos, 2 if version < 2 else 4)
        method = 0
        if version in (1, 2):
            method, pos = _uint(data, pos, 2)
            method &= 15
        _, pos = _uint(data, pos, 2)  # data reference index
        base, pos = _uint(data, pos, base_size)
        n, pos = _uint(data, pos, 2)
        extents = []
        for _ in range(n):
            if version in (1, 2) and index_size:
                _, pos = _uint(data, pos, index_size)
            offset, pos = _uint(data, pos, offset_size)
            length, pos = _uint(data, pos, length_size)
            limit = size if method == 0 else idat_size if method == 1 else None
            if limit is not None and base + offset + length > limit:
                raise HeifError("the picture is cut short: its bytes run past the end of the file")
            extents.append((base + offset, length))
        places[item] = (method, extents)
    if pos > end:
        raise HeifError("the picture's item locations (iloc) run past their box")
    return places


def _coded_size(data: bytes) -> tuple[int, int]:
    """The largest frame an AV1 bitstream's sequence headers allow (AV1 5.5: max_frame_width and
    max_frame_height), the most of any in ``data``.  A decoder allocates for that, whatever the
    file's ``ispe`` says: a 9 kB file declaring 8x6 held a 6000x4000 frame and took 360 MB."""
    try:
        sizes = av1_sizes(data, obus=None)
    except ValueError:
        raise HeifError("an AV1 size field is malformed") from None
    if not sizes:
        raise HeifError("an AVIF picture has no AV1 sequence header")
    return max(w for w, _ in sizes), max(h for _, h in sizes)


def _uint(data: bytes, pos: int, n: int) -> tuple[int, int]:
    if n == 0:
        return 0, pos
    if pos + n > len(data):
        raise HeifError("the picture's header is cut short")
    return int.from_bytes(data[pos:pos + n], "big"), pos + n


def _properties(data: bytes, start: int, end: int) -> tuple[list[tuple[bytes, bytes]], dict[int, list[int]]]:
    """``ipco``'s properties (type, body), numbered from 1, and ``ipma``'s item → property numbers."""
    props: list[tuple[bytes, bytes]] = []
    assoc: dict[int, list[int]] = {}
    for kind, body, box_end in _boxes(data, start, end):
        if kind == b"ipco":
            props = [(k, data[b:e]) for k, b, e in _boxes(data, body, box_end)]
        elif kind == b"ipma":
            version, flags = data[body], int.from_bytes(data[body + 1:body + 4], "big")
            count, pos = _uint(data, body + 4, 4)
            if count > MAX_ITEMS:
                raise HeifError("the picture lists too many items")
            for _ in range(count):
                item, pos = _uint(data, pos, 2 if version < 1 else 4)
                n, pos = _uint(data, pos, 1)
                wide = flags & 1
                indices = []
                for _ in range(n):
                    value, pos = _uint(data, pos, 2 if wide else 1)
                    indices.append(value & (0x7FFF if wide else 0x7F))
                assoc.setdefault(item, []).extend(indices)
    return props, assoc


def _references(data: bytes, start: int, end: int) -> dict[tuple[int, bytes], list[int]]:
    """``iref``: (from item, reference type: ``dimg`` for a grid's tiles, ``auxl``, ...) → the items
    it refers to, in order."""
    wide = data[start] != 0
    refs: dict[tuple[int, bytes], list[int]] = {}
    for box, body, _end in _boxes(data, start + 4, end):
        item, pos = _uint(data, body, 4 if wide else 2)
        count, pos = _uint(data, pos, 2)
        targets = refs.setdefault((item, box), [])
        for _ in range(count):
            target, pos = _uint(data, pos, 4 if wide else 2)
            targets.append(target)
    return refs


def _colours(boxes: list[bytes]) -> tuple[bytes | None, tuple[int, int, int, bool] | None]:
    """(ICC profile, CICP numbers) of a picture's ``colr`` properties: HEIF allows one of each."""
    icc, cicp = None, None
    for colr in boxes:
        if colr[:4] in (b"prof", b"rICC") and icc is None:
            icc = colr[4:]
        elif colr[:4] == b"nclx" and len(colr) >= 11 and cicp is None:
            primaries, transfer, matrix = struct.unpack_from(">HHH", colr, 4)
            cicp = (primaries, transfer, matrix, bool(colr[10] & 0x80))
    return icc, cicp


def _clean_aperture(clap: bytes | None, width: int, height: int) -> tuple[int, int, int, int] | None:
    """The (left, top, width, height) a ``clap`` property cuts out of a ``width`` x ``height``
    picture (ISO/IEC 14496-12 12.1.4: a size, and the offset of its centre from the picture's, as
    fractions), rounded to whole pixels; None without one, or where it does not lie in the picture
    (shown whole, as MIAF readers do with a clean aperture they cannot apply)."""
    if clap is None or len(clap) < 32:
        return None
    wn, wd, hn, hd, xn, xd, yn, yd = struct.unpack_from(">IIIIiIiI", clap)
    if 0 in (wd, hd, xd, yd):
        return None
    w, h = round(wn / wd), round(hn / hd)
    left = round(xn / xd + (width - 1) / 2 - (w - 1) / 2)
    top = round(yn / yd + (height - 1) / 2 - (h - 1) / 2)
    if w < 1 or h < 1 or left < 0 or top < 0 or left + w > width or top + h > height:
        return None
    return None if (left, top, w, h) == (0, 0, width, height) else (left, top, w, h)

"""HEIC files for tests.  No library here writes HEIC, so ``heic`` does, from the HEIF standard
(ISO/IEC 23008-12): x265 codes each tile losslessly, and the file holds them as an iPhone's does: a
``grid`` item whose tiles are HEVC items, each with its ``hvcC`` set-up and size, the grid's
description in ``idat``, colours in ``colr``."""

from __future__ import annotations

import re
import struct
from fractions import Fraction

import av
import numpy as np


def box(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(body), kind) + body


def full(kind: bytes, version: int, body: bytes, flags: int = 0) -> bytes:
    return box(kind, bytes([version]) + flags.to_bytes(3, "big") + body)


def hevc(rgb: np.ndarray, full_range: bool) -> tuple[bytes, bytes]:
    """(hvcC body, the picture's NAL units each after its 4-byte length) of ``rgb`` coded by x265,
    losslessly, in BT.601 YUV 4:2:0; a 2-D ``rgb`` (an alpha plane) as it is, monochrome."""
    grey = rgb.ndim == 2
    ctx = av.CodecContext.create("libx265", "w")
    ctx.width, ctx.height, ctx.time_base = rgb.shape[1], rgb.shape[0], Fraction(1, 25)
    ctx.pix_fmt = "gray" if grey else "yuv420p"
    if grey:
        ctx.color_range = 2  # full: an alpha plane's 0 and 255 are clear and opaque, as libheif writes it
    ctx.options = {"x265-params": "lossless=1:log-level=error"}
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="gray" if grey else "rgb24")
    if not grey:
        frame = frame.reformat(format="yuv420p", dst_colorspace=5, dst_color_range=2 if full_range else 1)
    stream = b"".join(bytes(p) for p in [*ctx.encode(frame), *ctx.encode(None)])
    nals = [n for n in re.split(b"\x00\x00\x00\x01|\x00\x00\x01", stream) if n]
    arrays = {32: [], 33: [], 34: []}  # VPS, SPS, PPS
    data = b""
    for nal in nals:
        kind = nal[0] >> 1 & 63
        if kind in arrays:
            arrays[kind].append(nal)
        elif kind not in (39, 40):  # SEI: x265's own notes
            data += struct.pack(">I", len(nal)) + nal
    config = bytes([1]) + bytes(18) + bytes([0, 0]) + bytes([3, len(arrays)])  # version 1, 4-byte lengths
    for kind, units in arrays.items():
        config += bytes([0x80 | kind]) + struct.pack(">H", len(units))
        config += b"".join(struct.pack(">H", len(u)) + u for u in units)
    return config, data


def heic(rgb: np.ndarray, tile: int | None = None, *, full_range: bool = False, icc: bytes | None = None,
         irot: int | None = None, grid: tuple[int, int] | None = None, tile_size: tuple[int, int] | None = None,
         declared: tuple[int, int] | None = None, av1: tuple[bytes, bytes] | None = None,
         nclx: tuple[int, int, int, bool] | None = None, exif: bytes | None = None,
         crop: tuple[int, int, int, int] | None = None, alpha: np.ndarray | None = None,
         premultiplied: bool = False) -> bytes:
    """A HEIC of ``rgb``: one HEVC item, or a grid of ``tile``-pixel tiles (the last row and
    column cropped).  ``grid``, ``tile_size``, ``declared`` (the picture's size): what the header
    says instead of the truth.  ``av1``: an AVIF instead, of this coded picture (av1C body, OBUs)
    of ``rgb``, in one piece.  ``nclx``: its colour numbers (else BT.709 primaries, sRGB transfer
    and BT.601 matrix, as ``hevc`` codes it).  ``exif``: an Exif item after the picture's data.
    ``crop``: a clean aperture (``clap``: left, top, width, height), applied before ``irot``.
    ``alpha``: an alpha plane (uint8, the picture's size), a monochrome HEVC item of its own;
    ``premultiplied``: ``rgb`` is already multiplied by it (a ``prem`` reference)."""
    height, width = rgb.shape[:2]
    kind, setup, brand = (b"av01", b"av1C", b"avif") if av1 else (b"hvc1", b"hvcC", b"heic")
    if av1 is not None or tile is None:
        pieces = [av1 or hevc(rgb, full_range)]
        rows = columns = 1
    else:
        rows, columns = -(-height // tile), -(-width // tile)
        padded = np.zeros((rows * tile, columns * tile, 3), np.uint8)
        padded[:height, :width] = rgb
        pieces = [hevc(padded[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile], full_range)
                  for r in range(rows) for c in range(columns)]
    tw, th = tile_size or ((tile, tile) if tile else (width, height))
    width, height = declared or (width, height)
    coded = [2 + i for i in range(len(pieces))] if tile else [1]
    primaries, transfer, matrix, full_range = nclx or (1, 13, 5, full_range)
    colr = box(b"colr", b"nclx" + struct.pack(">HHH", primaries, transfer, matrix) + bytes([0x80 if full_range else 0]))
    props = [box(setup, pieces[0][0]), full(b"ispe", 0, struct.pack(">II", tw, th)),
             full(b"ispe", 0, struct.pack(">II", width, height)), colr]
    mine = [3, 4]  # the picture's own: its size and colours
    if icc is not None:
        props.append(box(b"colr", b"prof" + icc))
        mine.append(len(props))
    if crop is not None:  # its size, then its centre's offset from the picture's, in halves
        left, top, w, h = crop
        props.append(box(b"clap", struct.pack(">IIIIiIiI", w, 1, h, 1, 2 * left + w - width, 2,
                                              2 * top + h - height, 2)))
        mine.append(0x80 | len(props))
    if irot is not None:
        props.append(box(b"irot", bytes([irot])))
        mine.append(0x80 | len(props))
    links = {i: [0x81, 2] for i in coded}  # hvcC (essential), the tile's size
    alpha_item = max(coded) + 2
    if alpha is not None:
        opacity = hevc(alpha, True)
        props += [box(b"hvcC", opacity[0]), full(b"auxC", 0, b"urn:mpeg:hevc:2015:auxid:1\0")]
        links[alpha_item] = [0x80 | len(props) - 1, 3, 0x80 | len(props)]
    if tile:
        links[1] = mine
    else:
        links[1] = [0x81, *mine]
    ipma = full(b"ipma", 0, struct.pack(">I", len(links)) + b"".join(
        struct.pack(">HB", item, len(ps)) + bytes(ps) for item, ps in sorted(links.items())))
    rows, columns = grid or (rows, columns)
    description = bytes([0, 0, rows - 1, columns - 1]) + struct.pack(">HH", width, height)
    items = [(1, b"grid" if tile else kind)] + [(i, kind) for i in coded if i != 1]
    exif_item = max(coded) + 1
    if exif is not None:
        items.append((exif_item, b"Exif"))
    if alpha is not None:
        items.append((alpha_item, b"hvc1"))
    iinf = full(b"iinf", 0, struct.pack(">H", len(items)) + b"".join(
        full(b"infe", 2, struct.pack(">HH4s", item, 0, kind) + b"\0") for item, kind in items))

    def meta(first: int) -> bytes:
        places, at = [], first
        for item, (_, data) in zip(coded, pieces, strict=True):
            places.append(struct.pack(">HHHHII", item, 0, 0, 1, at, len(data)))
            at += len(data)
        if exif is not None:
            places.append(struct.pack(">HHHHII", exif_item, 0, 0, 1, at, len(exif)))
            at += len(exif)
        if alpha is not None:
            places.append(struct.pack(">HHHHII", alpha_item, 0, 0, 1, at, len(opacity[1])))
        if tile:
            places.insert(0, struct.pack(">HHHHII", 1, 1, 0, 1, 0, len(description)))
        iloc = full(b"iloc", 1, bytes([0x44, 0]) + struct.pack(">H", len(places)) + b"".join(places))
        parts = [full(b"hdlr", 0, bytes(4) + b"pict" + bytes(13)), full(b"pitm", 0, struct.pack(">H", 1)), iloc, iinf,
                 box(b"iprp", box(b"ipco", b"".join(props)) + ipma)]
        refs = box(b"cdsc", struct.pack(">HHH", exif_item, 1, 1)) if exif is not None else b""
        if alpha is not None:
            refs += box(b"auxl", struct.pack(">HHH", alpha_item, 1, 1))
        if premultiplied:
            refs += box(b"prem", struct.pack(">HHH", 1, 1, alpha_item))
        if tile:
            refs += box(b"dimg", struct.pack(">HH", 1, len(coded)) + b"".join(struct.pack(">H", i) for i in coded))
        if refs:
            parts.append(full(b"iref", 0, refs))
        if tile:
            parts.append(box(b"idat", description))
        return full(b"meta", 0, b"".join(parts))

    ftyp = box(b"ftyp", brand + bytes(4) + b"mif1" + brand)
    first = len(ftyp) + len(meta(0)) + 8
    tail = (exif or b"") + (opacity[1] if alpha is not None else b"")
    return ftyp + meta(first) + box(b"mdat", b"".join(data for _, data in pieces) + tail)

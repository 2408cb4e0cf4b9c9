"""BMP pictures of 16 and 32 bits a pixel, read here rather than by OpenCV.

Their colours are laid out by bit masks (``BI_BITFIELDS``, or the defaults of ``BI_RGB``), and
OpenCV honours only the usual ones: a 32-bit picture with other masks came out in wrong colours,
16-bit pictures with a V3, V4 or V5 header were refused, and the alpha of 32-bit ones was dropped
(a logo's see-through surround showed whatever it stored).  Palette, 24-bit and run-length coded
BMPs are left to OpenCV, which reads them right.  The rows are read a band at a time, so memory
stays near the picture's own size in RGB.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:  # numpy is imported where pictures are read: the API reads headers only
    import numpy as np

#: Rows converted at a time.
BAND_ROWS = 256


@dataclass(frozen=True)
class BmpHeader:
    """A BMP's file and info headers, as far as they lay its rows out."""

    offset: int  # where the rows start
    size: int  # the info header's size: 12 for OS/2's core header, 40 to 124 for Windows' ones
    width: int
    height: int  # negative: stored top row first
    bits: int  # a pixel's
    compression: int  # 0 RGB, 1 RLE8, 2 RLE4, 3 bit fields, 4 JPEG, 5 PNG, 6 bit fields with alpha


def read_header(fh: BinaryIO) -> BmpHeader:
    """The headers of the BMP open in ``fh`` (``struct.error`` where they are cut short)."""
    fh.seek(10)
    offset, size = struct.unpack("<II", fh.read(8))
    if size == 12:  # OS/2's BITMAPCOREHEADER: unsigned sizes, no compression
        width, height, _, bits = struct.unpack("<HHHH", fh.read(8))
        return BmpHeader(offset, size, width, height, bits, 0)
    width, height, _, bits, compression = struct.unpack("<iiHHI", fh.read(16))
    return BmpHeader(offset, size, width, height, bits, compression)


@dataclass(frozen=True)
class _Layout:
    offset: int  # where the rows start
    width: int
    height: int  # negative: stored top row first
    bits: int
    masks: tuple[int, int, int, int]  # red, green, blue, alpha (0: none)


def read_masked(path: Path) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The picture of a 16- or 32-bit uncompressed BMP as RGB (uint8) and its opacity (float32,
    0 to 1; None where it has none, or where every pixel's alpha is 0, which browsers show
    opaque); None for any other BMP.  The header has been checked (``inspect.read_image_header``:
    the rows are all there)."""
    import numpy as np

    layout = _layout(path)
    if layout is None:
        return None
    width, rows = layout.width, abs(layout.height)
    stride = (width * layout.bits + 31) // 32 * 4
    dtype = np.dtype("<u2" if layout.bits == 16 else "<u4")
    rgb = np.empty((rows, width, 3), np.uint8)
    alpha = np.empty((rows, width), np.uint8) if layout.masks[3] else None
    tables = [_channel(mask) for mask in layout.masks]
    with open(path, "rb") as f:
        for top in range(0, rows, BAND_ROWS):
            n = min(BAND_ROWS, rows - top)
            f.seek(layout.offset + top * stride)
            band = np.frombuffer(f.read(n * stride), np.uint8).reshape(n, stride)
            pixels = band[:, :width * dtype.itemsize].view(dtype)
            for c, (mask, shift, table) in enumerate(tables[:3]):
                rgb[top:top + n, :, c] = table[(pixels & mask) >> shift] if mask else 0
            if alpha is not None:
                mask, shift, table = tables[3]
                alpha[top:top + n] = table[(pixels & mask) >> shift]
    if layout.height > 0:  # stored bottom row first
        rgb, alpha = rgb[::-1], None if alpha is None else alpha[::-1]
    if alpha is None or not alpha.any():
        return np.ascontiguousarray(rgb), None
    return np.ascontiguousarray(rgb), alpha.astype(np.float32) * np.float32(1 / 255)


def _layout(path: Path) -> _Layout | None:
    with open(path, "rb") as f:
        header = read_header(f)
        bits, compression = header.bits, header.compression
        if not 40 <= header.size <= 124:  # OS/2's core header: palettes and 24 bits only
            return None
        if bits not in (16, 32) or compression not in (0, 3, 6) or header.width <= 0 or header.height == 0:
            return None
        if compression == 0:  # BI_RGB: 5-5-5, or 8-8-8 with alpha in the fourth byte
            masks = (0x7C00, 0x3E0, 0x1F, 0) if bits == 16 else (0xFF0000, 0xFF00, 0xFF, 0xFF000000)
        else:  # in a V2+ header, or after a 40-byte one (three, or four with BI_ALPHABITFIELDS)
            count = 4 if compression == 6 or header.size >= 56 else 3
            f.seek(14 + 40)
            read = struct.unpack(f"<{count}I", f.read(4 * count))
            masks = (*read, 0) if count == 3 else read  # type: ignore[assignment]
    if not any(masks[:3]):
        return None  # no colour at all: let OpenCV refuse it
    full = (1 << bits) - 1
    return _Layout(header.offset, header.width, header.height, bits, tuple(m & full for m in masks))  # type: ignore[arg-type]


def _channel(mask: int) -> tuple[int, int, np.ndarray]:
    """The mask, the shift that brings its lowest bit to bit 0, and a table from its values (up to
    16 bits of them: lower ones are dropped) to 8 bits."""
    import numpy as np

    if not mask:
        return 0, 0, np.zeros(1, np.uint8)
    shift = (mask & -mask).bit_length() - 1
    width = (mask >> shift).bit_length()
    if width > 16:
        shift += width - 16
        width = 16
    mask = ((1 << width) - 1) << shift
    top = (1 << width) - 1
    return mask, shift, np.round(np.arange(top + 1) * (255 / top)).astype(np.uint8)

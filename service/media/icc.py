"""Background pictures in the colour space their ICC profile names, brought into sRGB.

A phone's photo is in Display P3 and says so in an embedded ICC profile; so are many pictures from
cameras (Adobe RGB) and editors.  OpenCV ignores the profile and FFmpeg only hands it on, so such
a picture was read as sRGB: its colours came out duller than the photo shows anywhere else (P3's
red, (255, 0, 0), is redder than sRGB's, and its mid tones moved likewise).  ``to_srgb`` reads the
profile and brings the picture into sRGB through linear light, as a colour-managed viewer does
(relative colorimetric: the profile's white to sRGB's white; colours outside sRGB clipped).

Only RGB profiles described by three colorants and three tone curves (matrix/TRC profiles: the
Display P3, Adobe RGB, ProPhoto and sRGB profiles cameras and phones write) are applied.  Any
other profile (grey, CMYK, LUT-only, malformed) leaves the picture as it was read, as before: the
file is untrusted and its profile is only a hint.  A profile that reads as sRGB costs nothing.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np

from service.media.colour_space import srgb_from_light, srgb_to_light

#: the largest profile read; a matrix/TRC profile is a few kB, one with a 4096-entry curve per channel 25 kB
MAX_PROFILE_BYTES = 1 << 20
#: how far a profile's colour conversion may be from none and still read as sRGB (the rounding of
#: its s15Fixed16 numbers, and profiles that write sRGB's colorants to 3 or 4 places)
_SAME = 2e-3
_STRIP_PIXELS = 1 << 20

# Bradford's cone response matrix: the ICC's way to adapt a white (ICC.1:2010 Annex E)
_BRADFORD = np.array([[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]])
_D65_XYZ = np.array([0.3127 / 0.3290, 1.0, (1 - 0.3127 - 0.3290) / 0.3290])
_D50_XYZ = np.array([0.9642, 1.0, 0.8249])  # the ICC's profile connection space white


@dataclass(frozen=True)
class RgbProfile:
    """A matrix/TRC profile: each channel's code value (0-255) to linear light, and the
    colorants (the columns: red, green and blue in D50-adapted XYZ)."""

    to_light: np.ndarray  # (3, 256) float64
    colorants: np.ndarray  # (3, 3) float64


def embedded_profile(path: Path) -> bytes | None:
    """The ICC profile embedded in a JPEG (APP2 ``ICC_PROFILE``), PNG (``iCCP``) or WebP (``ICCP``)
    picture, or None (a HEIF picture's is in its ``heif.HeifHeader``, read once with the rest of its
    header).  Read from the file's headers without decoding it; bounded by ``MAX_PROFILE_BYTES`` (a
    PNG's is compressed: inflated no further than that)."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            f.seek(0)
            if head.startswith(b"\xff\xd8"):
                return _jpeg_profile(f)
            if head.startswith(b"\x89PNG\r\n\x1a\n"):
                return _png_profile(f)
            if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
                return _webp_profile(f)
    except (OSError, struct.error, zlib.error, ValueError):
        return None
    return None


def _jpeg_profile(f: BinaryIO) -> bytes | None:
    """APP2 segments tagged ``ICC_PROFILE\\0`` up to the image data: a profile longer than one
    segment (64 kB) is split over several, numbered from 1."""
    read = f.read
    read(2)
    chunks: dict[int, bytes] = {}
    total = 0
    while True:
        marker = read(2)
        if len(marker) < 2 or marker[0] != 0xFF:
            break
        if marker[1] in (0xD8, 0x01) or 0xD0 <= marker[1] <= 0xD7:
            continue  # markers with no length
        if marker[1] in (0xDA, 0xD9):  # start of scan, end of image: no more headers
            break
        (length,) = struct.unpack(">H", read(2))
        if length < 2:
            return None
        if marker[1] != 0xE2:
            f.seek(length - 2, 1)
            continue
        body = read(length - 2)
        if len(body) < length - 2:
            return None  # cut short
        if marker[1] == 0xE2 and body.startswith(b"ICC_PROFILE\0") and len(body) > 14:
            total += len(body) - 14
            if total > MAX_PROFILE_BYTES:
                return None
            chunks[body[12]] = body[14:]
    if not chunks:
        return None
    return b"".join(chunks[k] for k in sorted(chunks))


def _png_profile(f: BinaryIO) -> bytes | None:
    """The ``iCCP`` chunk before the image data: a name, a compression byte and the zlib stream."""
    f.seek(8)
    for kind, length in _chunks(f, riff=False):
        if kind in (b"IDAT", b"IEND") or (kind == b"iCCP" and length > MAX_PROFILE_BYTES):
            return None
        if kind == b"iCCP":
            body = f.read(length)
            inflate = zlib.decompressobj()
            profile = inflate.decompress(body[body.index(b"\0") + 2:], MAX_PROFILE_BYTES)
            return None if inflate.unconsumed_tail else profile
    return None


def _webp_profile(f: BinaryIO) -> bytes | None:
    """The ``ICCP`` chunk of an extended WebP (its ``VP8X`` header comes first)."""
    f.seek(12)
    for kind, length in _chunks(f, riff=True):
        if kind == b"ICCP":
            return f.read(length) if length <= MAX_PROFILE_BYTES else None
        if kind in (b"VP8 ", b"VP8L", b"ANIM", b"ANMF", b"ALPH"):
            return None  # the ICCP chunk comes before these
    return None


def _chunks(f: BinaryIO, riff: bool) -> Iterator[tuple[bytes, int]]:
    """(kind, length) of each chunk of a PNG (length, kind, data, CRC) or a RIFF file such as WebP
    (kind, little-endian length, data padded to even), the file at the chunk's data; the next is
    read from past it, whatever the caller read."""
    while len(head := f.read(8)) == 8:
        if riff:
            kind, length = struct.unpack("<4sI", head)
            end = f.tell() + length + (length & 1)
        else:
            length, kind = struct.unpack(">I4s", head)
            end = f.tell() + length + 4
        yield kind, length
        f.seek(end)


def parse(profile: bytes) -> RgbProfile | None:
    """The colorants and tone curves of a matrix/TRC RGB profile, or None for any other profile
    or one that does not parse."""
    try:
        if len(profile) < 132 or profile[36:40] != b"acsp" or profile[16:20] != b"RGB " or profile[20:24] != b"XYZ ":
            return None
        (count,) = struct.unpack_from(">I", profile, 128)
        tags: dict[bytes, bytes] = {}
        for i in range(min(count, 100)):
            sig, offset, size = struct.unpack_from(">4sII", profile, 132 + 12 * i)
            if offset + size <= len(profile):
                tags[sig] = profile[offset:offset + size]
        colorants = np.stack([_xyz(tags[sig]) for sig in (b"rXYZ", b"gXYZ", b"bXYZ")], axis=1)
        to_light = np.stack([_curve(tags[sig]) for sig in (b"rTRC", b"gTRC", b"bTRC")])
    except (KeyError, ValueError, struct.error, ZeroDivisionError, OverflowError, FloatingPointError):
        return None
    if not (np.isfinite(colorants).all() and np.isfinite(to_light).all()):
        return None
    # what a display profile must be: its white (the colorants' sum) the PCS's, black dark, white
    # bright, and brighter code values never darker; any other is taken for a broken profile
    white = colorants.sum(axis=1)
    if np.abs(white - _D50_XYZ).max() > 0.05 or abs(np.linalg.det(colorants)) < 1e-3:
        return None
    if (to_light[:, 0] > 0.1).any() or (to_light[:, -1] < 0.5).any():
        return None
    if (np.diff(to_light, axis=1) < -1e-3).any():
        return None
    return RgbProfile(np.clip(to_light, 0.0, 1.0), colorants)


def _s15(data: bytes, offset: int, n: int) -> np.ndarray:
    return np.array(struct.unpack_from(f">{n}i", data, offset), np.float64) / 65536


def _xyz(tag: bytes) -> np.ndarray:
    if tag[:4] != b"XYZ ":
        raise ValueError("not an XYZ tag")
    return _s15(tag, 8, 3)


def _curve(tag: bytes) -> np.ndarray:
    """A tone curve (``curv``: identity, a gamma or a table; ``para``: ICC's parametric
    functions 0-4) at the 256 code values of an 8-bit picture."""
    v = np.arange(256, dtype=np.float64) / 255
    if tag[:4] == b"curv":
        (n,) = struct.unpack_from(">I", tag, 8)
        if n == 0:
            return v
        if n == 1:
            return v ** (struct.unpack_from(">H", tag, 12)[0] / 256)
        if n > 65536:
            raise ValueError("curve too long")
        table = np.array(struct.unpack_from(f">{n}H", tag, 12), np.float64) / 65535
        return np.interp(v, np.linspace(0, 1, n), table)
    if tag[:4] == b"para":
        (kind,) = struct.unpack_from(">H", tag, 8)
        sizes = {0: 1, 1: 3, 2: 4, 3: 5, 4: 7}
        if kind not in sizes:
            raise ValueError("unknown parametric curve")
        p = list(_s15(tag, 12, sizes[kind])) + [0.0] * (7 - sizes[kind])
        g, a, b, c, d, e, f = p
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            if kind == 0:
                return v**g
            if kind == 1:  # CIE 122-1966
                return np.where(v >= -b / a, np.maximum(a * v + b, 0) ** g, 0.0)
            if kind == 2:  # IEC 61966-3
                return np.where(v >= -b / a, np.maximum(a * v + b, 0) ** g + c, c)
            if kind == 3:  # IEC 61966-2.1 (sRGB's)
                return np.where(v >= d, np.maximum(a * v + b, 0) ** g, c * v)
            return np.where(v >= d, np.maximum(a * v + b, 0) ** g + e, c * v + f)
    raise ValueError("not a tone curve")


def _colorants(xy: tuple[tuple[float, float], ...]) -> np.ndarray:
    """The colorants of RGB primaries at chromaticities ``xy`` with a D65 white, adapted to D50 as
    an ICC profile writes them (Bradford)."""
    columns = np.stack([np.array([x / y, 1.0, (1 - x - y) / y]) for x, y in xy], axis=1)
    to_xyz = columns * np.linalg.solve(columns, _D65_XYZ)
    cone = _BRADFORD
    adapt = np.linalg.inv(cone) @ np.diag((cone @ _D50_XYZ) / (cone @ _D65_XYZ)) @ cone
    return adapt @ to_xyz  # type: ignore[no-any-return]


_SRGB_COLORANTS = _colorants(((0.640, 0.330), (0.300, 0.600), (0.150, 0.060)))
_SRGB_TO_LIGHT = srgb_to_light(np.arange(256, dtype=np.float64) / 255)
#: CICP colour primaries (ITU-T H.273) with a D65 white that a picture may name instead of an ICC
#: profile (HEIF's ``nclx``): BT.709 (sRGB's), BT.2020 and Display P3
_CICP_PRIMARIES = {
    1: ((0.640, 0.330), (0.300, 0.600), (0.150, 0.060)),
    9: ((0.708, 0.292), (0.170, 0.797), (0.131, 0.046)),
    12: ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060)),
}
#: CICP transfers of pictures for an SDR display: unspecified, BT.709, BT.601, sRGB, BT.2020 (10 and
#: 12 bits).  They are read with sRGB's curve, as browsers show such pictures; PQ and HLG (HDR) are
#: colour_space's (``background.ImageBackground``'s ``own``).
_CICP_SDR_TRANSFERS = (1, 2, 6, 13, 14, 15)


def from_cicp(primaries: int, transfer: int) -> RgbProfile | None:
    """The profile that CICP numbers describe, where ``to_srgb`` can apply it: Display P3 or BT.2020
    primaries with an SDR transfer.  None for sRGB's own (BT.709 or unspecified primaries) and for
    what it cannot (other primaries, HDR transfers), which leave the picture as read."""
    if primaries not in _CICP_PRIMARIES or primaries == 1 or transfer not in _CICP_SDR_TRANSFERS:
        return None
    return RgbProfile(np.stack([_SRGB_TO_LIGHT] * 3), _colorants(_CICP_PRIMARIES[primaries]))


def to_srgb(image: np.ndarray, profile: RgbProfile | None) -> np.ndarray:
    """``image`` (uint8 RGB, as read ignoring its profile) in sRGB: ``image`` itself where there
    is no profile to apply or the profile reads as sRGB."""
    if profile is None:
        return image
    matrix = np.linalg.solve(_SRGB_COLORANTS, profile.colorants)
    if np.abs(matrix - np.eye(3)).max() < _SAME and np.abs(profile.to_light - _SRGB_TO_LIGHT).max() < _SAME:
        return image
    tables = profile.to_light.astype(np.float32)
    matrix32 = matrix.astype(np.float32)
    out = np.empty_like(image)
    rows = max(1, _STRIP_PIXELS // max(1, image.shape[1]))  # a strip at a time: float copies of a photo are large
    for top in range(0, image.shape[0], rows):
        strip = image[top:top + rows]
        if (tables == tables[0]).all():
            light = tables[0][strip]
        else:
            light = np.stack([tables[c][strip[..., c]] for c in range(3)], axis=-1)
        srgb_from_light(cv2.transform(light, matrix32), out=out[top:top + rows])
    return out

"""Backgrounds brought into the video's colour space: an HDR video's background must be HDR too.

The output keeps the input's primaries and transfer (``encode.VideoWriter._tag``): a phone's HDR
video (BT.2020, HLG) comes out tagged as one, with the person's pixels as they were.  A background
picture or colour is sRGB, though, and was put into that frame as it stood, so players read it
as HLG in BT.2020: colours oversaturated, and white at the display's peak (1000 nits) beside a
person at 203.  ``converter`` maps pictures from one space to another through display light in
nits, as ITU-R BT.2408 places SDR in HDR: SDR reference white is 203 nits (75 % HLG, 58 % PQ),
BT.1886's gamma 2.4, the primaries converted in linear light.  The other way (an HDR background
video behind an SDR video) goes through the same nits, with what lies above reference white
clipped.

Spaces are told apart only where it shows: the transfer as SDR, PQ or HLG (every other transfer
reads as SDR, as before), the primaries as BT.709 (with BT.601's and the unspecified ones, a few
per cent apart), Display P3 or BT.2020.  Between two spaces alike in both there is no converter,
and the picture is used as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np

#: FFmpeg's AVColorTransferCharacteristic codes of the HDR transfers
PQ, HLG = 16, 18
#: FFmpeg's AVColorPrimaries codes: BT.2020, DCI-P3 and Display P3 (read alike: white points aside)
BT2020, P3 = (9,), (11, 12)
SDR_WHITE_NITS = 203.0  # ITU-R BT.2408: SDR's reference white in an HDR programme
HLG_PEAK_NITS = 1000.0  # BT.2100's nominal HLG display, system gamma 1.2
PQ_PEAK_NITS = 10000.0

#: the primaries' and D65's CIE xy
_PRIMARIES = {
    "bt709": ((0.640, 0.330), (0.300, 0.600), (0.150, 0.060)),
    "p3": ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060)),
    "bt2020": ((0.708, 0.292), (0.170, 0.797), (0.131, 0.046)),
}
_D65 = (0.3127, 0.3290)
_BT2100_LUMA = np.array([0.2627, 0.6780, 0.0593], np.float32)  # HLG's luminance weights
_PQ = (2610 / 16384, 2523 / 4096 * 128, 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32)  # m1, m2, c1, c2, c3
_HLG_A = 0.17883277
_HLG_B = 1 - 4 * _HLG_A
_HLG_C = 0.5 - _HLG_A * np.log(4 * _HLG_A)
_LEVELS = 65536  # the encoding table's steps, over the square root of light (fine near black)


@dataclass(frozen=True)
class ColourSpace:
    """A video's primaries and transfer, as FFmpeg codes them (2 = unspecified)."""

    primaries: int = 2
    trc: int = 2

    @property
    def transfer(self) -> str:
        return "pq" if self.trc == PQ else "hlg" if self.trc == HLG else "sdr"

    @property
    def gamut(self) -> str:
        return "bt2020" if self.primaries in BT2020 else "p3" if self.primaries in P3 else "bt709"


#: pictures and colours given as backgrounds (PNG, JPEG, #RRGGBB): sRGB, read as BT.709 video
SRGB = ColourSpace(1, 13)

Converter = Callable[..., np.ndarray]


def converter(src: ColourSpace, dst: ColourSpace) -> Converter | None:
    """A function from uint8 RGB (H, W, 3) in ``src`` to the same in ``dst`` (written into ``out=``
    where one is given); None where the two read alike."""
    if (src.transfer, src.gamut) == (dst.transfer, dst.gamut):
        return None
    return _converter(src.transfer, src.gamut, dst.transfer, dst.gamut)


def in_space(image: np.ndarray, src: ColourSpace, dst: ColourSpace) -> np.ndarray:
    """``image`` (uint8 RGB) brought from ``src`` into ``dst``: itself where they read alike."""
    convert = converter(src, dst)
    return image if convert is None else convert(image)


@cache
def _converter(transfer: str, gamut: str, to_transfer: str, to_gamut: str) -> Converter:
    decode = _decoding_table(transfer)
    matrix = _gamut_matrix(gamut, to_gamut)
    encode = _encoding_table(to_transfer)

    def convert(image: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        light = decode[image]  # (H, W, 3) float32, display light over the transfer's peak
        if transfer == "hlg":  # BT.2100's OOTF: scene light to display light (the decode table gives scene light)
            light *= _luma(light)[..., None] ** 0.2
        light *= _PEAK[transfer] / _PEAK[to_transfer]
        if matrix is not None:
            light = cv2.transform(light, matrix)
        if to_transfer == "hlg":  # the inverse OOTF: display light back to scene light
            luma = np.maximum(_luma(light), 1e-9)
            light *= (luma ** (-0.2 / 1.2))[..., None]
        return _encode(light, encode, out)

    return convert


_PEAK = {"sdr": SDR_WHITE_NITS, "hlg": HLG_PEAK_NITS, "pq": PQ_PEAK_NITS}


def srgb_to_light(v: np.ndarray) -> np.ndarray:
    """sRGB's code values (0 to 1) to linear light (IEC 61966-2-1), as a picture's colours are
    read in a colour-managed viewer (``icc``)."""
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)  # type: ignore[no-any-return]


def srgb_from_light(light: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Linear light (float32, 0 to 1, clipped beyond) to sRGB's uint8 code values."""
    return _encode(light, _srgb_table(), out)


def _encode(light: np.ndarray, table: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    """Light (float32, clipped here to 0-1, in place) to code values through an ``_encoding_table``."""
    np.clip(light, 0.0, 1.0, out=light)
    index = (np.sqrt(light) * (_LEVELS - 1) + 0.5).astype(np.uint16)
    return np.take(table, index, out=out)


@cache
def _srgb_table() -> np.ndarray:
    return _encoding_table("srgb")


def _luma(light: np.ndarray) -> np.ndarray:
    return cv2.transform(light, _BT2100_LUMA[None, :])


def _decoding_table(transfer: str) -> np.ndarray:
    """Code value (0-255) to light over the transfer's peak: display light for SDR and PQ, scene
    light for HLG (its OOTF depends on the pixel's luminance, so ``convert`` applies it)."""
    v = np.arange(256, dtype=np.float64) / 255
    if transfer == "sdr":
        light = v**2.4
    elif transfer == "pq":
        m1, m2, c1, c2, c3 = _PQ
        p = v ** (1 / m2)
        light = (np.maximum(p - c1, 0) / (c2 - c3 * p)) ** (1 / m1)
    else:
        light = np.where(v <= 0.5, v * v / 3, (np.exp((v - _HLG_C) / _HLG_A) + _HLG_B) / 12)
    return light.astype(np.float32)


def _encoding_table(transfer: str) -> np.ndarray:
    """Light over the transfer's peak (scene light for HLG), indexed by its square root in
    ``_LEVELS`` steps, to the code value (uint8)."""
    light = (np.arange(_LEVELS, dtype=np.float64) / (_LEVELS - 1)) ** 2
    if transfer == "sdr":
        v = light ** (1 / 2.4)
    elif transfer == "srgb":
        v = np.where(light <= 0.0031308, 12.92 * light, 1.055 * light ** (1 / 2.4) - 0.055)
    elif transfer == "pq":
        m1, m2, c1, c2, c3 = _PQ
        p = light**m1
        v = ((c1 + c2 * p) / (1 + c3 * p)) ** m2
    else:
        with np.errstate(divide="ignore"):
            v = np.where(light <= 1 / 12, np.sqrt(3 * light), _HLG_A * np.log(np.maximum(12 * light - _HLG_B, 1e-12)) + _HLG_C)
    return np.clip(np.rint(v * 255), 0, 255).astype(np.uint8)


def _gamut_matrix(gamut: str, to_gamut: str) -> np.ndarray | None:
    """The 3x3 matrix that takes linear RGB in ``gamut`` to linear RGB in ``to_gamut`` (None for
    the same)."""
    if gamut == to_gamut:
        return None
    return (np.linalg.inv(_rgb_to_xyz(to_gamut)) @ _rgb_to_xyz(gamut)).astype(np.float32)


def _rgb_to_xyz(gamut: str) -> np.ndarray:
    def xyz(x: float, y: float) -> np.ndarray:
        return np.array([x / y, 1.0, (1 - x - y) / y])

    columns = np.stack([xyz(*p) for p in _PRIMARIES[gamut]], axis=1)
    scale = np.linalg.solve(columns, xyz(*_D65))
    return columns * scale  # type: ignore[no-any-return]

"""``icc``: a background picture's embedded colour profile is honoured, as a colour-managed viewer
does; a profile that cannot be applied, or a hostile one, leaves the picture as it was read.

The profiles are built here from the ICC specification (ICC.1:2010) with the colorants that Apple's
Display P3 and Adobe's Adobe RGB (1998) profiles carry; the colours expected are worked out from
the published RGB-to-XYZ matrices of those spaces (CSS Color 4; Adobe RGB (1998) 4.3), a route
apart from the one the code takes (D50-adapted colorants)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from service.media import icc
from service.media.background import open_background

D50 = (0.9642, 1.0, 0.8249)
P3_COLORANTS = ((0.515121, 0.241196, -0.001053), (0.291977, 0.692245, 0.041885), (0.157104, 0.066574, 0.784073))
ADOBE_COLORANTS = ((0.609741, 0.311111, 0.019470), (0.205276, 0.625671, 0.060867), (0.149185, 0.063217, 0.744568))
SRGB_COLORANTS = ((0.436066, 0.222488, 0.013916), (0.385147, 0.716873, 0.097076), (0.143066, 0.060608, 0.714096))
SRGB_PARA = (2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045)  # parametric curve 3: sRGB's, as P3's profile has it

P3_TO_XYZ = np.array([[0.48657095, 0.26566769, 0.19821729], [0.22897456, 0.69173852, 0.07928691],
                      [0.0, 0.04511338, 1.04394437]])
ADOBE_TO_XYZ = np.array([[0.57667, 0.18556, 0.18823], [0.29734, 0.62736, 0.07529], [0.02703, 0.07069, 0.99134]])
XYZ_TO_SRGB = np.array([[3.24096994, -1.53738318, -0.49861076], [-0.96924364, 1.8759675, 0.04155506],
                        [0.05563008, -0.20397696, 1.05697151]])


def _s15(*values: float) -> bytes:
    return struct.pack(f">{len(values)}i", *(round(v * 65536) for v in values))


def profile(colorants: tuple[tuple[float, ...], ...], curve: bytes, space: bytes = b"RGB ") -> bytes:
    """An ICC v4 display profile: the three colorants and one tone curve for the three channels."""
    xyz = [b"XYZ \0\0\0\0" + _s15(*c) for c in colorants]
    tags = [(b"rXYZ", xyz[0]), (b"gXYZ", xyz[1]), (b"bXYZ", xyz[2]), (b"wtpt", b"XYZ \0\0\0\0" + _s15(*D50)),
            (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for sig, body in tags:
        body += b"\0" * (-len(body) % 4)
        table += struct.pack(">4sII", sig, offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = (struct.pack(">I4sI4s4s4s", size, b"none", 0x04300000, b"mntr", space, b"XYZ ") + b"\0" * 12
              + b"acsp" + b"\0" * 28 + _s15(*D50) + b"\0" * 48)  # then the intent (0) and the illuminant at 68
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + data


def para(*p: float) -> bytes:
    kind = {1: 0, 3: 1, 4: 2, 5: 3, 7: 4}[len(p)]
    return b"para\0\0\0\0" + struct.pack(">HH", kind, 0) + _s15(*p)


def gamma(g: float) -> bytes:
    return b"curv\0\0\0\0" + struct.pack(">IH", 1, round(g * 256))


P3 = profile(P3_COLORANTS, para(*SRGB_PARA))
ADOBE = profile(ADOBE_COLORANTS, gamma(563 / 256))  # Adobe RGB (1998): gamma 2.19921875
SRGB = profile(SRGB_COLORANTS, para(*SRGB_PARA))


def _decode_srgb(v: np.ndarray) -> np.ndarray:
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def expected(rgb: np.ndarray, to_xyz: np.ndarray, decode: object) -> np.ndarray:
    light = decode(rgb.astype(np.float64) / 255)  # type: ignore[operator]
    srgb = np.clip(light @ (XYZ_TO_SRGB @ to_xyz).T, 0, 1)
    v = np.where(srgb <= 0.0031308, 12.92 * srgb, 1.055 * srgb ** (1 / 2.4) - 0.055)
    return np.rint(v * 255).astype(np.uint8)  # type: ignore[no-any-return]


def patches() -> np.ndarray:
    """A 64x48 picture of 12 flat colours, from dark to saturated, 16 px squares."""
    colours = [(128, 128, 128), (255, 255, 255), (20, 20, 20), (200, 100, 50), (50, 160, 90), (40, 60, 200),
               (255, 0, 0), (0, 255, 0), (230, 200, 170), (90, 30, 120), (10, 120, 130), (250, 250, 60)]
    image = np.zeros((48, 64, 3), np.uint8)
    for k, c in enumerate(colours):
        y, x = divmod(k, 4)
        image[16 * y:16 * y + 16, 16 * x:16 * x + 16] = c
    return image


def png_with(path: Path, rgb: np.ndarray, icc_profile: bytes | None, compressed: bytes | None = None) -> Path:
    """A PNG of ``rgb`` with an ``iCCP`` chunk right after its header (``compressed``: the zlib
    stream as given)."""
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    raw = png.tobytes()
    if icc_profile is not None or compressed is not None:
        body = b"ICC Profile\0\0" + (compressed if compressed is not None else zlib.compress(icc_profile or b""))
        chunk = struct.pack(">I", len(body)) + b"iCCP" + body + struct.pack(">I", zlib.crc32(b"iCCP" + body))
        raw = raw[:33] + chunk + raw[33:]  # the signature and IHDR are 33 bytes
    path.write_bytes(raw)
    return path


def jpeg_with(path: Path, rgb: np.ndarray, icc_profile: bytes | None, segment: int = 65519) -> Path:
    """A JPEG (4:4:4, quality 100) with the profile in APP2 segments of ``segment`` bytes at most."""
    ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, 100, cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                            cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])
    assert ok
    raw = jpg.tobytes()
    app2 = b""
    if icc_profile is not None:
        pieces = [icc_profile[i:i + segment] for i in range(0, len(icc_profile), segment)]
        for n, piece in enumerate(pieces, 1):
            body = b"ICC_PROFILE\0" + bytes([n, len(pieces)]) + piece
            app2 += b"\xff\xe2" + struct.pack(">H", len(body) + 2) + body
    path.write_bytes(raw[:2] + app2 + raw[2:])
    return path


def webp_with(path: Path, rgb: np.ndarray, icc_profile: bytes) -> Path:
    """A lossless WebP in the extended format: its VP8X header flags the ICCP chunk that follows."""
    ok, webp = cv2.imencode(".webp", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_WEBP_QUALITY, 101])
    assert ok and webp.tobytes()[12:16] == b"VP8L"
    h, w = rgb.shape[:2]
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes([0x20, 0, 0, 0]) + (w - 1).to_bytes(3, "little") + (
        h - 1).to_bytes(3, "little")
    iccp = b"ICCP" + struct.pack("<I", len(icc_profile)) + icc_profile + b"\0" * (len(icc_profile) & 1)
    payload = b"WEBP" + vp8x + iccp + webp.tobytes()[12:]
    path.write_bytes(b"RIFF" + struct.pack("<I", len(payload)) + payload)
    return path


def read(path: Path, width: int = 64, height: int = 48) -> np.ndarray:
    source = open_background(str(path), width, height)
    try:
        return source.frames(np.zeros((1, height, width, 3), np.uint8), [0.0])[0]
    finally:
        source.close()


@pytest.mark.parametrize(("name", "icc_profile", "to_xyz", "decode"), [
    ("p3", P3, P3_TO_XYZ, _decode_srgb),
    ("adobe", ADOBE, ADOBE_TO_XYZ, lambda v: v ** (563 / 256)),
])
def test_a_png_in_a_wide_gamut_is_read_in_srgb(tmp_path: Path, name: str, icc_profile: bytes, to_xyz: np.ndarray,
                                               decode: object) -> None:
    """Its colours as the published matrices give them, within one code value (the profile's
    numbers are rounded to 16 bits); read as sRGB, its red was (255, 0, 0), not P3's redder one."""
    rgb = patches()
    got = read(png_with(tmp_path / f"{name}.png", rgb, icc_profile))
    want = expected(rgb, to_xyz, decode)
    assert np.abs(got.astype(int) - want).max() <= 1
    assert np.abs(got.astype(int) - rgb).max() > 20  # and so not the picture as it was read
    assert len(set(got[8, 8])) == 1 and tuple(got[8, 24]) == (255, 255, 255)  # grey stays grey, white white


def test_a_phone_jpeg_in_display_p3_is_read_in_srgb(tmp_path: Path) -> None:
    """The profile of a JPEG, even split over several APP2 segments, is applied to what the
    decoder gives (a JPEG is not lossless: the same file without the profile is the reference)."""
    rgb = patches()
    plain = read(jpeg_with(tmp_path / "plain.jpg", rgb, None))
    for segment in (65519, 300):  # whole, and in 4 pieces
        got = read(jpeg_with(tmp_path / f"p3-{segment}.jpg", rgb, P3, segment))
        assert np.abs(got.astype(int) - expected(plain, P3_TO_XYZ, _decode_srgb)).max() <= 1, segment


def test_a_webp_in_display_p3_is_read_in_srgb(tmp_path: Path) -> None:
    rgb = patches()
    got = read(webp_with(tmp_path / "p3.webp", rgb, P3))
    assert np.abs(got.astype(int) - expected(rgb, P3_TO_XYZ, _decode_srgb)).max() <= 1


def test_an_srgb_profile_leaves_the_picture_as_it_is(tmp_path: Path) -> None:
    rgb = patches()
    assert np.array_equal(read(png_with(tmp_path / "srgb.png", rgb, SRGB)), rgb)
    assert icc.to_srgb(rgb, icc.parse(SRGB)) is rgb  # and costs nothing


def test_an_animated_png_with_a_profile_is_read_in_srgb(tmp_path: Path) -> None:
    rgb = patches()
    path = tmp_path / "anim.png"
    with av.open(str(path), "w", format="apng") as out:
        stream = out.add_stream("apng", rate=5)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "rgb24"
        for k in range(2):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = k
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    raw = path.read_bytes()
    body = b"P3\0\0" + zlib.compress(P3)
    chunk = struct.pack(">I", len(body)) + b"iCCP" + body + struct.pack(">I", zlib.crc32(b"iCCP" + body))
    path.write_bytes(raw[:33] + chunk + raw[33:])
    source = open_background(str(path), 64, 48)
    try:
        assert type(source).__name__ == "VideoBackground"
        got = source.frames(np.zeros((2, 48, 64, 3), np.uint8), [0.0, 0.2])
    finally:
        source.close()
    assert np.abs(got.astype(int) - expected(rgb, P3_TO_XYZ, _decode_srgb)).max() <= 1


@pytest.mark.parametrize("bad", [
    P3[:200],  # cut short
    profile(P3_COLORANTS, para(*SRGB_PARA), space=b"GRAY"),  # not RGB
    profile(P3_COLORANTS, b"mAB \0\0\0\0"),  # a curve that is not one
    profile(((0, 0, 0), (0, 0, 0), (0, 0, 0)), para(*SRGB_PARA)),  # colorants that map every colour to black
    profile(P3_COLORANTS, b"curv\0\0\0\0" + struct.pack(">I", 0xFFFFFFFF)),  # a table longer than the profile
    profile(P3_COLORANTS, para(2.4, 0.0, 0.0, 0.0, 0.0)),  # a curve that is black throughout
    profile(P3_COLORANTS, para(2.2, 0.0, 0.0)),  # a curve that divides by zero
    b"\0" * 5000,
])
def test_a_profile_that_cannot_be_applied_leaves_the_picture_as_read(tmp_path: Path, bad: bytes) -> None:
    rgb = patches()
    assert np.array_equal(read(png_with(tmp_path / "bad.png", rgb, bad)), rgb)
    assert np.array_equal(read(jpeg_with(tmp_path / "bad.jpg", rgb, bad)), read(jpeg_with(tmp_path / "plain.jpg", rgb, None)))


def test_a_hostile_profile_costs_little(tmp_path: Path) -> None:
    """A profile that inflates to 64 MB (zeros, 64 kB compressed) is inflated no further than
    ``MAX_PROFILE_BYTES`` and then left; a JPEG whose segment lengths say 0 or 1, or run past the
    end of the file, gives no profile and no loop."""
    rgb = patches()
    bomb = zlib.compressobj(9)
    compressed = b"".join(bomb.compress(b"\0" * (1 << 20)) for _ in range(64)) + bomb.flush()
    assert np.array_equal(read(png_with(tmp_path / "bomb.png", rgb, None, compressed)), rgb)
    assert icc.embedded_profile(tmp_path / "bomb.png") is None
    jpg = jpeg_with(tmp_path / "plain.jpg", rgb, None).read_bytes()
    for tail in (b"\xff\xe2\x00\x00", b"\xff\xe2\x00\x01", b"\xff\xe2\xff\xff" + b"ICC_PROFILE\0\x01\x01abc"):
        (tmp_path / "odd.jpg").write_bytes(jpg[:2] + tail)
        assert icc.embedded_profile(tmp_path / "odd.jpg") is None

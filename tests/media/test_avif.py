"""AVIF backgrounds: checked from their headers before anything decodes them, then read upright,
in sRGB and on black where they are see-through, as a browser shows them.

The pictures are written here by OpenCV's own AVIF writer (libavif), lossless, so that what comes
back can be compared with the picture written; the properties it does not write (a quarter turn,
a mirror, Display P3 colours) are put in by rewriting a box of the file."""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from heicfile import heic
from test_icc import P3_TO_XYZ, _decode_srgb, expected, patches, read

from service.errors import BackdropError, BackgroundTooLarge, CorruptBackground
from service.media import heif
from service.media.background import open_background
from service.media.inspect import inspect_background, inspect_video


def avif(rgb: np.ndarray, depth: int = 8) -> bytes:
    """A lossless AVIF of ``rgb`` (RGB, or RGBA for one with an alpha plane)."""
    order = cv2.COLOR_RGBA2BGRA if rgb.shape[2] == 4 else cv2.COLOR_RGB2BGR
    pixels = cv2.cvtColor(rgb, order)
    params = [cv2.IMWRITE_AVIF_QUALITY, 100]
    if depth > 8:
        top = (1 << depth) - 1
        pixels = ((pixels.astype(np.uint32) * top + 127) // 255).astype(np.uint16)
        params += [cv2.IMWRITE_AVIF_DEPTH, depth]
    ok, data = cv2.imencode(".avif", pixels, params)
    assert ok
    return data.tobytes()


def colr_at(data: bytes) -> int:
    """Where the picture's 19-byte ``colr`` (``nclx``) box starts: the last of its properties."""
    at = data.find(b"colrnclx") - 4
    assert at > 0 and struct.unpack_from(">I", data, at)[0] == 19
    return at


def with_property(data: bytes, kind: bytes, value: int) -> bytes:
    """``data`` with its ``colr`` box replaced by a 9-byte ``irot`` or ``imir`` and 10 bytes of
    ``free``: sizes and offsets stay, and the picture's link to its fourth property names the new one."""
    at = colr_at(data)
    box = struct.pack(">I4sB", 9, kind, value) + struct.pack(">I4s", 10, b"free") + b"\0\0"
    data = data[:at] + box + data[at + 19:]
    links = data.find(b"ipma") + 4 + 4 + 4 + 2 + 1  # version and flags, one entry: item 1, 4 links
    assert data[links:links + 4] == bytes([1, 2, 0x83, 4])
    return data[:links + 3] + bytes([0x84]) + data[links + 4:]  # a transformation must be marked essential


def with_cicp(data: bytes, primaries: int, transfer: int) -> bytes:
    at = colr_at(data) + 12
    return data[:at] + struct.pack(">HH", primaries, transfer) + data[at + 4:]


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_an_avif_is_read_as_written(tmp_path: Path) -> None:
    rgb = patches()
    path = write(tmp_path, "plain.avif", avif(rgb))
    info = inspect_background(path)
    assert (info.kind, info.width, info.height, info.frames) == ("image", 64, 48, 1)
    assert np.array_equal(read(path), rgb)


def test_a_10_and_12_bit_avif_is_read_in_8_bits(tmp_path: Path) -> None:
    """Decoded as stored, its samples run to 1023 or 4095 in 16 bits: read as 16-bit (to 65535)
    the picture came out near black."""
    rgb = patches()
    for depth in (10, 12):
        got = read(write(tmp_path, f"deep{depth}.avif", avif(rgb, depth)))
        assert np.abs(got.astype(int) - rgb).max() <= 1, depth


def test_an_avif_with_alpha_is_shown_on_black_like_a_png(tmp_path: Path) -> None:
    rgb = patches()
    opacity = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (48, 1))
    rgba = np.dstack([rgb, opacity])
    got = read(write(tmp_path, "alpha.avif", avif(rgba)))
    png = tmp_path / "alpha.png"
    png.write_bytes(cv2.imencode(".png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))[1].tobytes())
    assert np.abs(got.astype(int) - read(png)).max() <= 1
    assert got[:, 0].max() == 0 and np.array_equal(got[:, -1], rgb[:, -1])


def test_an_avif_is_turned_and_mirrored_as_its_header_says(tmp_path: Path) -> None:
    """HEIF's irot (a quarter turn anticlockwise) and imir (0: top and bottom exchanged, 1: left
    and right), which OpenCV's reader leaves to the caller: a phone's portrait came out lying down."""
    rgb = patches()
    plain = avif(rgb)
    turned = write(tmp_path, "irot.avif", with_property(plain, b"irot", 1))
    assert np.array_equal(read(turned, 48, 64), np.rot90(rgb))
    for axis in (0, 1):
        mirrored = write(tmp_path, f"imir{axis}.avif", with_property(plain, b"imir", axis))
        assert np.array_equal(read(mirrored), cv2.flip(rgb, axis)), axis


def test_an_avif_in_display_p3_is_read_in_srgb(tmp_path: Path) -> None:
    """AVIF names its colours with CICP numbers (nclx) rather than an ICC profile: primaries 12
    with sRGB's transfer (13) is Display P3, as a phone or an editor writes it."""
    rgb = patches()
    got = read(write(tmp_path, "p3.avif", with_cicp(avif(rgb), 12, 13)))
    assert np.abs(got.astype(int) - expected(rgb, P3_TO_XYZ, _decode_srgb)).max() <= 1
    srgb = read(write(tmp_path, "srgb.avif", with_cicp(avif(rgb), 1, 13)))
    assert np.array_equal(srgb, rgb)


def test_an_hdr_avif_is_brought_to_sdr_like_an_hdr_background_video(tmp_path: Path) -> None:
    """BT.2020 with PQ's transfer (nclx 9/16), as HDR photos are written: PQ's code for SDR's white
    (203 nits, 148 of 255) is white behind an SDR video, not the grey it was read as."""
    grey = np.full((48, 64, 3), 148, np.uint8)
    got = read(write(tmp_path, "pq.avif", with_cicp(avif(grey), 9, 16)))
    assert np.abs(got.astype(int) - 255).max() <= 3
    hlg = read(write(tmp_path, "hlg.avif", with_cicp(avif(np.full((48, 64, 3), 191, np.uint8)), 9, 18)))
    assert hlg.min() >= 252  # HLG's reference white is 75% of its signal


def test_an_avif_with_exif_after_a_short_header_is_read(tmp_path: Path) -> None:
    """How libavif writes a photo with Exif and no ICC profile: a header of a few hundred bytes,
    the Exif after the picture.  OpenCV's reader parses only the first 500 bytes to tell whether a
    file is AVIF, fails for want of the Exif, and declines it (``imread`` gives None); 15 of 16 of
    Microsoft's sample AVIFs were refused so.  The picture, in one piece and lossless, is the same
    coded picture as a plain AVIF's, taken out of one OpenCV wrote."""
    rgb = patches()
    plain = write(tmp_path, "plain.avif", avif(rgb))
    with open(plain, "rb") as f:
        header = heif.read_header(f, len(plain.read_bytes()))
        coded = heif.item_bytes(f, header, header.picture.tiles[0])
    assert header.cicp is not None
    exif = bytes(4) + b"MM\0*" + struct.pack(">IHI", 8, 0, 0)  # no offset, big-endian TIFF, an empty IFD
    data = heic(rgb, av1=(header.picture.tiles[0].config, coded), nclx=header.cicp, exif=exif)
    assert data.find(b"mdat") < 500 and data.rfind(b"MM\0*") > 500
    path = write(tmp_path, "exif.avif", data)
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED) is None  # OpenCV's own reader declines it
    assert inspect_background(path).kind == "image"
    assert np.array_equal(read(path), rgb)


def test_avif_headers_are_checked_before_anything_is_decoded(tmp_path: Path) -> None:
    data = avif(patches())
    cut = write(tmp_path, "cut.avif", data[: len(data) - 50])
    with pytest.raises(CorruptBackground, match="cut short"):
        inspect_background(cut)
    at = data.find(b"ispe") + 8
    huge = write(tmp_path, "huge.avif", data[:at] + struct.pack(">II", 30000, 30000) + data[at + 8:])
    with pytest.raises(BackgroundTooLarge):
        inspect_background(huge)
    heic = write(tmp_path, "photo.heic", data[:8] + b"heic" + data[12:])  # a HEIC holding AV1
    with pytest.raises(CorruptBackground, match="not HEVC"):
        inspect_background(heic)


def test_an_avif_whose_header_understates_its_picture_is_refused_before_decoding(tmp_path: Path) -> None:
    """The decoder allocates for the frame size the AV1 bitstream declares, not the header's: a
    9 kB file saying 8x6 over a 6000x4000 frame passed the limits and took 360 MB to decode."""
    for name, data in (("libavif", avif(patches())), ("ffmpeg", ffmpeg_avif(patches()))):
        assert inspect_background(write(tmp_path, f"{name}.avif", data)).width == 64
        at = data.find(b"ispe") + 8
        small = write(tmp_path, f"{name}-small.avif", data[:at] + struct.pack(">II", 8, 6) + data[at + 8:])
        with pytest.raises(CorruptBackground, match="holds AV1 frames of up to 64x48"):
            inspect_background(small)


def ffmpeg_avif(*pictures: np.ndarray) -> bytes:
    """An AVIF as FFmpeg writes it (SVT-AV1): its AV1 sequence header is the full one, with
    operating points, where libavif's is the reduced one of a still picture.  More than one picture
    makes an animated AVIF (``avis``) at 10 frames/s: a still item (the first picture) and the sequence.

    Encoded in a process of its own: SVT-AV1 run as root makes the calling process SCHED_FIFO at
    priority 99, and every process it starts after inherits that (the service stacks of later tests
    then starved their own threads, and jobs stalled for minutes)."""
    height, width = pictures[0].shape[:2]
    script = (
        "import io, sys, av, numpy as np\n"
        "h, w = int(sys.argv[1]), int(sys.argv[2])\n"
        "data = np.frombuffer(sys.stdin.buffer.read(), np.uint8).reshape(-1, h, w, 3)\n"
        "out = io.BytesIO()\n"
        "with av.open(out, 'w', format='avif') as container:\n"
        "    stream = container.add_stream('libsvtav1', rate=10)\n"
        "    stream.width, stream.height, stream.pix_fmt = w, h, 'yuv420p'\n"
        "    for rgb in data:\n"
        "        container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format='rgb24')))\n"
        "    container.mux(stream.encode())\n"
        "sys.stdout.buffer.write(out.getvalue())\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(height), str(width)],
                          input=np.ascontiguousarray(np.stack(pictures)).tobytes(),
                          capture_output=True, timeout=120, check=True)
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
    return done.stdout


def test_an_animated_avif_plays_its_sequence_not_its_still_picture(tmp_path: Path) -> None:
    """FFmpeg lists an animated AVIF's still picture before its sequence: read as the first stream,
    a background of ten pictures was one, and so was the same file sent as the video."""
    levels = [20 + 22 * i for i in range(10)]
    data = ffmpeg_avif(*(np.full((48, 64, 3), level, np.uint8) for level in levels))
    assert data[8:12] == b"avis"
    path = write(tmp_path, "anim.avif", data)
    info = inspect_background(path)
    assert (info.kind, info.frames) == ("video", 10)
    source = open_background(str(path), 64, 48)
    try:
        shown = source.frames(np.zeros((3, 48, 64, 3), np.uint8), [0.05, 0.45, 0.95])
    finally:
        source.close()
    assert np.abs(shown.mean(axis=(1, 2, 3)) - [levels[0], levels[4], levels[9]]).max() < 6
    video = inspect_video(path)
    assert (video.frames, video.duration_s, video.fps) == (10, 1.0, 10)


def test_damaged_avif_headers_are_refused_cleanly(tmp_path: Path) -> None:
    """Bytes of the header changed at random: each file is read or refused with a Backdrop error,
    never another exception."""
    data = avif(patches())
    header_end = data.find(b"mdat")
    rng = random.Random(7)
    refused = 0
    for n in range(200):
        damaged = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(0, header_end)] = rng.randrange(256)
        path = write(tmp_path, f"d{n}.avif", bytes(damaged))
        try:
            inspect_background(path)
            read(path)
        except BackdropError:
            refused += 1
    assert 20 < refused < 200  # much damage is caught; the rest reads as some picture

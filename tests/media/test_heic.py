"""HEIC backgrounds (an iPhone's photos): checked from their headers, decoded tile by tile by
FFmpeg's HEVC decoder, assembled, turned and brought into sRGB.

No library here writes HEIC, so ``heicfile.heic`` does (tests/heicfile.py)."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from heicfile import heic
from test_icc import P3, P3_TO_XYZ, _decode_srgb, expected, patches, read

from service.errors import (
    BackdropError,
    BackgroundTooLarge,
    CorruptBackground,
    NotAVideo,
    UnsupportedBackground,
)
from service.media.inspect import inspect_background, inspect_video


def big_patches() -> np.ndarray:
    """``patches`` at twice the size (128x96): 2x2 tiles of 64."""
    return cv2.resize(patches(), (128, 96), interpolation=cv2.INTER_NEAREST)


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def close(a: np.ndarray, b: np.ndarray, most: int = 3) -> bool:
    """Within ``most`` levels (8-bit YUV and back) more than 3 pixels from the patches' edges, every
    32 pixels (4:2:0 colour is halved, then interpolated, there)."""
    ys, xs = np.arange(a.shape[0]), np.arange(a.shape[1])
    near = lambda v: np.minimum(v % 32, 32 - v % 32) < 3  # noqa: E731
    inner = ~near(ys)[:, None] & ~near(xs)[None, :]
    diff = np.abs(a.astype(int) - b.astype(int)).max(axis=-1)
    return bool(diff[inner].max() <= most)


def test_a_heic_in_one_piece_and_in_tiles_reads_as_the_picture(tmp_path: Path) -> None:
    """An iPhone cuts its photo into 512x512 tiles, the last row and column running past the
    picture: each is decoded, put in its place, and the picture cropped out."""
    rgb = big_patches()
    whole = write(tmp_path, "whole.heic", heic(rgb))
    tiled = write(tmp_path, "tiled.heic", heic(rgb, tile=64))  # 2x2 tiles of 64 over 128x96
    info = inspect_background(tiled)
    assert (info.kind, info.width, info.height) == ("image", 128, 96)
    one, many = read(whole, 128, 96), read(tiled, 128, 96)
    assert close(one, rgb) and close(many, rgb) and close(one, many, 1)


@pytest.mark.parametrize("size", [(100, 60), (1596, 1064)])
def test_a_heic_of_any_width_is_read(tmp_path: Path, size: tuple[int, int]) -> None:
    """Widths that are not a multiple of 64 (a 1596x1064 photo from a converter): the decoder
    checks its pixel limit against the width rounded up to its stride, and a limit of exactly the
    picture's size refused them all ("cannot be decoded"); phones' 512x512 tiles hid it."""
    width, height = size
    rgb = np.empty((height, width, 3), np.uint8)  # smooth ramps: 4:2:0 colour loses nothing
    rgb[..., 0] = np.linspace(30, 220, width, dtype=np.uint8)[None, :]
    rgb[..., 1] = np.linspace(200, 40, height, dtype=np.uint8)[:, None]
    rgb[..., 2] = 90
    got = read(write(tmp_path, "odd.heic", heic(rgb)), width, height)
    diff = np.abs(got.astype(int) - rgb.astype(int))
    assert diff.max() <= 6 and diff.mean() < 2  # limited-range YUV and back


def test_a_narrow_heic_in_one_wider_tile_is_read(tmp_path: Path) -> None:
    """A picture 29 wide in one tile 64 wide, as libheif writes a small one: refused by the rule
    that tiles are at most twice the picture, which now allows one coding block more."""
    rgb = np.ascontiguousarray(big_patches()[:, 40:69])  # 96 high, 29 wide: 2 tiles of 64 down
    got = read(write(tmp_path, "narrow.heic", heic(rgb, tile=64)), 29, 96)
    assert got.shape == rgb.shape and np.abs(got.astype(int) - rgb.astype(int)).mean() < 3  # 4:2:0 at the edges


def test_a_heic_s_own_colour_range_is_honoured(tmp_path: Path) -> None:
    """Full-range YUV, as phones write it, said by the header's nclx: read as the bitstream's
    default (limited range) it came out with its contrast raised, darks crushed."""
    rgb = big_patches()
    got = read(write(tmp_path, "full.heic", heic(rgb, full_range=True)), 128, 96)
    assert close(got, rgb)


def test_a_heic_is_turned_and_its_display_p3_profile_applied(tmp_path: Path) -> None:
    rgb = big_patches()
    turned = read(write(tmp_path, "irot.heic", heic(rgb, tile=64, irot=3)), 96, 128)  # 270° anticlockwise
    assert close(turned, np.rot90(rgb, 3))
    plain = read(write(tmp_path, "plain.heic", heic(rgb)), 128, 96)
    p3 = read(write(tmp_path, "p3.heic", heic(rgb, icc=P3)), 128, 96)
    assert np.abs(p3.astype(int) - expected(plain, P3_TO_XYZ, _decode_srgb)).max() <= 1


def test_a_heic_is_cut_to_its_clean_aperture_before_it_is_turned(tmp_path: Path) -> None:
    """``clap`` (a camera's crop, kept as a property): cut out first, then ``irot``, as MIAF orders
    them; the whole coded picture was shown."""
    rgb = big_patches()
    got = read(write(tmp_path, "clap.heic", heic(rgb, tile=64, crop=(10, 6, 50, 40), irot=1)), 40, 50)
    assert got.shape == (50, 40, 3)
    assert np.abs(got.astype(int) - np.rot90(rgb[6:46, 10:60])).mean() < 2


def test_a_heic_with_an_alpha_plane_is_shown_on_black(tmp_path: Path) -> None:
    """A cut-out (a sticker, a product shot) saved as HEIC: its alpha plane, an auxiliary HEVC
    picture, is applied as a PNG's or an AVIF's is; what lay under the see-through part showed."""
    rgb = big_patches()
    alpha = np.zeros(rgb.shape[:2], np.uint8)
    alpha[:, 40:] = np.linspace(0, 255, 88).astype(np.uint8)[None, :]
    got = read(write(tmp_path, "alpha.heic", heic(rgb, tile=64, alpha=alpha)), 128, 96)
    plain = read(write(tmp_path, "plain.heic", heic(rgb, tile=64)), 128, 96)
    want = (plain * (alpha[..., None] / 255) + 0.5).astype(np.uint8)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    assert got[:, :40].max() == 0 and np.array_equal(got[:, -1], plain[:, -1])
    # colours stored already multiplied by the alpha (``prem``): not multiplied again
    premultiplied = heic(np.ascontiguousarray(want), tile=64, alpha=alpha, premultiplied=True)
    again = read(write(tmp_path, "prem.heic", premultiplied), 128, 96)
    assert np.abs(again.astype(int) - want.astype(int)).mean() < 1 and again[:, 100:].mean() > 0.9 * want[:, 100:].mean()


def test_a_heic_whose_picture_runs_to_the_end_of_the_file_is_read(tmp_path: Path) -> None:
    """An item location of length 0 means "to the end of the file": reading that as a length
    asked Python for 2**62 bytes (MemoryError)."""
    rgb = big_patches()
    data = heic(rgb)
    at = data.find(b"iloc") + 4 + 4 + 2 + 2  # version and flags, sizes, count: then item 1's entry
    item, method, ref, extents, offset, length = struct.unpack_from(">HHHHII", data, at)
    assert (item, extents, length) == (1, 1, len(data) - offset)
    to_end = data[:at + 12] + bytes(4) + data[at + 16:]
    got = read(write(tmp_path, "to-end.heic", to_end), 128, 96)
    assert np.array_equal(got, read(write(tmp_path, "plain.heic", data), 128, 96))


def test_heic_headers_that_do_not_add_up_are_refused(tmp_path: Path) -> None:
    rgb = big_patches()
    data = heic(rgb, tile=64)
    with pytest.raises(CorruptBackground, match="cut short"):
        inspect_background(write(tmp_path, "cut.heic", data[:-40]))
    with pytest.raises(CorruptBackground, match="has 4 tiles"):
        inspect_background(write(tmp_path, "count.heic", heic(rgb, tile=64, grid=(3, 3))))
    with pytest.raises(CorruptBackground, match="do not make"):
        inspect_background(write(tmp_path, "cover.heic", heic(rgb, tile=64, tile_size=(16, 16))))
    with pytest.raises(CorruptBackground, match="do not make"):  # one tile, declared far larger than the picture
        inspect_background(write(tmp_path, "vast.heic", heic(rgb[:64, :64], tile=64, tile_size=(30000, 30000))))
    with pytest.raises(BackgroundTooLarge):
        inspect_background(write(tmp_path, "huge.heic", heic(rgb, declared=(40000, 30000))))


def test_a_heic_tile_coded_larger_than_its_header_says_is_refused(tmp_path: Path) -> None:
    """The header says 32x32 tiles over a 64x48 picture: tiles whose HEVC is 640x640 are refused by
    the decoder before it allocates (``max_pixels``: the declared size and a stride's margin), and
    tiles of 64x64, within that margin, once decoded."""
    bomb = cv2.resize(patches(), (1280, 1280), interpolation=cv2.INTER_NEAREST)
    path = write(tmp_path, "bomb.heic", heic(bomb, tile=640, tile_size=(32, 32), declared=(64, 48)))
    assert inspect_background(path).width == 64
    with pytest.raises(CorruptBackground, match="cannot be decoded"):  # not decoded
        read(path, 64, 48)
    liar = write(tmp_path, "liar.heic", heic(big_patches(), tile=64, tile_size=(32, 32), declared=(64, 48)))
    with pytest.raises(CorruptBackground, match="coded at 64x64, its header says 32x32"):
        read(liar, 64, 48)
    smaller = write(tmp_path, "smaller.heic", heic(big_patches(), declared=(256, 192)))
    with pytest.raises(CorruptBackground, match="coded at 128x96, its header says 256x192"):
        read(smaller, 128, 96)


@pytest.mark.parametrize("brand", [b"avci", b"mif3", b"jpeg"])
def test_a_heif_picture_coded_otherwise_is_refused_as_such(tmp_path: Path, brand: bytes) -> None:
    """HEIF holding H.264 (``avci``), in its compact form (``mif3``) or JPEG: refused as a HEIF
    picture this service does not read, where it was opened as a video and refused as "corrupt or
    truncated" or as having "no video stream"."""
    data = heic(big_patches())
    assert data[8:12] == b"heic" and data[16:24] == b"mif1heic"
    path = write(tmp_path, "other.heif", data[:8] + brand + data[12:20] + brand + data[24:])
    with pytest.raises(UnsupportedBackground, match=f"HEIF picture \\({brand.decode()}\\)"):
        inspect_background(path)
    with pytest.raises(NotAVideo, match="still image"):
        inspect_video(path)


def test_damaged_heic_files_are_refused_cleanly(tmp_path: Path) -> None:
    """Bytes changed at random, in the header and in the HEVC data, and files cut short: each is
    read or refused with a Backdrop error, never another exception."""
    rng = random.Random(11)
    sources = [heic(big_patches(), tile=64), heic(big_patches(), icc=P3, irot=1)]
    refused = 0
    for n in range(150):
        damaged = bytearray(rng.choice(sources))
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        if n % 5 == 0:
            damaged = damaged[:rng.randrange(len(damaged))]
        path = write(tmp_path, f"d{n}.heic", bytes(damaged))
        try:
            inspect_background(path)
            read(path, 128, 96)
        except BackdropError:
            refused += 1
    assert 10 < refused < 150

"""Blur strength of a ``blur`` background (service/media/background.py, service/options.py):
``blur`` is ``blur:0.3`` (the blur the service always had), a larger strength blurs more, and a
malformed or out-of-range strength is ``invalid_parameter`` wherever a spec is read.  A picture
with transparency is shown on black."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from bombs import chunk
from conftest import data_path

from service.errors import BackdropError
from service.media.background import BlurBackground, open_background
from service.options import background_kind


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """A real photograph as a batch of one RGB frame at 640x360."""
    image = cv2.imread(str(data_path("backgrounds", "Bridge_by_Sander_Klootwijk.jpg")), cv2.IMREAD_COLOR)
    assert image is not None
    return cv2.cvtColor(cv2.resize(image, (640, 360), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)[None]


def _blurred(spec: str, frames: np.ndarray) -> np.ndarray:
    source = open_background(spec, frames.shape[2], frames.shape[1])
    try:
        return source.frames(frames, [0.0])[0]
    finally:
        source.close()


def _sharpness(image: np.ndarray) -> float:
    """Variance of the Laplacian: falls as a picture gets blurrier."""
    return float(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())


def test_blur_is_the_default_strength(frames: np.ndarray) -> None:
    """``blur`` and ``blur:0.3`` both give the blur the service had before it took a strength."""
    before = BlurBackground(frames.shape[2], frames.shape[1]).frames(frames, [0.0])[0]
    assert np.array_equal(_blurred("blur", frames), before)
    assert np.array_equal(_blurred("blur:0.3", frames), before)


def test_a_larger_strength_blurs_more(frames: np.ndarray) -> None:
    light, default, strong = (_sharpness(_blurred(s, frames)) for s in ("blur:0.05", "blur", "blur:0.6"))
    assert light > default > strong
    assert strong < 0.9 * default


@pytest.mark.parametrize("spec", ["blur", "blur:0.6", "BLUR:1", " blur:0.05 "])
def test_blur_specs_are_blur(spec: str) -> None:
    assert background_kind(spec) == "blur"


@pytest.mark.parametrize("spec", ["blur:", "blur:abc", "blur:0", "blur:1.5", "blur:nan", "blur:inf", "blur:-0.3",
                                  "blur:\u0660.\u0665"])
def test_malformed_strengths_are_refused(spec: str, frames: np.ndarray) -> None:
    for read in (background_kind, lambda s: open_background(s, 64, 36)):
        with pytest.raises(BackdropError) as exc:
            read(spec)
        assert exc.value.code == "invalid_parameter"


def test_the_worker_spec_carries_the_strength(tmp_path: Path) -> None:
    """A job's blur strength (``Background.value``, set by the API) becomes the worker's ``blur:<value>``."""
    from service.jobs import Background, Job
    from service.workers.tasks import background_spec

    assert background_spec(Job(background=Background(kind="blur", value="0.6")), tmp_path) == "blur:0.6"
    assert background_spec(Job(background=Background(kind="blur")), tmp_path) == "blur"


@pytest.mark.parametrize("name,depth", [("bg.png", np.uint8), ("bg16.png", np.uint16), ("bg.webp", np.uint8)])
def test_a_transparent_picture_is_shown_on_black(tmp_path: Path, name: str, depth: type) -> None:
    """What a transparent pixel stores under its opacity is anything (here red); it used to show."""
    full = np.iinfo(depth).max
    bgra = np.zeros((60, 80, 4), depth)
    bgra[..., 2] = full  # red, hidden
    bgra[20:40, 20:60] = (full, full // 2, 0, full)  # an opaque blue-ish box
    bgra[45:55, 20:60] = (full, full, full, full // 2)  # white at half opacity
    path = tmp_path / name
    assert cv2.imwrite(str(path), bgra, [cv2.IMWRITE_WEBP_QUALITY, 101])  # lossless WebP
    source = open_background(str(path), 80, 60)
    plate = source.frames(np.zeros((1, 60, 80, 3), np.uint8), [0.0])[0]
    source.close()
    assert plate[5, 5].tolist() == [0, 0, 0]
    assert np.abs(plate[30, 40].astype(int) - [0, 127, 255]).max() <= 1
    assert np.abs(plate[50, 40].astype(int) - 128).max() <= 1
    # an opaque picture is as it was
    assert cv2.imwrite(str(tmp_path / "opaque.png"), bgra[..., :3])
    source = open_background(str(tmp_path / "opaque.png"), 80, 60)
    opaque = source.frames(np.zeros((1, 60, 80, 3), np.uint8), [0.0])[0]
    source.close()
    want = cv2.cvtColor(bgra[..., :3], cv2.COLOR_BGR2RGB)
    assert np.array_equal(opaque, want if depth == np.uint8 else (want // 257).astype(np.uint8))


def _plate(path: Path, width: int, height: int) -> np.ndarray:
    source = open_background(str(path), width, height)
    plate = source.frames(np.zeros((1, height, width, 3), np.uint8), [0.0])[0].copy()
    source.close()
    return plate


def _with_chunk(png: bytes, tag: bytes, data: bytes) -> bytes:
    """A PNG with one more chunk before its image data."""
    at = png.index(b"IDAT") - 4
    return png[:at] + chunk(tag, data) + png[at:]


def test_a_png_key_colour_is_see_through(tmp_path: Path) -> None:
    """Grey PNGs (any depth) and 16-bit RGB ones mark one colour see-through (``tRNS``) instead of
    carrying alpha; OpenCV ignores it, and what the file hides showed its stored colour."""
    grey = np.full((60, 80), 200, np.uint8)
    grey[20:40, 20:60] = 90
    png = cv2.imencode(".png", grey)[1].tobytes()
    (tmp_path / "grey.png").write_bytes(_with_chunk(png, b"tRNS", (200).to_bytes(2, "big")))
    plate = _plate(tmp_path / "grey.png", 80, 60)
    assert plate[5, 5].tolist() == [0, 0, 0] and plate[30, 40].tolist() == [90, 90, 90]
    bilevel = cv2.imencode(".png", np.where(grey == 200, 255, 0).astype(np.uint8), [cv2.IMWRITE_PNG_BILEVEL, 1])[1]
    assert bilevel.tobytes()[24] == 1  # one bit a pixel: its key 1 is white
    (tmp_path / "bits.png").write_bytes(_with_chunk(bilevel.tobytes(), b"tRNS", (1).to_bytes(2, "big")))
    plate = _plate(tmp_path / "bits.png", 80, 60)
    assert plate[5, 5].tolist() == [0, 0, 0] and plate[30, 40].tolist() == [0, 0, 0]
    (tmp_path / "opaque.png").write_bytes(bilevel.tobytes())
    assert _plate(tmp_path / "opaque.png", 80, 60)[5, 5].tolist() == [255, 255, 255]
    deep = np.zeros((60, 80, 3), np.uint16)
    deep[...] = (1000, 2000, 3000)  # BGR, the key
    deep[20:40, 20:60] = (65535, 0, 0)  # opaque blue
    key = b"".join(v.to_bytes(2, "big") for v in (3000, 2000, 1000))  # R, G, B
    (tmp_path / "deep.png").write_bytes(_with_chunk(cv2.imencode(".png", deep)[1].tobytes(), b"tRNS", key))
    plate = _plate(tmp_path / "deep.png", 80, 60)
    assert plate[5, 5].tolist() == [0, 0, 0] and plate[30, 40].tolist() == [0, 0, 255]


def _exif(orientation: int, prefix: bytes = b"") -> bytes:
    """Exif data (big-endian TIFF) with one tag, the orientation."""
    return prefix + b"MM\x00\x2a\x00\x00\x00\x08\x00\x01" + bytes.fromhex("01120003 00000001") + \
        orientation.to_bytes(2, "big") + bytes(2) + bytes(4)


def _webp(bgra: np.ndarray, exif: bytes) -> bytes:
    """A lossless WebP in the extended layout (VP8X), with an EXIF chunk after its picture."""
    simple = cv2.imencode(".webp", bgra, [cv2.IMWRITE_WEBP_QUALITY, 101])[1].tobytes()
    h, w = bgra.shape[:2]
    vp8x = b"VP8X" + (10).to_bytes(4, "little") + bytes([0x18, 0, 0, 0]) + (w - 1).to_bytes(3, "little") + \
        (h - 1).to_bytes(3, "little")
    body = b"WEBP" + vp8x + simple[12:] + b"EXIF" + len(exif).to_bytes(4, "little") + exif + bytes(len(exif) % 2)
    return b"RIFF" + len(body).to_bytes(4, "little") + body


@pytest.mark.parametrize("orientation", [2, 3, 4, 5, 6, 7, 8])
def test_a_turned_transparent_picture_keeps_its_transparency(tmp_path: Path, orientation: int) -> None:
    """A PNG or WebP with alpha and an Exif orientation: OpenCV's colour read turned it, its read
    with alpha did not, so the transparency was dropped (its shape differed) or laid on crooked."""
    bgra = np.zeros((60, 80, 4), np.uint8)
    bgra[..., 2] = 255  # red, hidden
    bgra[10:20, 5:15] = (255, 0, 0, 255)  # an opaque blue box near the top left corner
    shown = np.zeros((60, 80, 3), np.uint8)
    shown[10:20, 5:15] = (0, 0, 255)
    want = {2: shown[:, ::-1], 3: shown[::-1, ::-1], 4: shown[::-1], 5: shown.transpose(1, 0, 2),
            6: np.rot90(shown, -1), 7: shown[::-1, ::-1].transpose(1, 0, 2),
            8: np.rot90(shown, 1)}[orientation]
    png = cv2.imencode(".png", bgra)[1].tobytes()
    (tmp_path / "turned.png").write_bytes(_with_chunk(png, b"eXIf", _exif(orientation)))
    (tmp_path / "turned.webp").write_bytes(_webp(bgra, _exif(orientation)))
    (tmp_path / "prefixed.webp").write_bytes(_webp(bgra, _exif(orientation, b"Exif\x00\x00")))
    h, w = want.shape[:2]
    for name in ("turned.png", "turned.webp", "prefixed.webp"):
        assert np.array_equal(_plate(tmp_path / name, w, h), want), name


def _bmp(pixels: np.ndarray, masks: tuple[int, ...], header: int = 124, compression: int = 3) -> bytes:
    """A BMP of 16- or 32-bit ``pixels`` (rows top first, stored bottom first) with its colour masks
    (red, green, blue and alpha) in a V5 (124), V4 (108) or V3 (56) header."""
    import struct

    height, width = pixels.shape
    bits = pixels.dtype.itemsize * 8
    stride = (width * bits + 31) // 32 * 4
    rows = b"".join(row.astype(f"<u{bits // 8}").tobytes().ljust(stride, b"\0") for row in pixels[::-1])
    info = struct.pack("<IiiHHIIiiII4I", header, width, height, 1, bits, compression, len(rows), 2835, 2835, 0, 0,
                       *masks).ljust(header, b"\0")[:header]
    return b"BM" + struct.pack("<IHHI", 14 + header + len(rows), 0, 0, 14 + header) + info + rows


def test_bmp_colour_masks_and_alpha(tmp_path: Path) -> None:
    """16- and 32-bit BMPs lay their colours out by bit masks: OpenCV read a 32-bit one with other
    masks in wrong colours, refused 16-bit ones with a V3-V5 header, and dropped the alpha."""
    want = np.zeros((6, 10, 3), np.uint8)
    want[1:3, 2:8] = (255, 128, 0)  # orange, opaque; the rest see-through, storing white
    orange = want[..., 0] > 0
    # alpha in the low byte, then blue, green, red (masks bmpsuite's rgb32bf-style files use)
    wide = np.where(orange, (0xFF << 24) | (0x80 << 16) | (0 << 8) | 0xFF, 0xFFFFFF00).astype(np.uint32)
    (tmp_path / "wide.bmp").write_bytes(_bmp(wide, (0xFF000000, 0xFF0000, 0xFF00, 0xFF)))
    # 5-6-5 without alpha: white stays white
    packed = np.where(orange, (31 << 11) | (32 << 5), 0xFFFF).astype(np.uint16)
    (tmp_path / "packed.bmp").write_bytes(_bmp(packed, (0xF800, 0x7E0, 0x1F, 0), header=56))
    # BI_RGB at 32 bits with alpha in the fourth byte
    plain = np.where(orange, 0xFFFF8000, 0x00FFFFFF).astype(np.uint32)
    (tmp_path / "plain.bmp").write_bytes(_bmp(plain, (0, 0, 0, 0), header=108, compression=0))
    for name in ("wide.bmp", "plain.bmp"):
        assert np.abs(_plate(tmp_path / name, 10, 6).astype(int) - want).max() <= 1, name
    white = np.where(orange[..., None], want, 255)
    assert np.abs(_plate(tmp_path / "packed.bmp", 10, 6).astype(int) - white).max() <= 2
    plain_opaque = np.where(orange, 0x00FF8000, 0x00FFFFFF).astype(np.uint32)  # every alpha 0: opaque
    (tmp_path / "opaque.bmp").write_bytes(_bmp(plain_opaque, (0, 0, 0, 0), header=40, compression=0))
    assert np.abs(_plate(tmp_path / "opaque.bmp", 10, 6).astype(int) - white).max() <= 1


def _animated(path: Path) -> Path:
    """Two frames with a red (APNG) or white (GIF) stored under full transparency around an opaque box."""
    frames = []
    for _ in range(2):
        rgba = np.zeros((60, 80, 4), np.uint8)
        rgba[..., 0] = 255
        rgba[20:40, 20:60] = (0, 128, 255, 255)
        frames.append(rgba)
    if path.suffix == ".gif":
        animation = cv2.Animation()
        animation.frames = [cv2.cvtColor(f, cv2.COLOR_RGBA2BGRA) for f in frames]
        animation.durations = [200, 200]
        assert cv2.imwriteanimation(str(path), animation)
        return path
    import av

    with av.open(str(path), "w", format="apng") as out:
        stream = out.add_stream("apng", rate=5)
        stream.width, stream.height, stream.pix_fmt = 80, 60, "rgba"
        for k, rgba in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgba, format="rgba")
            frame.pts = k
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


@pytest.mark.parametrize("name", ["anim.png", "anim.gif"])
def test_a_transparent_animation_is_shown_on_black(tmp_path: Path, name: str) -> None:
    source = open_background(str(_animated(tmp_path / name)), 80, 60)
    assert type(source).__name__ == "VideoBackground"
    plate = source.frames(np.zeros((2, 60, 80, 3), np.uint8), [0.0, 0.2])
    source.close()
    assert (plate[:, 5, 5] == 0).all()
    assert np.abs(plate[:, 30, 40].astype(int) - [0, 128, 255]).max() <= 16  # GIF's palette rounds


def test_a_closed_background_video_leaves_no_decoder_threads(tmp_path: Path) -> None:
    """Closing a background video ends its decoder: its frame threads (FFmpeg names them
    ``av:<codec>:df<n>``) lived on, with their frames, until the garbage collector came round, and
    a later job in the same process counted them as its own."""
    import os
    import re

    def decoder_threads() -> set[str]:
        """The thread ids of the process's FFmpeg frame threads."""
        found = set()
        for task in os.listdir("/proc/self/task"):
            try:
                if re.fullmatch(r"av:\w+:df\d+", Path(f"/proc/self/task/{task}/comm").read_text().strip()):
                    found.add(task)
            except OSError:
                pass
        return found

    # a decoder an earlier test left to the garbage collector has frame threads of its own: only
    # this background's count (one left in CI, with the suite's earlier tests in the process)
    before = decoder_threads()
    source = open_background(str(_animated(tmp_path / "anim.png")), 80, 60, threads=3)
    source.frames(np.zeros((1, 60, 80, 3), np.uint8), [0.0])
    assert decoder_threads() - before  # FFmpeg's frame threads are there while it decodes
    source.close()
    assert not decoder_threads() - before


def _gif(indices: np.ndarray, palette: list[tuple[int, int, int]], screen: tuple[int, int], background: int,
         at: tuple[int, int] = (0, 0)) -> bytes:
    """A still GIF written byte by byte: ``indices`` (a picture of palette indices placed at ``at``,
    left and top, on the canvas), a global palette of ``palette`` (a power of two, at least 2), a
    canvas of ``screen`` (width, height) and a background colour index ``background``, which may
    lie past the palette.  Its LZW data sends a clear code before every pixel, so the code width
    never grows."""
    height, width = indices.shape
    bits = max(2, (len(palette) - 1).bit_length())
    clear, end, width_bits = 1 << bits, (1 << bits) + 1, bits + 1
    codes = [c for i in indices.ravel().tolist() for c in (clear, i)] + [end]
    stream = sum(c << (k * width_bits) for k, c in enumerate(codes))
    data = stream.to_bytes((len(codes) * width_bits + 7) // 8, "little")
    blocks = b"".join(bytes([len(data[i : i + 255])]) + data[i : i + 255] for i in range(0, len(data), 255))
    table = b"".join(bytes(c) for c in palette)
    size_field = (len(palette) - 1).bit_length() - 1
    place = b"".join(v.to_bytes(2, "little") for v in (*at, width, height))
    return (b"GIF89a" + screen[0].to_bytes(2, "little") + screen[1].to_bytes(2, "little")
            + bytes([0x80 | size_field, background, 0]) + table
            + b"," + place + b"\x00" + bytes([bits]) + blocks + b"\x00;")


def test_gifs_that_opencv_refuses_are_read_as_browsers_show_them(tmp_path: Path) -> None:
    """OpenCV asserts on a GIF whose background colour index lies past its palette (web beacons
    are written so) and on one whose picture, placed off its canvas' corner, runs past its edge;
    browsers and FFmpeg show both (the picture cut at the edge, the canvas around it see-through),
    and they were refused ``corrupt_background``.  FFmpeg reads these in OpenCV's place."""
    box = np.zeros((6, 8), np.int64)
    box[2:4, 2:6] = 1
    palette = [(255, 255, 255), (200, 30, 10)]
    (tmp_path / "plain.gif").write_bytes(_gif(box, palette, (8, 6), background=0))
    (tmp_path / "beacon.gif").write_bytes(_gif(box, palette, (8, 6), background=255))
    (tmp_path / "past.gif").write_bytes(_gif(box, palette, (10, 8), background=0, at=(4, 3)))
    assert cv2.imread(str(tmp_path / "plain.gif")) is not None  # the writer above is sound
    for name in ("beacon.gif", "past.gif"):
        assert cv2.imread(str(tmp_path / name)) is None  # what the reader falls back from
    want = np.array(palette, np.uint8)[box]
    assert np.array_equal(_plate(tmp_path / "plain.gif", 8, 6), want)
    assert np.array_equal(_plate(tmp_path / "beacon.gif", 8, 6), want)
    past = _plate(tmp_path / "past.gif", 10, 8)
    assert np.array_equal(past[3:, 4:], want[:5, :6])  # cut at the canvas' edge
    assert (past[:3] == 0).all() and (past[:, :4] == 0).all()  # around it see-through: on black


def test_a_gif_picture_larger_than_its_canvas_is_refused(tmp_path: Path) -> None:
    """A picture wider or taller than the GIF's canvas: FFmpeg decoded it at the canvas' width,
    its rows out of step (a sheared picture, animated GIFs included, exit 0); it is refused at the
    door now, as corrupt."""
    box = np.zeros((6, 8), np.int64)
    (tmp_path / "wide.gif").write_bytes(_gif(box, [(255, 255, 255), (0, 0, 0)], (6, 6), background=0))
    with pytest.raises(BackdropError) as err:
        open_background(str(tmp_path / "wide.gif"), 6, 6)
    assert err.value.code == "corrupt_background"
    assert "larger than its canvas" in str(err.value)


def test_a_background_video_with_a_damaged_packet_plays(tmp_path: Path) -> None:
    """A background video is read as the video is (``probe.decoded_frames``): a damaged packet is
    passed over, not the end of the background (it failed ``corrupt_background``)."""
    import bombs

    clean = bombs.growing_video(tmp_path / "clean.webm", "libvpx", [(64, 48)], per_size=6)  # grey 20, 35, ... at 0.1 s steps
    hurt = bombs.damaged_packets(clean, tmp_path / "hurt.webm", damage={2})  # the picture at 0.2 s
    for path, at_quarter in ((clean, 50), (hurt, 35)):  # at 0.25 s: the picture of 0.2 s, or the one before it
        source = open_background(str(path), 64, 48)
        levels = [float(source.frames(np.zeros((1, 48, 64, 3), np.uint8), [t])[0].mean()) for t in (0.0, 0.25, 0.45)]
        source.close()
        # past the damage the pictures that refer to the lost one may show it: they play on
        assert levels[:2] == pytest.approx([20, at_quarter], abs=4) and abs(levels[2] - at_quarter) > 20, path.name

"""Header inspection (what the API knows without decoding) and the worker's second look as it
decodes: each hostile or odd input gets its precise code, or works."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from fractions import Fraction
from pathlib import Path

import av
import bombs
import numpy as np
import pytest
from conftest import data_path
from videoutil import remux

from service.config import Settings
from service.errors import BackdropError
from service.media.inspect import (
    BackgroundInfo,
    inspect_background,
    inspect_video,
    mp4_video_track,
    ordinary_steps,
    orientation_from_matrix,
    read_image_header,
)
from service.pipeline import ReplaceOptions, replace_background

ROOT = Path(__file__).resolve().parents[2]



#: The child's own peak resident memory.  Not ``ru_maxrss``: Linux keeps it across exec, so a child
#: forked from a large pytest process would report the parent's size.
PEAK_MB = (
    "def peak_mb():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM:'):\n"
    "            return int(line.split()[1]) // 1024\n"
)

def code_of(fn, *args) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(BackdropError) as err:
        fn(*args)
    assert err.value.message
    return err.value.code


def small_frames(count: int = 6, size: tuple[int, int] = (96, 72)) -> list:  # type: ignore[type-arg]
    return bombs.frames_of(data_path("videos", "asl", "bird.mkv"), count, *size)


# --- bombs ----------------------------------------------------------------------------------------
def test_a_side_past_what_decoders_take_is_refused(tmp_path: Path) -> None:
    path = bombs.png(tmp_path / "tall.png", 1, 2_000_000)  # 2 megapixels, but libpng stops at 1,000,000 rows
    assert code_of(inspect_background, path) == "background_too_large"


def test_png_bomb_is_refused_from_its_header(tmp_path: Path) -> None:
    """0.9 MB declaring 30000×30000 (FFmpeg reports it as 0×0, so the old pixel check passed)."""
    path = bombs.png(tmp_path / "bomb.png", 30000, 30000)
    assert path.stat().st_size < 2_000_000
    assert read_image_header(path).width == 30000
    assert code_of(inspect_background, path) == "background_too_large"
    assert code_of(inspect_video, path) == "not_a_video"


def test_16bit_rgba_png_bomb(tmp_path: Path) -> None:
    path = bombs.png(tmp_path / "rgba16.png", 16000, 16000, bombs.RGBA16)
    assert code_of(inspect_background, path) == "background_too_large"


def test_animated_png_bomb(tmp_path: Path) -> None:
    path = bombs.apng(tmp_path / "anim.png", 10000, 10000)
    assert read_image_header(path).frames == 2
    assert code_of(inspect_background, path) == "background_too_large"
    assert code_of(inspect_video, path) == "video_too_large"


def test_animation_limit_is_frames_times_pixels(tmp_path: Path) -> None:
    path = bombs.apng(tmp_path / "anim.png", 200, 100, frames=5)
    assert inspect_background(path).kind == "animated"
    tight = Settings(max_animated_background_pixels=5 * 200 * 100 - 1)
    assert code_of(inspect_background, path, tight) == "background_too_large"


def test_png_in_mov_bomb(tmp_path: Path) -> None:
    big = bombs.png_bytes(16000, 16000, bombs.RGBA16)
    path = bombs.png_in_mov(tmp_path / "bomb.mov", [big], 16000, 16000)
    assert code_of(inspect_video, path) == "video_too_large"
    assert code_of(inspect_background, path) == "background_too_large"


def test_inspection_decodes_nothing(tmp_path: Path) -> None:
    """A MOV declaring 64×64 whose one picture is 3000×3000: the header is all inspection reads
    (decoding would have found the real size)."""
    lying = bombs.png_in_mov(tmp_path / "lying.mov", [bombs.png_bytes(3000, 3000)], 64, 64)
    info = inspect_video(lying)
    assert (info.width, info.height, info.frames) == (64, 64, 1)


@pytest.mark.parametrize(
    "codec,fmt,pix_fmt",
    [("libx264", "mpegts", "yuv420p"), ("libvpx-vp9", "webm", "yuv420p"), ("mjpeg", "avi", "yuvj420p"),
     ("mpeg2video", "mpeg", "yuv420p"), ("libx264", "flv", "yuv420p"), ("libx264", "matroska", "yuv420p"),
     ("mpeg4", "mp4", "yuv420p"), ("mpeg4", "mov", "yuv420p"), ("mpeg4", "3gp", "yuv420p")],
)
def test_containers_are_inspected_without_decoding(tmp_path: Path, codec: str, fmt: str, pix_fmt: str) -> None:
    """FFmpeg's stream probing runs with no decoder: sizes, rates and counts still come out (the
    MPEG-TS and MPEG-PS streams appear only while probing)."""
    from service.media.decode import iter_frames
    from service.media.probe import probe_video

    path = bombs.encode(tmp_path / f"clip.{fmt}", small_frames(5), codec, pix_fmt, fmt)
    info = inspect_video(path)
    assert (info.width, info.height, info.frames, float(info.fps)) == (96, 72, 5, 10.0)
    assert len(list(iter_frames(probe_video(path)))) == 5
    assert inspect_background(path).kind == "video"  # each is a background video too


def test_mpeg_ts_backgrounds_are_videos(tmp_path: Path) -> None:
    """MPEG-TS (HLS segments, a camcorder's .mts, Blu-ray's .m2ts with a time code before each
    packet) has no magic number, only a sync byte every 188 (or 192) bytes: it was taken as a video
    but refused as a background (``unsupported_background``)."""
    for name, options in (("clip.ts", None), ("clip.m2ts", {"mpegts_m2ts_mode": "1"})):
        path = bombs.encode(tmp_path / name, small_frames(5), "libx264", "yuv420p", "mpegts", options=options)
        assert path.read_bytes()[4 if options else 0] == 0x47
        assert inspect_background(path) == BackgroundInfo("video", 96, 72, 5)
    noise = tmp_path / "noise.bin"
    noise.write_bytes(b"\x47" + bytes(187) + b"\x47" + bytes(100))  # two packets' worth is not enough
    assert code_of(inspect_background, noise) == "unsupported_background"


def test_an_encrypted_mp4_is_refused_as_encrypted(tmp_path: Path) -> None:
    """Common Encryption (DRM): the track's sample entry is ``encv``.  Without its key FFmpeg
    cannot open a fragmented one or decode any, and it was refused as "corrupt or truncated"."""
    data = bombs.encode(tmp_path / "clip.mp4", small_frames(5), "libx264", "yuv420p", "mp4").read_bytes()
    at = data.index(b"avc1", data.index(b"stsd"))
    (tmp_path / "drm.mp4").write_bytes(data[:at] + b"encv" + data[at + 4:])
    for inspect in (inspect_video, inspect_background):
        with pytest.raises(BackdropError, match="encrypted") as err:
            inspect(tmp_path / "drm.mp4")
        assert err.value.code == ("unsupported_codec" if inspect is inspect_video else "unsupported_background")
    assert inspect_video(tmp_path / "clip.mp4").frames == 5


def test_an_encrypted_wmv_is_refused_as_encrypted(tmp_path: Path) -> None:
    """Windows Media DRM: FFmpeg opens the file as if plain and its decoder refuses the first packet,
    so the upload was accepted and the job failed as ``corrupt_video``.  The header says so: a
    Content Encryption object, or (PlayReady) a stream marked encrypted."""
    from service.media.asf_header import CONTENT_ENCRYPTION, STREAM_PROPERTIES

    plain = bombs.encode(tmp_path / "clip.wmv", small_frames(5), "wmv2", "yuv420p", "asf")
    data = plain.read_bytes()
    size, count = struct.unpack_from("<QI", data, 16)
    # a Content Encryption object (empty secret, protection type, key id and licence URL) at the
    # header's end: the header grows by its size and counts one more object
    body = struct.pack("<I", 0) + struct.pack("<I", 4) + b"DRM\0" + struct.pack("<I", 1) + b"\0" + struct.pack("<I", 1) + b"\0"
    obj = CONTENT_ENCRYPTION + struct.pack("<Q", 24 + len(body)) + body
    drm = data[:16] + struct.pack("<QI", size + len(obj), count + 1) + data[28:size] + obj + data[size:]
    (tmp_path / "drm.wmv").write_bytes(drm)
    at = data.index(STREAM_PROPERTIES)
    flagged = bytearray(data)
    flagged[at + 73] |= 0x80  # the Encrypted Content flag, bit 15 of the stream's Flags
    (tmp_path / "playready.wmv").write_bytes(bytes(flagged))
    for name in ("drm.wmv", "playready.wmv"):  # (ASF is no background type at all)
        with pytest.raises(BackdropError, match="encrypted") as err:
            inspect_video(tmp_path / name)
        assert err.value.code == "unsupported_codec"
    assert inspect_video(plain).frames == 5


def test_metadata_that_is_not_utf8_is_read(tmp_path: Path) -> None:
    """A title or comment in Latin-1 (an old camera, Photoshop's "®" as 0xA8): PyAV raised
    UnicodeDecodeError while opening the file, and the video was refused as corrupt."""
    from service.media.probe import probe_video

    for fmt in ("mp4", "matroska"):
        clip = bombs.encode(tmp_path / f"clip.{fmt}", small_frames(5), "libx264", "yuv420p", fmt,
                            metadata={"title": "Studio QQ 4.0", "comment": "Studio QQ 4.0"})
        data = clip.read_bytes()
        assert data.count(b"QQ") >= 2
        clip.write_bytes(data.replace(b"QQ", b"\xa8\xa8"))
        info = probe_video(clip)
        assert (info.width, info.height, info.frames) == (96, 72, 5)
        assert inspect_background(clip).kind == "video"


def test_an_init_segment_alone_holds_no_frames(tmp_path: Path) -> None:
    """A DASH/HLS init segment sent without its media segments: headers, no frames.  It was refused
    as too long (the stream's length its header declares: 888 s) or, in WebM, as too many frames
    (60 s at the 1000 a second its time base suggests), not as the empty video it is."""
    import av

    whole = tmp_path / "whole.mp4"
    with av.open(str(whole), "w", options={"movflags": "frag_keyframe+empty_moov+default_base_moof"}) as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 96, 72, "yuv420p"
        for i, image in enumerate(small_frames(5)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    data = bytearray(whole.read_bytes())
    at = data.index(b"mdhd") + 4
    struct.pack_into(">I", data, at + 16, 888 * struct.unpack_from(">I", data, at + 12)[0])  # as a packager writes it
    init = tmp_path / "init.mp4"
    init.write_bytes(bytes(data[:data.index(b"moof") - 4]))
    assert inspect_video(whole).frames == 5
    assert code_of(inspect_video, init) == "corrupt_video"


def test_sizes_only_the_sample_description_records(tmp_path: Path) -> None:
    """MPEG-4 Part 2 (above) and H.263 tracks of MP4/MOV/3GP (old phones and cameras): probing with
    no decoder, FFmpeg leaves their size at 0, so it is read from the track's sample description;
    the worker's first frame agrees.  Where no header holds the size at all (Sorenson H.263 in
    FLV), the video is refused as a codec this service cannot inspect, not as a corrupt file."""
    from service.media.probe import probe_video

    phone = bombs.encode(tmp_path / "phone.3gp", small_frames(5, (176, 144)), "h263", "yuv420p", "3gp")
    info = inspect_video(phone)
    assert (info.width, info.height, info.frames, info.codec) == (176, 144, 5, "h263")
    assert (probe_video(phone).width, probe_video(phone).height) == (176, 144)

    flash = bombs.encode(tmp_path / "old.flv", small_frames(5, (96, 72)), "flv", "yuv420p", "flv")
    with pytest.raises(BackdropError) as err:
        inspect_video(flash)
    assert err.value.code == "unsupported_codec" and "frame size" in err.value.message
    # On2 VP6, Flash's other codec: its tags marked so (this build encodes no VP6), it was corrupt_video
    data = bytearray(flash.read_bytes())
    at = 13  # past the FLV header and the first tag size
    while at + 11 <= len(data):
        if data[at] == 9:  # a video tag: its first byte is the frame type and the codec (4: VP6)
            data[at + 11] = data[at + 11] & 0xF0 | 4
        at += 11 + int.from_bytes(data[at + 1 : at + 4], "big") + 4
    flash.write_bytes(bytes(data))
    with pytest.raises(BackdropError) as err:
        inspect_video(flash)
    assert (err.value.code, "vp6f" in err.value.message) == ("unsupported_codec", True), err.value.message


@pytest.mark.parametrize(("size", "rate", "pix_fmt", "aspect"), [
    ((720, 576), 25, "yuv420p", Fraction(16, 15)),  # PAL DV25, 4:3
    ((720, 480), Fraction(30000, 1001), "yuv411p", Fraction(8, 9)),  # NTSC DV25, 4:3
])
def test_a_raw_dv_file_is_read_from_its_frames_headers(
    tmp_path: Path, size: tuple[int, int], rate: Fraction, pix_fmt: str, aspect: Fraction,
) -> None:
    """A camcorder's capture as dvgrab writes it (raw DV, no container around the frames) keeps its
    size only in each frame's header, which FFmpeg reads only by decoding: it was refused as
    ``unsupported_codec``.  Its size comes from the first frame now, and it comes out whole, its
    pixels' shape kept."""
    dv = bombs.encode(tmp_path / "cam.dv", small_frames(5, size), "dvvideo", pix_fmt, "dv", rate=rate)
    info = inspect_video(dv)
    assert (info.width, info.height, info.frames, info.fps, info.sample_aspect) == (*size, 5, rate, aspect)
    out = tmp_path / "out.mp4"
    replace_background(dv, "#00ff00", out, ReplaceOptions(output_format="greenscreen"))
    with av.open(str(out)) as back:
        video = back.streams.video[0]
        assert (video.width, video.height, video.sample_aspect_ratio) == (*size, aspect)
        assert len(list(back.decode(video))) == 5


def test_an_audio_file_with_cover_art_has_no_video_stream(tmp_path: Path) -> None:
    """FFmpeg lists an M4A's cover picture as a video stream: it is no video, and the answer says
    so (it was refused as a codec whose size the headers lack)."""
    import fractions

    import av
    import numpy as np

    path = tmp_path / "song.m4a"
    cover = bombs.png_bytes(160, 90)
    with av.open(str(path), "w", format="mp4") as out:
        audio = out.add_stream("aac", rate=48000, layout="stereo")
        art = out.add_stream("png")
        art.width, art.height, art.pix_fmt = 160, 90, "rgb24"
        art.disposition = av.stream.Disposition.attached_pic
        packet = av.Packet(cover)
        packet.stream, packet.pts, packet.dts, packet.time_base = art, 0, 0, fractions.Fraction(1, 90000)
        out.mux(packet)
        for k in range(20):
            frame = av.AudioFrame.from_ndarray(np.zeros((2, 1024), np.float32), format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = 48000, k * 1024
            out.mux(audio.encode(frame))
        out.mux(audio.encode(None))
    with pytest.raises(BackdropError) as err:
        inspect_video(path)
    assert err.value.code == "no_video_stream" and "cover" in err.value.message


def test_heif_sent_as_the_video_is_a_still_image(tmp_path: Path) -> None:
    path = tmp_path / "photo.heic"
    path.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(200))
    assert code_of(inspect_video, path) == "not_a_video"


def test_a_stream_that_shrinks_is_scaled_to_its_probed_size(tmp_path: Path) -> None:
    from service.media.decode import iter_frames
    from service.media.probe import probe_video

    info = probe_video(bombs.mid_stream_growth(tmp_path / "shrink.h264", 128, 64))
    assert [f.image.shape for f in iter_frames(info)] == [(128, 128, 3)] * 10


# --- types ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,content",
    [("svg", bombs.SVG), ("text", b"this is not a picture\n" * 20), ("tiff", b"II*\x00" + bytes(100)),
     ("jxl", b"\xff\x0a" + bytes(100))],
)
def test_unknown_backgrounds_are_unsupported(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / f"bg.{name}"
    path.write_bytes(content)
    with pytest.raises(BackdropError) as err:
        inspect_background(path)
    assert (err.value.code, err.value.status) == ("unsupported_background", 415)


def test_jpeg_cut_after_its_header(tmp_path: Path) -> None:
    src = data_path("backgrounds", "bg_1.jpg")
    assert inspect_background(src).kind == "image"
    cut = bombs.jpeg_cut_after_header(src, tmp_path / "cut.jpg")
    assert code_of(inspect_background, cut) == "corrupt_background"
    half = tmp_path / "half.jpg"
    half.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    assert code_of(inspect_background, half) == "corrupt_background"


def test_jpeg_with_junk_between_its_segments(tmp_path: Path) -> None:
    """Bytes where a marker should be (an editor's segment length off by a few, junk after a
    header): libjpeg skips them up to the next marker with a warning, as browsers do; they were
    refused as "malformed before its scan" (Photoshop and camera files among Pillow's samples)."""
    import cv2

    from service.media.background import open_background

    picture = np.tile(np.arange(0, 240, 2, dtype=np.uint8)[None, :, None], (80, 1, 3))
    data = cv2.imencode(".jpg", picture)[1].tobytes()
    dqt = data.index(b"\xff\xdb")
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(data[:dqt] + b"\x00\x11junk\xff\x00" + data[dqt:])
    assert inspect_background(junk) == BackgroundInfo("image", 120, 80, 1)
    plate = open_background(str(junk), 120, 80).frames(np.empty((1, 80, 120, 3), np.uint8), [0.0])[0]
    assert np.abs(plate.astype(int) - cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR),
                                                   cv2.COLOR_BGR2RGB)).max() <= 1
    nothing = tmp_path / "nothing.jpg"
    nothing.write_bytes(data[:dqt] + bytes(70000) + data[dqt:])  # no marker within reach
    assert code_of(inspect_background, nothing) == "corrupt_background"


@pytest.mark.parametrize("sof,precision", [(0xC3, 8), (0xC0, 12), (0xC7, 8), (0xC5, 8)])
def test_jpeg_codings_not_decoded_are_unsupported(tmp_path: Path, sof: int, precision: int) -> None:
    """Lossless, hierarchical and 12-bit JPEGs (medical, scientific) passed the header check and
    failed in the worker as "cannot be decoded" (``corrupt_background``); they are named as such
    before the job is taken."""
    import cv2

    data = bytearray(cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))[1].tobytes())
    at = data.index(b"\xff\xc0")
    data[at + 1], data[at + 4] = sof, precision
    path = tmp_path / "odd.jpg"
    path.write_bytes(bytes(data))
    with pytest.raises(BackdropError, match="this JPEG is (lossless|hierarchical|12-bit)") as err:
        inspect_background(path)
    assert (err.value.code, err.value.status) == ("unsupported_background", 415)


def test_png_cut_in_its_data(tmp_path: Path) -> None:
    data = bombs.png_bytes(300, 200, bombs.RGB8)
    assert inspect_background(bombs.png(tmp_path / "ok.png", 300, 200, bombs.RGB8)).width == 300
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) - 20])
    assert code_of(inspect_background, cut) == "corrupt_background"
    header_only = tmp_path / "header.png"
    header_only.write_bytes(data[:33])
    assert code_of(inspect_background, header_only) == "corrupt_background"


def test_image_types_read_from_headers(tmp_path: Path) -> None:
    import cv2

    img = small_frames(1, (120, 80))[0]
    for ext in ("bmp", "webp", "png", "jpg"):
        path = tmp_path / f"bg.{ext}"
        assert cv2.imwrite(str(path), img)
        info = inspect_background(path)
        assert (info.kind, info.width, info.height, info.frames) == ("image", 120, 80, 1), ext
    bmp = (tmp_path / "bg.bmp").read_bytes()
    (tmp_path / "cut.bmp").write_bytes(bmp[: len(bmp) // 2])
    assert code_of(inspect_background, tmp_path / "cut.bmp") == "corrupt_background"


# --- animated images as videos --------------------------------------------------------------------
def test_animated_gif_and_apng_are_videos(tmp_path: Path) -> None:
    frames = small_frames(6)
    gif = bombs.gif(tmp_path / "clip.gif", frames)
    info = inspect_video(gif)
    assert (info.width, info.height, info.frames, info.container) == (96, 72, 6, "gif")
    assert inspect_background(gif).kind == "animated"
    apng = bombs.apng(tmp_path / "clip.png", 96, 72, frames=4)
    assert inspect_video(apng).frames == 4
    still = bombs.gif(tmp_path / "still.gif", frames[:1])
    assert code_of(inspect_video, still) == "not_a_video"
    assert inspect_background(still).kind == "image"


def test_animated_webp_is_refused_precisely(tmp_path: Path) -> None:
    """This build's FFmpeg cannot decode animated WebP: refused up front, never failed later."""
    webp = bombs.animated_webp(tmp_path / "clip.webp", small_frames(3))
    assert read_image_header(webp).frames == 3
    assert code_of(inspect_video, webp) == "unsupported_codec"
    assert code_of(inspect_background, webp) == "unsupported_background"


# --- rotation -------------------------------------------------------------------------------------
def test_orientation_from_display_matrices() -> None:
    one, w = 1 << 16, 1 << 30
    assert orientation_from_matrix((one, 0, 0, 0, one, 0, 0, 0, w)) == (0, False)
    assert orientation_from_matrix((0, -one, 0, one, 0, 0, 0, 0, w)) == (90, False)
    assert orientation_from_matrix((-one, 0, 0, 0, -one, 0, 0, 0, w)) == (180, False)
    assert orientation_from_matrix((0, one, 0, -one, 0, 0, 0, 0, w)) == (270, False)
    assert orientation_from_matrix((-one, 0, 0, 0, one, 0, 0, 0, w)) == (0, True)  # left-right
    assert orientation_from_matrix((one, 0, 0, 0, -one, 0, 0, 0, w)) == (180, True)  # top-bottom
    assert orientation_from_matrix((0, one, 0, one, 0, 0, 0, 0, w)) == (270, True)  # x and y swapped
    assert orientation_from_matrix((0, -one, 0, -one, 0, 0, 0, 0, w)) == (90, True)
    assert orientation_from_matrix((2 * one, 0, 0, 0, -2 * one, 0, 0, 0, w)) == (180, True)  # scaled
    assert orientation_from_matrix((0,) * 9) == (0, False)  # FFmpeg: NaN (it came out turned 270°)
    assert orientation_from_matrix((one, one, 0, 0, one, 0, 0, 0, w)) == (0, False)  # a shear
    assert orientation_from_matrix((46341, 46341, 0, 46341, -46341, 0, 0, 0, w)) == (0, False)  # 45° and a flip


def test_rotation_tag_read_from_the_mp4_boxes() -> None:
    clip = data_path("videos", "rotated-tag-90.mp4")
    track = mp4_video_track(clip)
    assert track is not None and track.matrix is not None and not track.encrypted
    assert orientation_from_matrix(track.matrix) == (90, False)
    info = inspect_video(clip)
    assert (info.width, info.height, info.rotation) == (540, 960, 90)


def test_all_zero_display_matrix_is_no_rotation(tmp_path: Path) -> None:
    from service.media.decode import iter_frames
    from service.media.probe import probe_video

    path = bombs.zero_matrix_mp4(tmp_path / "zero.mp4", small_frames(4))
    track = mp4_video_track(path)
    assert track is not None and track.matrix == (0,) * 9
    assert inspect_video(path).rotation == 0
    info = probe_video(path)
    assert (info.rotation, info.width, info.height) == (0, 96, 72)
    assert {f.image.shape for f in iter_frames(info)} == {(72, 96, 3)}


@pytest.mark.parametrize(("matrix", "rotation"), [
    ([0, -1 << 16, 0, 1 << 16, 0, 0, 0, 0, 1 << 30], 90),
    ([-1 << 16, 0, 0, 0, -1 << 16, 0, 0, 0, 1 << 30], 180),
    ([0, 1 << 16, 0, -1 << 16, 0, 0, 0, 0, 1 << 30], 270),
    ([0] * 9, 0),  # degenerate: PyAV gives its NaN as INT_MIN
    ([46341, 46341, 0, -46341, 46341, 0, 0, 0, 1 << 30], 0),  # 45 degrees
])
def test_a_matroska_rotation_is_read_from_the_frame(tmp_path: Path, matrix: list[int], rotation: int) -> None:
    from service.media.probe import probe_video

    path = bombs.encode(tmp_path / "turned.mkv", small_frames(2), "libx264", "yuv420p", "matroska", matrix=matrix)
    assert inspect_video(path).rotation == 0  # the headers do not say: the decoded frame does
    assert probe_video(path).rotation == rotation


def test_a_mirror_in_an_mp4_is_read_from_its_boxes(tmp_path: Path) -> None:
    """MP4's and MOV's orientation comes from their boxes, which tell a mirror from a half turn (the
    frame's rotation, all PyAV gives safely, cannot)."""
    from service.media.probe import probe_video

    mirror = [-1 << 16, 0, 0, 0, 1 << 16, 0, 0, 0, 1 << 30]
    path = bombs.encode(tmp_path / "mirror.mp4", small_frames(2), "libx264", "yuv420p", "mp4", matrix=mirror)
    info = probe_video(path)
    assert (info.rotation, info.mirror, info.width, info.height) == (0, True, 96, 72)


def test_a_png_with_a_colour_profile_does_not_crash_the_process(tmp_path: Path) -> None:
    """A PNG's ICC profile comes with its name in the decoded frame's side data.  Reading a frame's
    rotation through PyAV's ``frame.side_data`` wrapped that name in a Dictionary, which freed it when
    collected, and the frame freed it again: one APNG with an ``iCCP`` chunk, given as a video or a
    background, killed the worker (SIGSEGV) at its next garbage collection, in whichever job it ran
    by then.  In a process of its own, as a crash would take pytest with it."""
    apng = bombs.apng(tmp_path / "anim.png", 64, 48, frames=3)
    raw = apng.read_bytes()  # FFmpeg hands the profile on whatever it holds
    apng.write_bytes(raw[:33] + bombs.chunk(b"iCCP", b"Display P3\0\0" + zlib.compress(bytes(500))) + raw[33:])
    script = (
        "import gc, sys, numpy as np\n"
        "from pathlib import Path\n"
        "from service.media.probe import probe_video\n"
        "from service.media.background import open_background\n"
        "path = Path(sys.argv[1])\n"
        "info = probe_video(path)\n"
        "source = open_background(str(path), 64, 48)\n"
        "source.frames(np.zeros((3, 48, 64, 3), np.uint8), [0.0, 0.1, 0.2])\n"
        "source.close()\n"
        "del source\n"
        "gc.collect()\n"
        "print('read', info.width, info.height, info.rotation)\n"
    )
    run = subprocess.run([sys.executable, "-c", script, str(apng)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "read 64 48 0" in run.stdout, (run.returncode, run.stderr[-2000:])


# --- length -------------------------------------------------------------------------------------
def test_a_clip_whose_times_start_late_is_as_long_as_its_frames(tmp_path: Path) -> None:
    """Matroska records where a track ends (the DURATION tag FFmpeg writes), not how long it is:
    ``bird.mkv``'s 63 frames at 30 fps start at 33 ms and end at 2133, so it lasts 2100 ms.  A
    second of real video with times from 1000 s on (a clip cut from a recording, times kept) lasts
    as long as the same second from 0, and is not a 1001-second video over the duration limit."""
    bird = inspect_video(data_path("videos", "asl", "bird.mkv"))
    assert (bird.frames, bird.track_ticks, bird.duration_s) == (63, 2100, pytest.approx(2.1))
    walk = data_path("videos", "walking-audio.mp4")
    plain = inspect_video(remux(walk, tmp_path / "plain.mkv", seconds=1.0))
    late = inspect_video(remux(walk, tmp_path / "late.mkv", seconds=1.0, video_delay_s=1000.0))
    assert late.frames == plain.frames > 20
    assert late.track_ticks == plain.track_ticks
    assert late.fps == plain.fps == 30  # from the packets: these Matroska files record no rate
    assert late.duration_s == plain.duration_s == pytest.approx(plain.frames / 30, abs=0.002)


def test_a_declared_rate_far_from_the_frames_is_taken_from_them(tmp_path: Path) -> None:
    """Matroska's and FLV's rate is one constant a muxer fills from somewhere: H.264 whose own timing
    says 1/15360 s a tick (an encoder's time base), copied into Matroska, was read as 15360 frames a
    second for a 10 fps clip, and FLV's as 1000 (its time base); the packets' times give 10."""
    import av

    clip = tmp_path / "clip.mp4"
    with av.open(str(data_path("videos", "desk.mp4"))) as inp, av.open(str(clip), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 320, 180, "yuv420p"
        stream.codec_context.time_base = stream.time_base = Fraction(1, 15360)
        for i, frame in enumerate(inp.decode(video=0)):
            if i == 20:
                break
            picture = frame.reformat(320, 180)
            picture.pts, picture.time_base = i * 1536, Fraction(1, 15360)
            out.mux(stream.encode(picture))
        out.mux(stream.encode(None))
    assert inspect_video(clip).fps == 10  # MP4: FFmpeg counts the samples
    for ext in ("mkv", "flv"):
        info = inspect_video(remux(clip, tmp_path / f"clip.{ext}", seconds=60.0))
        assert (ext, info.fps, info.frames) == (ext, 10, 20)
        assert info.duration_s == pytest.approx(2.0, abs=0.002)


def test_the_packets_rate_leaves_out_jumps_in_their_times() -> None:
    """The mean step between frame times, leaving out jumps (a splice, a paused recording) and
    keeping frames shown longer (two dropped); rounded millisecond times average out."""
    ms_at_30 = [round(i * 1000 / 30) for i in range(60)]
    assert ordinary_steps(ms_at_30) == (59, 1967)
    spliced = ms_at_30 + [100_000 + t for t in ms_at_30]
    assert ordinary_steps(list(reversed(spliced))) == (118, 2 * 1967)
    dropped = [t for i, t in enumerate(ms_at_30) if i not in (30, 31)]
    assert ordinary_steps(dropped) == (57, 1967)
    assert ordinary_steps([5]) == ordinary_steps([]) == (0, 0)


def test_one_frame_past_the_frame_limit_is_refused(tmp_path: Path) -> None:
    """Packets are counted up to the limit (and no further): one frame past it is refused."""
    bird = data_path("videos", "asl", "bird.mkv")
    assert inspect_video(bird, Settings(max_frames=63)).frames == 63
    assert code_of(inspect_video, bird, Settings(max_frames=62)) == "video_too_large"


# --- the worker's second look ---------------------------------------------------------------------
def test_worker_refuses_a_picture_larger_than_its_header(tmp_path: Path) -> None:
    from service.media.background import open_background
    from service.media.probe import probe_video

    def first_background_frame(spec: str) -> None:
        import numpy as np

        bg = open_background(spec, 32, 32)
        try:
            bg.frames(np.zeros((1, 32, 32, 3), np.uint8), [0.0])
        finally:
            bg.close()

    lying = bombs.png_in_mov(tmp_path / "lying.mov", [bombs.png_bytes(3000, 3000)], 64, 64)
    assert code_of(first_background_frame, str(lying)) == "background_too_large"
    assert code_of(probe_video, lying, Settings(max_pixels=64 * 64)) == "video_too_large"


def test_a_stream_that_grows_past_what_its_packets_tell_is_scaled_to_its_first_size(tmp_path: Path) -> None:
    """MPEG-4 Part 2 announces a new size in a new VOL header, which the packet scan does not read:
    the larger frames are scaled down to the first frame's size, as FFmpeg's own command line does."""
    from service.media.decode import iter_frames
    from service.media.probe import probe_video

    for small, large in ((64, 128), (64, 2048)):  # within the decoder's slack, and far past it
        path = bombs.mid_stream_growth(tmp_path / f"grow{large}.m4v", small, large, "mpeg4")
        info = probe_video(path)
        assert (info.width, info.height, info.largest_picture) == (small, small, None)
        assert [f.image.shape for f in iter_frames(info)] == [(small, small, 3)] * 10


@pytest.mark.parametrize(("codec", "suffix"), [("libvpx", "webm"), ("libvpx-vp9", "webm"), ("libx264", "mkv"),
                                               ("libx264", "ts"), ("libx265", "mkv")])
def test_a_recording_that_grows_is_written_at_its_largest_picture(tmp_path: Path, codec: str, suffix: str) -> None:
    """A WebRTC recording starts small and grows with the bandwidth: its VP8/VP9 packets, or H.264's
    SPS (length-prefixed in Matroska, start codes in MPEG-TS), tell each picture's size, so every
    frame comes out at the largest, in order, the small ones scaled up."""
    from service.media.decode import iter_frames
    from service.media.probe import probe_video

    path = bombs.growing_video(tmp_path / f"call.{suffix}", codec, [(96, 64), (192, 128), (144, 96)])
    at_door = inspect_video(path)
    assert (at_door.largest_picture, at_door.width, at_door.height) == ((192, 128), 192, 128)
    info = probe_video(path)
    assert (info.width, info.height) == (192, 128)
    frames = list(iter_frames(info))
    assert [f.image.shape for f in frames] == [(128, 192, 3)] * 12
    levels = [float(f.image.mean()) for f in frames]
    assert levels == pytest.approx([20 + 15 * i for i in range(12)], abs=4)
    steady = inspect_video(bombs.growing_video(tmp_path / f"steady.{suffix}", codec, [(96, 64)]))
    assert (steady.largest_picture, steady.width, steady.height) == ((96, 64), 96, 64)


def test_an_mpeg2_broadcast_that_changes_size_is_written_at_its_largest(tmp_path: Path) -> None:
    """A broadcast switches between sizes with a new MPEG-2 sequence header, which the packet scan
    reads: every frame comes out at the largest, as the frames FFmpeg's decoder gives (it drops the
    one it holds at each switch)."""
    from service.media.decode import iter_frames
    from service.media.probe import probe_video

    path = bombs.growing_video(tmp_path / "broadcast.ts", "mpeg2video", [(96, 64), (192, 128), (144, 96)])
    assert inspect_video(path).largest_picture == (192, 128)
    with av.open(str(path)) as c:
        plain = [float(f.to_ndarray(format="rgb24").mean()) for f in c.decode(video=0)]
    frames = [f.image for f in iter_frames(probe_video(path))]
    assert {f.shape for f in frames} == {(128, 192, 3)}
    assert [float(f.mean()) for f in frames] == pytest.approx(plain, abs=3) and len(plain) >= 10


def test_pictures_of_another_shape_are_letterboxed_not_stretched(tmp_path: Path) -> None:
    """A WebRTC recording's pictures turn from 3:2 to 2:1 midway: the 3:2 ones are scaled into the
    2:1 output's middle on black (which the model sees as background), on the CPU decoder and the
    device path's alike; a shape a pixel off the output's (854x480 in 1280x720) fills it."""
    from service.media.decode import fitted_size, iter_frames
    from service.media.hwdecode import iter_planes
    from service.media.probe import probe_video

    assert fitted_size(854, 480, 1280, 720) is None and fitted_size(640, 360, 1280, 720) is None
    assert fitted_size(640, 480, 1280, 720) == (960, 720, 160, 0)
    assert fitted_size(1280, 720, 720, 1280) == (720, 404, 0, 438)  # landscape in portrait
    path = bombs.growing_video(tmp_path / "turns.webm", "libvpx", [(96, 64), (192, 96)], per_size=2)
    info = probe_video(path)
    assert (info.width, info.height) == (192, 96)
    frames = [f.image for f in iter_frames(info)]
    first = frames[0].astype(int)  # grey 20 as 144x96 between two bars of 24 columns
    assert first[:, :24].max() <= 1 and first[:, -24:].max() <= 1
    assert abs(first[:, 26:-26].mean() - 20) <= 3 and abs(frames[2].mean() - 50) <= 3
    planes = list(iter_planes(info, nvdec=False, on_device=False))
    y = planes[0].planes["y"][:, :192].astype(int)
    assert y[:, :24].max() <= 17 and y[:, -24:].max() <= 17 and abs(y[:, 26:-26].mean() - (16 + 20 * 219 / 255)) <= 3
    assert [p.pts for p in planes] == [f.pts for f in iter_frames(info)]


def test_a_growing_recording_is_written_at_its_largest_picture_whatever_its_header_says(tmp_path: Path) -> None:
    """The container's header may declare more than any picture (an IVF test vector says 352x288
    for 176x144 growing to 282x231) or nothing at all (Chromium's VP9 resolution-change IVF says
    0x0): the pictures' own sizes decide."""
    from service.media.probe import probe_video

    sizes = [(96, 64), (192, 128)]
    bigger = bombs.growing_video(tmp_path / "bigger.webm", "libvpx", sizes, declared=(200, 150))
    assert (probe_video(bigger).width, probe_video(bigger).height) == (192, 128)
    unsized = bombs.growing_video(tmp_path / "unsized.ivf", "libvpx-vp9", sizes)
    data = bytearray(unsized.read_bytes())
    assert data[:4] == b"DKIF"
    data[12:16] = bytes(4)  # the IVF header's width and height
    unsized.write_bytes(bytes(data))
    at_door = inspect_video(unsized)
    info = probe_video(unsized)
    assert (at_door.width, at_door.height, info.width, info.height, info.frames) == (192, 128, 192, 128, 8)


def test_frames_past_the_limits_are_refused_midway(tmp_path: Path) -> None:
    """Larger frames are taken only within the limits: past them the job fails ``video_too_large``,
    whether the decoder refuses the frame (far past) or the frame is decoded and then checked."""
    from service.media.decode import iter_frames
    from service.media.probe import probe_video

    limits = Settings(max_pixels=100 * 100)
    for small, large in ((64, 128), (64, 2048)):
        path = bombs.mid_stream_growth(tmp_path / f"grow{large}.m4v", small, large, "mpeg4")
        info = probe_video(path, limits)
        with pytest.raises(BackdropError) as err:
            for _ in iter_frames(info, settings=limits):
                pass
        assert err.value.code == "video_too_large", err.value.message
    for codec, suffix in (("libvpx", "webm"), ("libx264", "mp4")):  # their packets tell, at the door
        grows = bombs.growing_video(tmp_path / f"call.{suffix}", codec, [(64, 64), (128, 128)])
        assert code_of(inspect_video, grows, limits) == "video_too_large"


def test_worker_checks_a_still_header_before_decoding(tmp_path: Path) -> None:
    from service.media.background import open_background

    bomb = bombs.png(tmp_path / "bomb.png", 30000, 30000)
    assert code_of(open_background, str(bomb), 32, 32) == "background_too_large"
    cut = bombs.jpeg_cut_after_header(data_path("backgrounds", "bg_1.jpg"), tmp_path / "cut.jpg")
    assert code_of(open_background, str(cut), 32, 32) == "corrupt_background"


def test_animated_background_plays(tmp_path: Path) -> None:
    import numpy as np

    from service.media.background import open_background

    frames = small_frames(4)
    bg = open_background(str(bombs.gif(tmp_path / "bg.gif", frames)), 48, 36)
    try:
        images = np.zeros((8, 36, 48, 3), np.uint8)
        out = bg.frames(images, [i / 10 for i in range(8)])
    finally:
        bg.close()
    assert out.shape == (8, 36, 48, 3)
    assert not np.array_equal(out[0], out[1])  # it moves
    assert np.array_equal(out[0], out[4])  # and loops after its 4 frames


# --- import-light ---------------------------------------------------------------------------------
def test_api_inspection_imports_no_numpy_or_opencv(tmp_path: Path) -> None:
    """What the API runs for a request (its _probe and _validate_background, which read the file in a
    child process) loads neither into the API's process."""
    gif = bombs.gif(tmp_path / "clip.gif", small_frames(3))
    still = bombs.png(tmp_path / "bg.png", 64, 48, bombs.RGB8)
    code = (
        "import sys, json\n"
        "from service.api.routes.jobs import _probe, _validate_background\n"
        "from service.config import Settings\n"
        "s = Settings()\n"
        f"_probe({str(data_path('videos', 'asl', 'bird.mkv'))!r}, s)\n"
        f"_probe({str(gif)!r}, s)\n"
        f"_validate_background({str(still)!r}, s)\n"
        f"_validate_background({str(gif)!r}, s)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'cv2', 'onnxruntime'))))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKDROP_")}
    env.update(PYTHONPATH=str(ROOT), BACKDROP_OPEN_MODE="true")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_worker_refuses_a_lying_picture_before_allocating_it(tmp_path: Path) -> None:
    """A MOV declaring 64×64 that holds one 16000×16000 16-bit RGBA PNG (2 GB decoded), as the video
    and as the background: the worker's decoders refuse it without allocating it."""
    lying = bombs.png_in_mov(tmp_path / "lying.mov", [bombs.png_bytes(16000, 16000, bombs.RGBA16)], 64, 64)
    code = (
        PEAK_MB + "import sys\n"
        "import numpy as np\n"
        "from service.errors import BackdropError\n"
        "from service.media.background import open_background\n"
        "from service.media.probe import probe_video\n"
        "codes = []\n"
        "for run in ('video', 'background'):\n"
        "    try:\n"
        "        if run == 'video':\n"
        f"            probe_video({str(lying)!r})\n"
        "        else:\n"
        f"            open_background({str(lying)!r}, 32, 32).frames(np.zeros((1, 32, 32, 3), np.uint8), [0.0])\n"
        "    except BackdropError as e:\n"
        "        codes.append(e.code)\n"
        "print(' '.join(codes), peak_mb())\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKDROP_")}
    env.update(PYTHONPATH=str(ROOT), BACKDROP_OPEN_MODE="true")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    video, background, peak_mb = proc.stdout.split()
    assert (video, background) == ("video_too_large", "background_too_large")
    assert int(peak_mb) < 400, f"peaked at {peak_mb} MB"


def test_extreme_aspect_background_is_cropped_before_it_is_scaled(tmp_path: Path) -> None:
    """1×60,000 pixels is within the limits; scaled whole to cover 4000×3000 it would be 240 million
    pixels (720 MB) before the crop."""
    strip = bombs.png(tmp_path / "strip.png", 1, 60_000)
    code = (
        PEAK_MB
        + "import numpy as np\n"
        "from service.media.background import open_background\n"
        f"bg = open_background({str(strip)!r}, 4000, 3000)\n"
        "out = bg.frames(np.zeros((2, 3000, 4000, 3), np.uint8), [0.0, 0.1])\n"
        "print(out.shape, peak_mb())\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKDROP_")}
    env.update(PYTHONPATH=str(ROOT), BACKDROP_OPEN_MODE="true")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    shape, peak_mb = proc.stdout.rsplit(" ", 1)
    assert shape == "(2, 3000, 4000, 3)"
    assert int(peak_mb) < 400, f"peaked at {peak_mb} MB"


@pytest.mark.parametrize(("tags", "chapters", "code"), [(5000, 0, "video_too_large"), (0, 12_000, "video_too_large"),
                                                         (200, 300, None)])
def test_a_matroska_file_with_thousands_of_tags_is_refused_before_ffmpeg_reads_them(
    tmp_path: Path, tags: int, chapters: int, code: str | None
) -> None:
    """FFmpeg's tag list is searched whole for each tag added: 100,000 tags in a 1.6 MB WebM took 74 s
    to open, each time the file was opened.  Past 4096 tags (or 10,000 chapters) the file is refused
    before FFmpeg opens it."""
    from fractions import Fraction

    from service.media.metadata_bombs import metadata_bomb

    path = tmp_path / "tagged.mkv"
    with av.open(str(path), "w") as out:
        out.metadata.update({f"key{i}": "v" for i in range(tags)})
        ms = Fraction(1, 1000)
        out.set_chapters([{"id": i + 1, "start": i, "end": i + 1, "time_base": ms, "metadata": {}} for i in range(chapters)])
        video = out.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        for image in small_frames(3, (64, 48)):
            out.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(video.encode(None))
    assert (metadata_bomb(path) is None) == (code is None)
    if code:
        assert code_of(inspect_video, path) == code
    else:
        assert inspect_video(path).chapters == chapters


def test_tags_after_a_live_recordings_clusters_are_found_by_the_seekhead(tmp_path: Path) -> None:
    """A live recording's clusters have no size, so the walk cannot step over them: the Tags
    element behind them is found where the SeekHead points, as FFmpeg finds it."""
    from service.media.metadata_bombs import MAX_TAGS, metadata_bomb

    def element(ident: bytes, payload: bytes) -> bytes:
        return ident + b"\x01" + len(payload).to_bytes(7, "big") + payload

    unknown = b"\x01" + b"\xff" * 7
    simple_tags = element(b"\x73\x73", element(b"\x67\xc8", b"") * (MAX_TAGS + 1))
    cluster = b"\x1f\x43\xb6\x75" + unknown + element(b"\xe7", b"\x00")  # a timestamp, then the file goes on
    for tags in (simple_tags, element(b"\x73\x73", element(b"\x67\xc8", b"") * 10)):
        seek_head_size = len(element(b"\x11\x4d\x9b\x74", element(b"\x4d\xbb", element(b"\x53\xab", bytes(4))
                                                                        + element(b"\x53\xac", bytes(4)))))
        position = (seek_head_size + len(cluster)).to_bytes(4, "big")
        seek_head = element(b"\x11\x4d\x9b\x74", element(b"\x4d\xbb", element(b"\x53\xab", b"\x12\x54\xc3\x67")
                                                         + element(b"\x53\xac", position)))
        data = b"\x1a\x45\xdf\xa3\x80" + b"\x18\x53\x80\x67" + unknown + seek_head + cluster
        data += element(b"\x12\x54\xc3\x67", tags)
        path = tmp_path / "live.webm"
        path.write_bytes(data)
        assert (metadata_bomb(path) is not None) == (tags is simple_tags)


@pytest.mark.parametrize("fmt", ["mp4", "mov", "flv"])
@pytest.mark.parametrize(("tags", "refused"), [(5000, True), (300, False)])
def test_mp4_and_flv_files_with_thousands_of_tags_are_refused(tmp_path: Path, fmt: str, tags: int, refused: bool) -> None:
    """The same quadratic cost in MP4's ``udta``/``ilst`` items and FLV's ``onMetaData``: 20,000
    tags took 0.9 s and 0.8 s to open, a hundred thousand twenty-five times as long."""
    from service.media.metadata_bombs import metadata_bomb

    path = tmp_path / f"tagged.{fmt}"
    options = {"movflags": "use_metadata_tags"} if fmt != "flv" else {}
    with av.open(str(path), "w", options=options) as out:
        out.metadata.update({f"key{i}": "v" for i in range(tags)})
        video = out.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        for image in small_frames(3, (64, 48)):
            out.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(video.encode(None))
    with av.open(str(path)) as c:
        assert len(c.metadata) >= tags  # FFmpeg reads them all
    assert (metadata_bomb(path) is not None) == refused
    if refused:
        assert code_of(inspect_video, path) == "video_too_large"
    else:
        assert inspect_video(path).frames == 3


def test_an_flv_keyframe_index_is_no_tags() -> None:
    """An FLV's ``onMetaData`` may index thousands of keyframes in strict arrays, whose values have
    no names: FFmpeg makes no tag of them, nor does the count."""
    from service.media.metadata_bombs import _amf_keys

    def name(text: bytes) -> bytes:
        return struct.pack(">H", len(text)) + text

    number = b"\x00" + struct.pack(">d", 1.0)
    index = b"\x0a" + struct.pack(">I", 10_000) + number * 10_000
    data = (b"\x02" + name(b"onMetaData") + b"\x08" + struct.pack(">I", 2) + name(b"duration") + number
            + name(b"keyframes") + b"\x03" + name(b"times") + index + name(b"filepositions") + index + b"\x00\x00\x09"
            + b"\x00\x00\x09")
    assert _amf_keys(data, 4096) == 4  # duration, keyframes, times, filepositions

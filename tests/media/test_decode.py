"""The decoder's own steps: interlaced video made whole frames, progressive video left alone, RGB by
each video's own matrix, rotation and mirror tags applied, frames drawn from one buffer pool."""

from __future__ import annotations

import resource
from dataclasses import replace
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from conftest import data_path

from service.media.background import open_background
from service.media.decode import RgbConverter, iter_frames
from service.media.probe import probe_video


def _combing(image: np.ndarray) -> float:
    """How far each row is from the mean of its neighbours: woven fields of a moving picture
    alternate between two pictures from one row to the next."""
    y = image.astype(np.float64).mean(-1)
    return float(np.abs(y[1:-1] - (y[:-2] + y[2:]) / 2).mean())


def _panning(path: Path, interlaced: bool) -> tuple[Path, list[np.ndarray]]:
    """A real picture the camera pans across, 8 px a field: stored as interlaced H.264 (each frame
    two fields, the bottom one a field later) or progressive; with the pictures at the frames' times."""
    with av.open(str(data_path("videos", "walking-audio.mp4"))) as src:
        picture = cv2.resize(next(src.decode(video=0)).to_ndarray(format="rgb24"), (640, 360))
    shown = []
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        stream.options = {"crf": "16", **({"x264-params": "interlaced=1:tff=1"} if interlaced else {})}
        for t in range(10):
            frame = np.roll(picture, 16 * t, axis=1)
            if interlaced:
                frame[1::2] = np.roll(picture, 16 * t + 8, axis=1)[1::2]
            shown.append(np.roll(picture, 16 * t, axis=1))
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p")))
        out.mux(stream.encode(None))
    return path, shown


def test_interlaced_video_is_deinterlaced(tmp_path: Path) -> None:
    """1080i broadcast, AVCHD and DV store two fields a frame; woven into one picture they comb on
    every moving edge, through the model and into the progressive output, which players then
    show combed.  Each frame comes out whole, at its own time, as many as went in."""
    path, shown = _panning(tmp_path / "interlaced.mp4", interlaced=True)
    with av.open(str(path)) as c:
        woven = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    frames = list(iter_frames(probe_video(path)))
    assert len(frames) == len(woven) == 10
    with av.open(str(path)) as c:
        assert [f.pts for f in frames] == [f.pts for f in c.decode(video=0)]
    progressive = np.mean([_combing(s) for s in shown])
    assert np.mean([_combing(w) for w in woven]) > 1.3 * progressive  # the test clip does comb
    assert max(_combing(f.image) for f in frames) < progressive


def test_progressive_video_is_left_as_it_is(tmp_path: Path) -> None:
    path, _ = _panning(tmp_path / "progressive.mp4", interlaced=False)
    with av.open(str(path)) as c:
        plain = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert all(np.array_equal(f.image, p) for f, p in zip(iter_frames(probe_video(path)), plain, strict=True))


def test_the_device_paths_decoder_deinterlaces_too(tmp_path: Path) -> None:
    """The device path's planes (here from the CPU decoder, as on a machine without NVDEC; NVDEC's
    interlaced frames go through the host the same way) are the same whole frames."""
    from service.media.hwdecode import iter_planes

    path, shown = _panning(tmp_path / "interlaced.mp4", interlaced=True)
    info = probe_video(path)
    planes = list(iter_planes(info, nvdec=False, on_device=False))
    frames = list(iter_frames(info))
    assert [(p.pts, p.duration) for p in planes] == [(f.pts, f.duration) for f in frames]
    progressive = np.mean([_combing(s) for s in shown])
    assert max(_combing(p.frame.to_ndarray(format="rgb24")) for p in planes) < progressive


def _tagged_clip(path: Path, pix_fmt: str, colorspace: int, color_range: int,
                 size: tuple[int, int] = (320, 180), count: int = 8, converted: bool = True,
                 trc_primaries: tuple[int, int] = (2, 2)) -> Path:
    """``count`` frames of a real picture stored as ``pix_fmt``, tagged with matrix ``colorspace``
    (1 BT.709, 5 BT.601, 9 BT.2020, ...), range ``color_range`` (1 limited, 2 full) and transfer
    and primaries ``trc_primaries``; converted by that matrix, or (``converted=False``, for a
    matrix PyAV cannot convert by) by BT.601."""
    with av.open(str(data_path("videos", "walking-audio.mp4"))) as src:
        picture = cv2.resize(next(src.decode(video=0)).to_ndarray(format="rgb24"), size)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = *size, pix_fmt
        ctx = stream.codec_context
        ctx.colorspace, ctx.color_range = colorspace, color_range
        ctx.color_trc, ctx.color_primaries = trc_primaries
        for t in range(count):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.roll(picture, 7 * t, axis=1)), format="rgb24")
            frame = (frame.reformat(format=pix_fmt, dst_colorspace=colorspace, dst_color_range=color_range)
                     if converted else frame.reformat(format=pix_fmt))
            frame.colorspace, frame.color_range, frame.pts = colorspace, color_range, t
            frame.color_trc, frame.color_primaries = trc_primaries
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


@pytest.mark.parametrize("pix_fmt,colorspace,color_range", [
    ("yuv420p", 5, 1), ("yuv420p", 1, 1), ("yuvj420p", 1, 2), ("yuv422p", 1, 1), ("yuv444p", 9, 1),
    ("gray", 2, 2),
])
def test_frames_are_swscales_rgb_by_their_own_matrix(tmp_path: Path, pix_fmt: str, colorspace: int,
                                                     color_range: int) -> None:
    """The filter graph's RGB is the one ``to_ndarray`` gives (swscale, bilinear, the frame's own
    matrix and range), byte for byte, for 8-bit video."""
    path = _tagged_clip(tmp_path / "clip.mkv", pix_fmt, colorspace, color_range)
    with av.open(str(path)) as c:
        expected = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    frames = [f.image for f in iter_frames(probe_video(path))]
    assert len(frames) == len(expected) == 8
    assert all(np.array_equal(f, e) for f, e in zip(frames, expected, strict=True))
    if colorspace == 1:  # the matrix is read: BT.601's would put these colours elsewhere
        with av.open(str(path)) as c:
            as_601 = c.decode(video=0).__next__().to_ndarray(format="rgb24", src_colorspace="ITU601")
        assert np.abs(as_601.astype(int) - frames[0]).max() > 8


def test_ten_bit_video_comes_within_a_level(tmp_path: Path) -> None:
    path = _tagged_clip(tmp_path / "clip.mkv", "yuv420p10le", 9, 1)
    with av.open(str(path)) as c:
        expected = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    for frame, e in zip(iter_frames(probe_video(path)), expected, strict=True):
        assert np.abs(frame.image.astype(int) - e).mean() < 1.0


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_a_rotation_tag_turns_the_picture_upright(rotation: int) -> None:
    """Quarter turns counter-clockwise, as the tag asks (``rotated-tag-90.mp4`` carries 90; the
    others are the same clip read with another tag)."""
    info = probe_video(data_path("videos", "rotated-tag-90.mp4"))
    assert info.rotation == 90
    with av.open(str(info.path)) as c:
        stored = [f.to_ndarray(format="rgb24") for _, f in zip(range(3), c.decode(video=0), strict=False)]
    frames = iter_frames(replace(info, rotation=rotation))
    for (f, s) in zip(frames, stored, strict=False):
        assert np.array_equal(f.image, np.rot90(s, rotation // 90))
    frames.close()


def _shown(stored: np.ndarray, matrix: list[int]) -> np.ndarray:
    """``stored`` as its display matrix maps it, worked out from the matrix itself: the pixel at
    (x, y) is shown at (a·x + c·y, b·x + d·y), the picture moved back to the origin."""
    a, b, c, d = (int(np.sign(v)) for v in (matrix[0], matrix[1], matrix[3], matrix[4]))
    ys, xs = np.mgrid[0 : stored.shape[0], 0 : stored.shape[1]]
    x, y = a * xs + c * ys, b * xs + d * ys
    x, y = x - x.min(), y - y.min()
    shown = np.zeros((y.max() + 1, x.max() + 1, 3), np.uint8)
    shown[y, x] = stored
    return shown


_ONE = 1 << 16


@pytest.mark.parametrize("abcd", [
    (_ONE, 0, 0, _ONE), (0, -_ONE, _ONE, 0), (-_ONE, 0, 0, -_ONE), (0, _ONE, -_ONE, 0),  # turns
    (-_ONE, 0, 0, _ONE), (_ONE, 0, 0, -_ONE), (0, _ONE, _ONE, 0), (0, -_ONE, -_ONE, 0),  # mirrors
], ids=["none", "ccw", "half", "cw", "left-right", "top-bottom", "transpose", "anti-transpose"])
def test_every_display_matrix_shows_the_picture_as_it_maps_it(tmp_path: Path, abcd: tuple[int, ...]) -> None:
    """All eight ways a display matrix can lay a picture on its axes, as FFmpeg's command line and
    browsers show them: a mirror was ignored, and a mirror with a turn came out a quarter turn off."""
    a, b, c, d = abcd
    matrix = [a, b, 0, c, d, 0, 0, 0, 1 << 30]
    rng = np.random.default_rng(7)
    pictures = [cv2.resize(rng.integers(0, 256, (6, 8, 3), np.uint8), (128, 96), interpolation=cv2.INTER_NEAREST)
                for _ in range(3)]
    path = tmp_path / "tagged.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        stream.set_display_matrix(matrix)
        for i, picture in enumerate(pictures):
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with av.open(str(path)) as c:
        stored = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    info = probe_video(path)
    frames = [f.image for f in iter_frames(info)]
    assert len(frames) == len(stored) == 3
    assert (info.width, info.height) == frames[0].shape[1::-1]
    assert all(np.array_equal(f, _shown(s, matrix)) for f, s in zip(frames, stored, strict=True))
    # the same file as a background, shown at its own size
    background = open_background(str(path), info.width, info.height)
    plate = background.frames(np.zeros((1, info.height, info.width, 3), np.uint8), [0.0])[0]
    background.close()
    assert np.array_equal(plate, frames[0])


def test_frames_reuse_the_graphs_buffers(tmp_path: Path) -> None:
    """Each frame's RGB comes from the graph's buffer pool, not a buffer of its own: made afresh,
    past the mmap threshold the pipeline sets, a 720p frame is 675 pages the kernel zeroes."""
    from service.pipeline import _return_freed_frames

    _return_freed_frames()
    path = _tagged_clip(tmp_path / "clip.mkv", "yuv420p", 1, 1, size=(1280, 720), count=20)
    frames = iter_frames(probe_video(path), threads=1)
    for _ in range(8):
        next(frames)  # the decoder's and the graph's pools fill
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    shapes = [f.image.shape for f in frames]
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert shapes == [(720, 1280, 3)] * 12 and faults < 50 * len(shapes)


@pytest.mark.parametrize("colorspace,read_as", [(8, 2), (10, 9), (14, 9)])
def test_a_matrix_swscale_has_not_is_read_as_the_nearest(tmp_path: Path, colorspace: int, read_as: int) -> None:
    """YCgCo, BT.2020's constant-luminance form and ICtCp have no conversion in swscale: such a
    video failed as corrupt.  It is read as BT.601 (unspecified) or BT.2020, with a warning."""
    path = _tagged_clip(tmp_path / "clip.mp4", "yuv420p", colorspace, 1, count=6, converted=False,
                        trc_primaries=(14, 9) if read_as == 9 else (1, 1))
    with av.open(str(path)) as c:
        assert int(next(c.decode(video=0)).colorspace) == colorspace
    with av.open(str(path)) as c:
        expected = []
        for f in c.decode(video=0):
            f.colorspace, f.color_trc, f.color_primaries = read_as, 2, 2
            expected.append(f.to_ndarray(format="rgb24"))
    frames = [f.image for f in iter_frames(probe_video(path))]
    assert len(frames) == 6 and all(np.array_equal(f, e) for f, e in zip(frames, expected, strict=True))


@pytest.mark.parametrize("tag", ["color_trc", "color_primaries"])
def test_reserved_primaries_or_transfer_convert_as_unspecified(tag: str) -> None:
    """swscale refuses reserved values (some encoders write them); no conversion between primaries
    or transfers is made, so they are set aside as PyAV's own conversion sets them aside."""
    info = probe_video(data_path("videos", "desk.mp4"))
    with av.open(str(info.path)) as c:
        frame = next(c.decode(video=0))
    expected = frame.to_ndarray(format="rgb24")
    setattr(frame, tag, 3)  # reserved
    assert np.array_equal(RgbConverter(info.coded_width, info.coded_height)(frame), expected)


def _sps_without_vui(nal: bytes) -> bytes:
    """A Main-profile H.264 SPS (its NAL unit, header byte first) with its VUI left out: no timing,
    and no ``max_num_reorder_frames``, as many encoders and cameras write it (x264 always writes it)."""
    from service.media.bits import Bits

    rbsp = nal.replace(b"\x00\x00\x03", b"\x00\x00")
    bits = Bits(rbsp[1:])
    assert bits.read(8) == 77  # Main: no chroma format or scaling matrices in the SPS
    bits.read(16), bits.ue(), bits.ue()  # constraint flags and level, id, log2_max_frame_num
    assert bits.ue() == 0  # pic_order_cnt_type
    bits.ue(), bits.ue(), bits.read(1)  # log2_max_poc_lsb, max_num_ref_frames, gaps_in_frame_num
    bits.ue(), bits.ue()  # the size in macroblocks
    if not bits.read(1):  # frame_mbs_only
        bits.read(1)
    bits.read(1)  # direct_8x8_inference
    if bits.read(1):  # frame cropping
        bits.ue(), bits.ue(), bits.ue(), bits.ue()
    assert bits.read(1) == 1  # vui_parameters_present: x264 writes it
    kept = "".join(f"{b:08b}" for b in rbsp[1:])[: bits.pos - 1] + "0" + "1"  # no VUI, the stop bit
    kept += "0" * (-len(kept) % 8)
    out = bytearray(rbsp[:1])
    for byte in int(kept, 2).to_bytes(len(kept) // 8, "big"):
        if len(out) >= 3 and out[-2:] == b"\x00\x00" and byte <= 3:
            out.append(3)  # emulation prevention
        out.append(byte)
    return bytes(out)


def _hierarchical_b_stream(path: Path, frames: int = 24) -> tuple[Path, list[np.ndarray]]:
    """A raw H.264 stream (Annex B, no container, no timestamps) of hierarchical B-frames (three B
    between references, the middle one a reference: two frames of reordering) whose SPS has no VUI;
    and its pictures in display order, decoded from the stream as x264 wrote it."""
    with av.open(str(data_path("videos", "walking-audio.mp4"))) as src:
        picture = cv2.resize(next(src.decode(video=0)).to_ndarray(format="rgb24"), (320, 176))
    written = path.with_suffix(".x264.h264")
    with av.open(str(written), "w", format="h264") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 320, 176, "yuv420p"
        stream.options = {"profile": "main", "x264-params": "bframes=3:b-pyramid=normal:b-adapt=0:keyint=250"}
        for t in range(frames):
            image = np.roll(picture, 6 * t, axis=1)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")))
        out.mux(stream.encode(None))
    with av.open(str(written)) as c:
        shown = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    data = written.read_bytes()
    units = data.split(b"\x00\x00\x01")
    units = [_sps_without_vui(u) if u and u[0] & 0x1F == 7 else u for u in units]
    path.write_bytes(b"\x00\x00\x01".join(units))
    return path, shown


def test_a_raw_h264_stream_without_its_reorder_count_loses_no_frames(tmp_path: Path) -> None:
    """A raw ``.264`` stream has no timestamps, and where its SPS does not say how many frames to
    reorder, FFmpeg's decoder learns it from frames that come out of order, dropping those it has
    passed (the first of a hierarchical-B stream; 3 of the 297 of ``foreman_cif_IbBbBbBbP.264``).
    Every decoder of ours is given the depth its level allows, so every frame comes out, in order."""
    from service.media.hwdecode import iter_planes

    path, shown = _hierarchical_b_stream(tmp_path / "pyramid.264")
    with av.open(str(path), options={"codec_whitelist": "none"}) as c:  # as open_input opens it
        assert len(list(c.decode(video=0))) < len(shown) == 24  # the stream shows the loss
    info = probe_video(path)
    frames = list(iter_frames(info))
    assert len(frames) == 24
    assert all(np.array_equal(f.image, s) for f, s in zip(frames, shown, strict=True))
    assert [f.pts for f in frames] == sorted(f.pts for f in frames)
    planes = list(iter_planes(info, nvdec=False, on_device=False))
    assert [(p.pts, p.duration) for p in planes] == [(f.pts, f.duration) for f in frames]

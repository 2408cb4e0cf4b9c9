"""The writer's RGB -> I420 step (issue 15): one reused frame handed to the encoder, filled by OpenCV,
gives each frame its own picture and FFmpeg's colours, also where half the height is odd."""

from __future__ import annotations

import errno
import resource
import signal
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from service.config import get_settings
from service.errors import StorageError, disk_full
from service.media.encode import FORMATS, VideoWriter
from service.media.probe import probe_video

WIDTH, HEIGHT = 642, 362  # half of 362 is odd: the chroma planes are not whole rows of the I420 array


def _frames(n: int) -> np.ndarray:
    """Frames that differ a lot from one to the next (a gradient and a bright square that move)."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    out = np.empty((n, HEIGHT, WIDTH, 3), np.uint8)
    for k in range(n):
        out[k, ..., 0] = (x * 255 // WIDTH + 40 * k) % 256
        out[k, ..., 1] = (y * 255 // HEIGHT + 70 * k) % 256
        out[k, ..., 2] = 128
        out[k, 40 + 20 * k : 120 + 20 * k, 60 + 30 * k : 160 + 30 * k] = (250, 240, 10)
    return out


def _source(path: Path, frames: np.ndarray) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv444p"
        stream.options = {"crf": "0"}
        for image in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode(None))
    return path


def _decoded(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(np.int16)


def test_each_frame_keeps_its_own_picture_through_the_reused_frame(tmp_path: Path) -> None:
    frames = _frames(6)
    info = probe_video(_source(tmp_path / "in.mp4", frames), get_settings())
    writer = VideoWriter(tmp_path / "out.mp4", "mp4", info, audio=False)
    writer.write(frames[:4], list(range(4)))  # two batches: the reused frame outlives a batch
    writer.write(frames[4:], [4, 5])
    writer.close()
    back = _decoded(tmp_path / "out.mp4")
    assert back.shape == frames.shape
    for k in range(len(frames)):
        own = np.abs(back[k] - frames[k]).mean()
        assert own < 3.0, f"frame {k} is {own:.2f} levels off its input"
        if k:  # not the previous frame's picture (a buffer the encoder still read from)
            assert np.abs(back[k] - frames[k - 1]).mean() > 10 * own


def test_i420_input_and_the_colour_conversion_match_ffmpegs(tmp_path: Path) -> None:
    frames = _frames(3)
    info = probe_video(_source(tmp_path / "in.mp4", frames), get_settings())
    # OpenCV's RGB -> I420 is FFmpeg's (BT.601, limited range) to within a level of luma
    for image in frames:
        ours = cv2.cvtColor(image, cv2.COLOR_RGB2YUV_I420).astype(np.int16)
        ffmpeg = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p").to_ndarray()
        assert np.abs(ours[:HEIGHT] - ffmpeg[:HEIGHT]).max() <= 1
        assert np.abs(ours[HEIGHT:] - ffmpeg[HEIGHT:]).mean() < 0.5
    # frames handed over as I420 (the device path) come out as the RGB ones do
    rgb = tmp_path / "rgb.mp4"
    writer = VideoWriter(rgb, "mp4", info, audio=False)
    writer.write(frames, [0, 1, 2])
    writer.close()
    yuv = tmp_path / "yuv.mp4"
    writer = VideoWriter(yuv, "mp4", info, audio=False)
    writer.write(np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2YUV_I420) for f in frames]), [0, 1, 2], layout="yuv420p")
    writer.close()
    assert np.array_equal(_decoded(rgb), _decoded(yuv))


def test_webm_hands_back_a_packet_for_each_frame(tmp_path: Path) -> None:
    """Our VP9 runs at libvpx's realtime deadline, where its look-ahead (25 frames by default) buys
    nothing but memory: at 1080p with alpha (two encoders) about 200 MB of a job's peak.  So the
    writer's encoder holds no frame back: a packet comes back for each frame as it is written."""
    frames = _frames(4)
    rgba = np.concatenate([frames, np.full((*frames.shape[:3], 1), 200, np.uint8)], axis=-1)
    info = probe_video(_source(tmp_path / "in.mp4", frames), get_settings())
    writer = VideoWriter(tmp_path / "out.webm", "webm", info, audio=False)
    writer.write(rgba[:3], [0, 1, 2])
    assert writer._packets == 3  # noqa: SLF001 - the packets the encoder gave back so far
    writer.write(rgba[3:], [3])
    writer.close()
    back = _decoded(tmp_path / "out.webm")
    assert len(back) == 4 and np.abs(back[3] - frames[3]).mean() < 3.0



@pytest.mark.parametrize("fmt", ["mp4", "webm", "mov"])
def test_the_output_says_how_its_colours_are_read(tmp_path: Path, fmt: str) -> None:
    """Each output names the matrix and range its RGB was converted by (BT.601, limited) and keeps
    the input's primaries and transfer.  Untagged, players read HD as BT.709 (a saturated red came
    out with 31 levels of green), and the MOV's ProRes carried no tags even when the encoder had them."""
    frames = _frames(3)
    src = tmp_path / "in.mp4"
    with av.open(str(src), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        ctx = stream.codec_context
        ctx.colorspace, ctx.color_primaries, ctx.color_trc, ctx.color_range = 1, 1, 1, 1  # BT.709 throughout
        for image in frames:
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p", dst_colorspace="ITU709")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    info = probe_video(src, get_settings())
    assert (info.color_primaries, info.color_trc, info.colorspace) == (1, 1, 1)
    spec = FORMATS[fmt]
    out_path = tmp_path / f"out{spec.extension}"
    writer = VideoWriter(out_path, fmt, info, audio=False)
    rgba = np.concatenate([frames, np.full(frames.shape[:3] + (1,), 255, np.uint8)], axis=-1)
    writer.write(rgba if spec.alpha else frames, [0, 1, 2])
    writer.close()
    with av.open(str(out_path)) as c:
        first = next(c.decode(video=0))
        assert (first.colorspace, first.color_range, first.color_primaries, first.color_trc) == (6, 1, 1, 1)
        back = first.to_ndarray(format="rgb24").astype(np.int16)
    assert np.abs(back - frames[0, : back.shape[0], : back.shape[1]]).mean() < 3.0


def test_a_write_that_fails_midway_raises_its_own_error_once(tmp_path: Path) -> None:
    """A write that fails once the file has begun (a disk filling up; here the kernel's file-size
    limit, EFBIG, which one process may lower for itself) raises from the writer, and giving the
    abandoned file up, as the pipeline's failure path does, is quiet: its close fails the same way,
    and raised there, hiding the error that ended the job (and the CLI printed a traceback)."""
    frames = _frames(6)
    info = probe_video(_source(tmp_path / "in.mp4", frames), get_settings())
    writer = VideoWriter(tmp_path / "out.mp4", "mp4", info, audio=False)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, hard))
    try:
        with pytest.raises(OSError) as caught:
            for k in range(100):
                writer.write(frames, list(range(6 * k, 6 * k + 6)))
        assert caught.value.errno == errno.EFBIG
        writer.abort()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def test_a_full_disk_reads_as_disk_full(tmp_path: Path) -> None:
    """Writing to ``/dev/full`` (the kernel's ENOSPC on every write) fails with ENOSPC, which reads as
    ``disk_full``: raw, wrapped (a store's StorageError) or raised while handling it."""
    frames = _frames(6)
    info = probe_video(_source(tmp_path / "in.mp4", frames), get_settings())
    writer = VideoWriter(Path("/dev/full"), "mp4", info, audio=False)
    with pytest.raises(OSError) as caught:
        writer.write(frames, list(range(6)))
        writer.close()
    assert caught.value.errno == errno.ENOSPC
    full = disk_full(caught.value, "of the test")
    assert full is not None and (full.code, full.message) == ("disk_full", "no space left on the disk of the test")
    try:
        raise StorageError("local store write failed") from caught.value
    except StorageError as wrapped:
        assert disk_full(wrapped, "x") is not None
    try:
        try:
            raise caught.value
        except OSError:
            raise RuntimeError("cleanup failed too") from None
    except RuntimeError as during:
        assert disk_full(during, "x") is not None
    assert disk_full(FileNotFoundError(errno.ENOENT, "gone"), "x") is None
    assert disk_full(ValueError("not an OSError"), "x") is None

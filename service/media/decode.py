"""Streaming decode: one upright RGB frame at a time, with its original timestamp.

Frames are never gathered in memory; the caller batches them.  A display-rotation tag is applied
to the pixels here, so everything downstream sees the picture the way a player shows it and the
encoder writes it upright (with no tag).

Headers can lie, and a stream may change size midway (a WebRTC recording grows with the
bandwidth, a window capture with the window): every frame is scaled to the probed size, which is
the first frame's or, where the packets write their sizes (VP8, VP9, H.264, HEVC, AV1), the
largest, so every frame downstream has one size; a frame of another shape is letterboxed
(``fitted_size``), not stretched.  The decoder is told to refuse (before it allocates) a frame past
the limits, and such a frame fails the job with ``video_too_large``.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from service.config import Settings, get_settings
from service.errors import BackdropError, CorruptVideo, VideoTooLarge
from service.media.inspect import check_frame_size
from service.media.probe import (
    VideoInfo,
    decoded_frames,
    open_input,
    prepare_decoder,
    thread_decoder,
    too_large_after_error,
    video_stream,
)

log = logging.getLogger(__name__)


@dataclass
class DecodedFrame:
    image: np.ndarray  # uint8 (H, W, 3) RGB, upright
    pts: int  # in the input stream's time base, strictly increasing
    duration: int  # how long it stays on screen, same time base (the last frame's matters for length)


def iter_frames(info: VideoInfo, threads: int = 0, seek_dts: int | None = None,
                settings: Settings | None = None) -> Iterator[DecodedFrame]:
    """Decode ``info.path`` frame by frame (threaded decoding inside FFmpeg); with ``seek_dts``, from
    the keyframe at or before that decode time (stream time base) instead of the first packet.
    ``settings``' limits hold for every frame (``timed_frames``)."""
    settings = settings or get_settings()
    container = open_input(info.path)
    try:
        stream = video_stream(container)
        if seek_dts is not None:
            container.seek(seek_dts, stream=stream, backward=True, any_frame=False)
        thread_decoder(stream, threads)
        prepare_decoder(stream, settings.max_pixels)
        rgb = RgbConverter(info.coded_width, info.coded_height, info.rotation, info.mirror)
        last_pts: int | None = None
        try:
            for frame, pts, duration in timed_frames(container, stream, info, settings):
                last_pts = pts
                image = rgb(frame)
                yield DecodedFrame(image, pts, duration)
        except av.error.FFmpegError as exc:
            raise decode_error(stream, settings, last_pts, exc) from None
    finally:
        container.close()


def decode_error(stream: av.video.stream.VideoStream, settings: Settings, last_pts: int | None,
                 exc: av.error.FFmpegError) -> BackdropError:
    """What a decoder's failure midway means: a frame past the limits (``prepare_decoder`` refused
    it), else a video that cannot be decoded further."""
    if too_large_after_error(stream, settings.max_pixels):
        return VideoTooLarge(f"a frame after time {last_pts} exceeds the limit of {settings.max_pixels} pixels")
    return CorruptVideo(f"the video cannot be decoded past frame time {last_pts} ({exc})")


def timed_frames(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                 info: VideoInfo, settings: Settings) -> Iterator[tuple[av.VideoFrame, int, int]]:
    """The stream's frames in display order as (frame, pts, duration) in its time base: the pts
    strictly increasing (``_TimestampGuess``, else one frame on from the last), interlaced frames
    made whole (``Deinterlacer``), damaged packets skipped (``decoded_frames``); a frame of another
    size than the probed one is refused past ``settings``' limits (``VideoTooLarge``), and the
    callers scale the others to the probed size.  This decoder's and the device path's
    (``hwdecode``)."""
    step = _pts_step(info)
    guess = _TimestampGuess(trust_dts=info.decode_order_times, pts_alone=info.container != "avi")
    deinterlace = Deinterlacer()
    timing: deque[tuple[int, int]] = deque()  # (pts, duration) of the frames inside the deinterlacer
    last_pts: int | None = None
    horizon = time_horizon(info)
    probed = (info.coded_width, info.coded_height)
    for frame in decoded_frames(container, stream, info.frames, settings.max_pixels):
        if (frame.width, frame.height) != probed:
            size = (frame.height, frame.width) if info.rotation in (90, 270) else (frame.width, frame.height)
            check_frame_size(*size, settings)
        pts = guess(frame.pts, frame.dts, stream.codec_context.reorder_depth * step)
        if pts is not None and horizon is not None and pts > horizon:
            pts = None  # no time of this video's: a damaged timestamp, read as none
        if pts is None:
            pts = 0 if last_pts is None else last_pts + step
        if last_pts is not None and pts <= last_pts:
            pts = last_pts + 1  # keep the order the decoder gives; never two frames at one time
        last_pts = pts
        timing.append((int(pts), int(frame.duration or step)))
        frame.pts = pts
        for out in deinterlace(frame):
            yield (out, *timing.popleft())
    for out in deinterlace.flush():
        yield (out, *timing.popleft())


class Deinterlacer:
    """Interlaced pictures (1080i broadcast, AVCHD camcorders, DV) made whole frames by FFmpeg's
    ``bwdif``: one frame out for each frame in (``send_frame``), one frame behind, and only the
    frames flagged interlaced are changed.  Without it the two woven fields of each picture went
    through the model and into a progressive output, which players do not deinterlace: every edge
    in motion came out combed.  Progressive video never builds the filter; a change of frame size
    or format rebuilds it.  An interlaced frame of NVDEC's (the device path) is brought to the host
    for it."""

    OPTIONS = "mode=send_frame:parity=auto:deint=interlaced"

    def __init__(self) -> None:
        self._graph: av.filter.Graph | None = None
        self._shape: tuple[int, int, str] | None = None

    def __call__(self, frame: av.VideoFrame) -> list[av.VideoFrame]:
        """The frames that come out for ``frame`` (none while the filter holds it, two at a rebuild)."""
        if frame.interlaced_frame and frame.format.name == "cuda":
            frame = frame.reformat(format="yuv420p")  # NVDEC's woven fields: bwdif runs on the host
        shape = (frame.width, frame.height, frame.format.name)
        out = self.flush() if self._graph is not None and shape != self._shape else []
        if self._graph is None:
            if not frame.interlaced_frame:
                return [*out, frame]
            self._graph, self._shape = self._build(frame), shape
        self._graph.vpush(frame)
        return out + self._pull()

    def flush(self) -> list[av.VideoFrame]:
        """The frames the filter still holds (at the end, or before a rebuild)."""
        if self._graph is None:
            return []
        self._graph.vpush(None)
        out = self._pull()
        self._graph = None
        return out

    @staticmethod
    def _build(frame: av.VideoFrame) -> av.filter.Graph:
        return filter_chain(frame, [("bwdif", Deinterlacer.OPTIONS)])

    def _pull(self) -> list[av.VideoFrame]:
        assert self._graph is not None
        out: list[av.VideoFrame] = []
        while True:
            try:
                out.append(self._graph.vpull())
            except (av.error.BlockingIOError, av.error.EOFError):
                return out


class RgbConverter:
    """Decoded frames as upright RGB arrays at ``width`` x ``height`` (the video's probed, coded
    size): a frame of another size scaled to it (letterboxed where its shape differs:
    ``fitted_size``), and turned and mirrored as the video's display matrix asks (``rotation``,
    degrees counter-clockwise, then ``mirror``: ``VideoInfo``) by a ``transpose`` or flips
    (``ORIENTATIONS``).  The video's decoder and a background video's (at each frame's own size)
    use it.

    An FFmpeg filter graph does it, not ``to_ndarray(format="rgb24")``: that made a fresh frame
    buffer for every picture, past glibc's mmap threshold as the pipeline sets it, so the kernel
    zeroed 6 MB a 1080p frame a page at a time (1,500 page faults; 3-4 ms against 0.6 ms for the
    conversion itself on a 2-core EPYC).  The graph's frames come from its buffer pool and go back
    to it when the array, a view of one, is dropped.  The pixels are swscale's as before (bilinear,
    the frame's own matrix and range): the same bytes for 8-bit 4:2:0, 4:2:2, 4:4:4, RGB and
    grey video; 10-bit and 4:1:1 (DV) video, which the scale filter dithers or samples its own way,
    differ by a quarter to half a level on average, more at sharp colour edges.  The graph is built
    again when the frames' size, format, matrix or range change.

    The frame's primaries and transfer are set to unspecified before it goes in (no conversion
    between them is made, and swscale refuses reserved values, which some encoders write), and a
    matrix swscale has no conversion for is read as the nearest it has (``nearest_matrix``): either
    failed the whole job as a corrupt video."""

    def __init__(self, width: int, height: int, rotation: int = 0, mirror: bool = False,
                 alpha: bool = False) -> None:
        self.width, self.height, self.rotation, self.mirror = width, height, rotation, mirror
        self.alpha = alpha  # RGBA for frames whose format carries opacity (a background's: shown on black)
        self._graph: av.filter.Graph | None = None
        self._key: tuple[object, ...] | None = None

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        frame.color_primaries = frame.color_trc = UNSPECIFIED
        frame.colorspace = nearest_matrix(int(frame.colorspace))
        key = (frame.width, frame.height, frame.format.name, int(frame.colorspace), int(frame.color_range))
        if self._graph is None or key != self._key:
            self._graph, self._key = self._build(frame), key
        self._graph.vpush(frame)
        image: np.ndarray = self._graph.vpull().to_ndarray()
        return image

    def _build(self, frame: av.VideoFrame) -> av.filter.Graph:
        layout = "rgba" if self.alpha and has_alpha(frame.format) else "rgb24"
        fit = fitted_size(frame.width, frame.height, self.width, self.height)
        if fit is None:
            steps = [("scale", f"w={self.width}:h={self.height}:flags=bilinear")]
        else:
            w, h, x, y = fit
            steps = [("scale", f"w={w}:h={h}:flags=bilinear"),
                     ("pad", f"w={self.width}:h={self.height}:x={x}:y={y}:color=black")]
        steps += [("format", f"pix_fmts={layout}"), *ORIENTATIONS[self.rotation, self.mirror]]
        return filter_chain(frame, steps, colorspace=str(int(frame.colorspace)), range=str(int(frame.color_range)))


#: How far a picture's shape may be from the output's and still be scaled to the whole output (a
#: pixel or two of rounding between sizes, 854x480 in 1280x720); past it, it is letterboxed.
SHAPE_TOLERANCE = 0.01


def fitted_size(width: int, height: int, out_w: int, out_h: int) -> tuple[int, int, int, int] | None:
    """Where a ``width`` x ``height`` picture goes in an ``out_w`` x ``out_h`` frame whose shape is
    not its own, as (w, h, x, y): as large as fits, centred, on black, sizes and offsets even (a
    4:2:0 picture's chroma stays whole).  A recording whose pictures turn from 4:3 to 16:9 midway
    (a WebRTC call, a resized window) was stretched, people and all; the black around the picture
    is background to the model, so the new background fills it.  None where the shapes agree
    within ``SHAPE_TOLERANCE``: the picture is scaled to the whole frame."""
    if abs(width * out_h - height * out_w) <= SHAPE_TOLERANCE * width * out_h:
        return None
    scale = min(out_w / width, out_h / height)
    w = min(out_w, max(2, round(width * scale / 2) * 2))
    h = min(out_h, max(2, round(height * scale / 2) * 2))
    return w, h, (out_w - w) // 4 * 2, (out_h - h) // 4 * 2


def has_alpha(fmt: av.VideoFormat) -> bool:
    """Whether pictures in ``fmt`` can be see-through: an alpha plane, or a palette (GIF's, whose
    entries carry one)."""
    return fmt.has_palette or any(c.is_alpha for c in fmt.components)


def filter_chain(frame: av.VideoFrame, steps: list[tuple[str, str]], **source: str) -> av.filter.Graph:
    """A configured graph: a source of frames like ``frame`` (with ``source``'s further options),
    then the filters ``steps`` (name, arguments) in turn, then a sink (``vpush`` / ``vpull``)."""
    graph = av.filter.Graph()
    chain = [graph.add("buffer", video_size=f"{frame.width}x{frame.height}", pix_fmt=frame.format.name,
                       time_base=str(frame.time_base or Fraction(1, 90000)), pixel_aspect="1/1", **source)]
    chain += [graph.add(name, args) for name, args in steps]
    chain.append(graph.add("buffersink"))
    for a, b in zip(chain, chain[1:], strict=False):
        a.link_to(b)
    graph.configure()
    return graph


UNSPECIFIED = 2  # FFmpeg's code for an unspecified matrix, primaries or transfer
#: The matrices swscale converts by: RGB, BT.709, unspecified (read as BT.601), FCC, BT.470BG,
#: SMPTE 170M, SMPTE 240M, BT.2020 non-constant luminance.
SWSCALE_MATRICES = frozenset({0, 1, 2, 4, 5, 6, 7, 9})


def nearest_matrix(colorspace: int) -> int:
    """``colorspace`` where swscale has it; BT.2020's constant-luminance and ICtCp forms as BT.2020's
    non-constant one; any other (YCgCo, SMPTE 2085, chromaticity-derived, reserved) unspecified."""
    if colorspace in SWSCALE_MATRICES:
        return colorspace
    nearest = 9 if colorspace in (10, 14) else UNSPECIFIED
    if colorspace not in _WARNED:
        _WARNED.add(colorspace)
        log.warning("colour matrix %s has no conversion here; read as %s", colorspace,
                    "BT.2020" if nearest == 9 else "BT.601")
    return nearest


_WARNED: set[int] = set()


#: The filter that shows a picture as its display matrix asks, by (rotation, mirror): turned
#: counter-clockwise as ``np.rot90``'s turns, then flipped left to right where ``mirror``.  A turn
#: and a flip together are one ``transpose`` (``cclock_flip`` swaps x and y, ``clock_flip`` swaps
#: them reversed) or the flip along the other axis.
ORIENTATIONS: dict[tuple[int, bool], list[tuple[str, str]]] = {
    (0, False): [],
    (90, False): [("transpose", "dir=cclock")],
    (180, False): [("hflip", ""), ("vflip", "")],
    (270, False): [("transpose", "dir=clock")],
    (0, True): [("hflip", "")],
    (90, True): [("transpose", "dir=clock_flip")],
    (180, True): [("vflip", "")],
    (270, True): [("transpose", "dir=cclock_flip")],
}


#: How far past its inspected length a video's frame times may run (its length is the shorter of
#: what the container declares and what its packets span) before a time counts as damaged.
HORIZON_S = 60


def time_horizon(info: VideoInfo) -> int | None:
    """The latest frame time (``time_base`` ticks) that can be this video's: its first frame's time
    plus its length and ``HORIZON_S``; None where its packets are untimed.  A fuzzed Ogg file's
    second packet said 2**58 ticks (FFmpeg takes a damaged granule position as it is): the frames
    from there on carried it, and the output's muxer refused them, a traceback and exit 1."""
    if info.first_pts is None:
        return None
    return info.first_pts + round((info.duration_s + HORIZON_S) / info.time_base)


def _pts_step(info: VideoInfo) -> int:
    """One frame's duration in time-base units, for frames that come without a timestamp."""
    return max(1, round(1 / (info.fps * info.time_base)))


class _TimestampGuess:
    """FFmpeg's best-effort timestamp (``guess_correct_pts``): whichever of the frames' pts and
    dts has gone backwards less often so far.

    The decoder hands frames out in display order, but containers without presentation times
    (AVI with B-frames) label them with the packets' times in file order: 1, 2, 3, 5, 4, ...
    Their dts then run in order, and following the pts would swap frames in the output. AVI
    stores decode times only, so there the dts is trusted from the first frame (the first swap
    comes before any evidence of it), and so it is where a muxer wrote each packet's decode time as
    its presentation time too (``VideoInfo.decode_order_times``: an FLV or MP4 without composition
    offsets; H.264 with B-frames came out with a frame's time left out near the start, every frame
    after it a frame late and the last two a tick apart).

    A frame's dts is that of the packet whose decoding gave it out, which a decoder that reorders
    frames (B-frames: ``reorder_ticks``, its reorder depth in ticks) reads that many frames after
    the frame's own: in an AVI, whose packets' times are their places in the file, the first
    picture (its first packet) is shown at that packet's time, not the depth later.  Taken as it
    was, every frame of an AVI with B-frames came out one frame (MPEG-4 Part 2) or two (x264's
    default) behind its sound.  The frames the decoder gives out at the end carry no dts there
    (no packet gave them out): they get none, and follow the frame before them, unless the decoder
    reorders nothing and the container's pts are its own (``pts_alone``: not AVI's, whose FFmpeg
    makes them up)."""

    def __init__(self, trust_dts: bool = False, pts_alone: bool = True) -> None:
        self.trust_dts, self.pts_alone = trust_dts, pts_alone
        self.faulty_pts, self.faulty_dts = int(trust_dts), 0
        self.last_pts: int | None = None
        self.last_dts: int | None = None

    def __call__(self, pts: int | None, dts: int | None, reorder_ticks: int = 0) -> int | None:
        if dts is not None:
            self.faulty_dts += self.last_dts is not None and dts <= self.last_dts
            self.last_dts = dts
        if pts is not None:
            self.faulty_pts += self.last_pts is not None and pts <= self.last_pts
            self.last_pts = pts
        if self.trust_dts and self.faulty_pts > self.faulty_dts:
            if dts is not None:
                return dts - reorder_ticks
            return pts if self.pts_alone and not reorder_ticks else None
        if pts is not None and (self.faulty_pts <= self.faulty_dts or dts is None):
            return pts
        return dts

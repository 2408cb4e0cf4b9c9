"""Streaming decode: one upright RGB frame at a time, with its original timestamp.

Frames are never gathered in memory; the caller batches them.  A display-rotation tag is applied
to the pixels here, so everything downstream sees the picture the way a player shows it and the
encoder writes it upright (with no tag).

Headers can lie, and a stream may change size midway: the decoder is told to refuse (before it
allocates) any frame past the probed size, and such a frame fails the job with ``video_too_large``;
a frame smaller than the probed size is scaled to it, so every frame downstream has one size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import av
import numpy as np

from service.errors import CorruptVideo, VideoTooLarge
from service.media.probe import VideoInfo, limit_decoder, open_input, too_large_after_error


@dataclass
class DecodedFrame:
    image: np.ndarray  # uint8 (H, W, 3) RGB, upright
    pts: int  # in the input stream's time base, strictly increasing
    duration: int  # how long it stays on screen, same time base (the last frame's matters for length)


def iter_frames(info: VideoInfo, threads: int = 0, seek_dts: int | None = None) -> Iterator[DecodedFrame]:
    """Decode ``info.path`` frame by frame (threaded decoding inside FFmpeg); with ``seek_dts``, from
    the keyframe at or before that decode time (stream time base) instead of the first packet."""
    container = open_input(info.path)
    try:
        stream = container.streams.video[0]
        if seek_dts is not None:
            container.seek(seek_dts, stream=stream, backward=True, any_frame=False)
        stream.thread_type = "AUTO"
        if threads:
            stream.codec_context.thread_count = threads
        pixels = info.coded_width * info.coded_height
        limit_decoder(stream, pixels)
        k = info.rotation // 90
        step = _pts_step(info)
        guess = _TimestampGuess(trust_dts=info.container == "avi")
        last_pts: int | None = None
        try:
            for frame in container.decode(stream):
                pts = guess(frame.pts, frame.dts)
                if pts is None:
                    pts = 0 if last_pts is None else last_pts + step
                if last_pts is not None and pts <= last_pts:
                    pts = last_pts + 1  # keep the order the decoder gives; never two frames at one time
                last_pts = pts
                image = _image(frame, info, pixels)
                if k:
                    image = np.ascontiguousarray(np.rot90(image, k))
                yield DecodedFrame(image, int(pts), int(frame.duration or step))
        except av.error.FFmpegError as exc:
            if too_large_after_error(stream, pixels):
                raise VideoTooLarge(
                    f"a frame after time {last_pts} is larger than the probed "
                    f"{info.coded_width}x{info.coded_height}"
                ) from None
            raise CorruptVideo(f"the video cannot be decoded past frame time {last_pts} ({exc})") from None
    finally:
        container.close()


def _image(frame: av.VideoFrame, info: VideoInfo, pixels: int) -> np.ndarray:
    """The frame as RGB at the probed (coded) size: larger is refused, smaller is scaled up."""
    w, h = info.coded_width, info.coded_height
    if frame.width * frame.height > pixels:
        raise VideoTooLarge(f"a frame is {frame.width}x{frame.height}, larger than the probed {w}x{h}")
    if (frame.width, frame.height) != (w, h):
        return frame.to_ndarray(format="rgb24", width=w, height=h)
    return frame.to_ndarray(format="rgb24")


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
    comes before any evidence of it)."""

    def __init__(self, trust_dts: bool = False) -> None:
        self.faulty_pts, self.faulty_dts = int(trust_dts), 0
        self.last_pts: int | None = None
        self.last_dts: int | None = None

    def __call__(self, pts: int | None, dts: int | None) -> int | None:
        if dts is not None:
            self.faulty_dts += self.last_dts is not None and dts <= self.last_dts
            self.last_dts = dts
        if pts is not None:
            self.faulty_pts += self.last_pts is not None and pts <= self.last_pts
            self.last_pts = pts
        if pts is not None and (self.faulty_pts <= self.faulty_dts or dts is None):
            return pts
        return dts

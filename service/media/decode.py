"""Streaming decode: one upright RGB frame at a time, with its original timestamp.

Frames are never gathered in memory; the caller batches them.  A display-rotation tag is applied
to the pixels here, so everything downstream sees the picture the way a player shows it and the
encoder writes it upright (with no tag).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import av
import numpy as np

from service.errors import CorruptVideo
from service.media.probe import VideoInfo, open_input


@dataclass
class DecodedFrame:
    image: np.ndarray  # uint8 (H, W, 3) RGB, upright
    pts: int  # in the input stream's time base, strictly increasing
    duration: int  # how long it stays on screen, same time base (the last frame's matters for length)


def iter_frames(info: VideoInfo, threads: int = 0) -> Iterator[DecodedFrame]:
    """Decode ``info.path`` frame by frame (threaded decoding inside FFmpeg)."""
    container = open_input(info.path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if threads:
            stream.codec_context.thread_count = threads
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
                image: np.ndarray = frame.to_ndarray(format="rgb24")
                if k:
                    image = np.ascontiguousarray(np.rot90(image, k))
                yield DecodedFrame(image, int(pts), int(frame.duration or step))
        except av.error.FFmpegError as exc:
            raise CorruptVideo(f"the video cannot be decoded past frame time {last_pts} ({exc})") from None
    finally:
        container.close()


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

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
        last_pts: int | None = None
        try:
            for frame in container.decode(stream):
                pts = frame.pts
                if pts is None:
                    pts = 0 if last_pts is None else last_pts + step
                if last_pts is not None and pts <= last_pts:
                    pts = last_pts + 1  # keep the order the decoder gives; never two frames at one time
                last_pts = pts
                image = frame.to_ndarray(format="rgb24")
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

"""Probe and validate an input video before any work is spent on it.

Every way an upload can be wrong maps to its own error code (``service.errors``): an empty file, a
file that is no media at all (or a still image), a container with no video stream, a truncated or
corrupt file, a codec this build cannot decode, or a video over the limits in settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av

from service.config import Settings, get_settings
from service.errors import (
    CorruptVideo,
    EmptyFile,
    NotAVideo,
    NoVideoStream,
    UnsupportedCodec,
    VideoTooLarge,
)

#: Demuxers that read single pictures: a PNG or JPEG opens as a one-frame "video" in FFmpeg.
IMAGE_FORMATS = ("image2", "_pipe", "gif", "webp")
#: Demuxers that turn any text into "video" (ANSI art): a text file is not a video.
TEXT_FORMATS = ("tty",)
#: Leading bytes of containers we know: a file that starts like one but will not open is corrupt
#: (typically truncated), not "not a video".
CONTAINER_MAGIC = (
    (4, b"ftyp"),  # MP4 / MOV / 3GP (offset 4)
    (0, b"\x1a\x45\xdf\xa3"),  # Matroska / WebM
    (0, b"RIFF"),  # AVI
    (0, b"\x00\x00\x01\xba"),  # MPEG-PS
    (0, b"FLV"),
    (0, b"OggS"),
)


@dataclass(frozen=True)
class AudioInfo:
    index: int
    codec: str
    sample_rate: int
    channels: int


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    container: str
    codec: str
    coded_width: int
    coded_height: int
    rotation: int  # degrees counter-clockwise that make the picture upright (0, 90, 180, 270)
    fps: Fraction
    time_base: Fraction
    frames: int  # exact when the container records it, else estimated from duration × fps
    duration_s: float
    audio: tuple[AudioInfo, ...] = field(default_factory=tuple)
    #: The video track's own length in ``time_base`` ticks, where the container records one (the
    #: sum of its frame durations, which may end before the last frame's timestamp + duration).
    track_ticks: int | None = None

    @property
    def width(self) -> int:
        """Displayed width (after rotation)."""
        return self.coded_height if self.rotation in (90, 270) else self.coded_width

    @property
    def height(self) -> int:
        return self.coded_width if self.rotation in (90, 270) else self.coded_height

    @property
    def has_audio(self) -> bool:
        return bool(self.audio)


def normalise_rotation(degrees: float) -> int:
    """FFmpeg's display-matrix angle (−180..180, counter-clockwise) as 0/90/180/270."""
    return int(round(degrees / 90.0)) % 4 * 90


def _looks_like_container(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(16)
    return any(head[off : off + len(magic)] == magic for off, magic in CONTAINER_MAGIC)


def open_input(path: Path) -> av.container.InputContainer:
    """Open a media file, mapping FFmpeg's failures to our codes."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise NotAVideo(f"file not found: {path.name}") from None
    if size == 0:
        raise EmptyFile("the video file is empty (0 bytes)")
    try:
        return av.open(str(path), mode="r", timeout=30)
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        if _looks_like_container(path):
            raise CorruptVideo(f"the video file is corrupt or truncated ({exc.__class__.__name__})") from None
        raise NotAVideo("the file is not a video this service can read") from None


def probe_video(path: Path, settings: Settings | None = None) -> VideoInfo:
    """Read the container, check the limits and decode the first frame; raise on any problem."""
    settings = settings or get_settings()
    container = open_input(path)
    try:
        if any(tag in container.format.name for tag in IMAGE_FORMATS):
            raise NotAVideo(f"this is a still image ({container.format.name}), not a video")
        if container.format.name in TEXT_FORMATS:
            raise NotAVideo("this is a text file, not a video")
        if not container.streams.video:
            raise NoVideoStream("the file has no video stream")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        if ctx is None or ctx.codec is None:
            raise UnsupportedCodec("the video codec is not supported")
        codec = ctx.codec.name
        fps = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not fps or fps <= 0:
            raise CorruptVideo("the video stream has no usable frame rate")
        fps = Fraction(fps)
        time_base = Fraction(stream.time_base) if stream.time_base else Fraction(1, 90000)
        if stream.duration:
            duration = float(stream.duration * time_base)
        elif container.duration:
            duration = container.duration / av.time_base
        else:
            duration = 0.0
        first = _first_frame(container, stream)
        coded_w, coded_h = first.width, first.height
        rotation = normalise_rotation(getattr(first, "rotation", 0) or 0)
        frames = _count_packets(container, stream)
        # MP4/MOV headers index every sample, so fewer packets than listed means the file was cut
        # short.  (AVI headers count dropped frames too, Matroska lists none: no such check there.)
        if container.format.name.startswith("mov") and stream.frames and frames < stream.frames:
            raise CorruptVideo(
                f"the video is truncated: the container lists {stream.frames} frames, the file holds {frames}"
            )
        if frames <= 0:
            frames = max(1, math.ceil(duration * fps - 1e-6))
        if duration <= 0:
            duration = float(frames / fps)
        audio = tuple(
            AudioInfo(a.index, a.codec_context.name, a.codec_context.sample_rate or 0, a.codec_context.channels or 0)
            for a in container.streams.audio
            if a.codec_context is not None
        )
        info = VideoInfo(
            path=Path(path), container=container.format.name, codec=codec, coded_width=coded_w,
            coded_height=coded_h, rotation=rotation, fps=fps, time_base=time_base, frames=frames,
            duration_s=duration, audio=audio, track_ticks=int(stream.duration) if stream.duration else None,
        )
    finally:
        container.close()
    check_limits(info, settings)
    return info


def _first_frame(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> av.VideoFrame:
    try:
        for frame in container.decode(stream):
            return frame
    except av.error.DecoderNotFoundError:
        raise UnsupportedCodec(f"no decoder for codec {stream.codec_context.name!r}") from None
    except av.error.PatchWelcomeError:
        raise UnsupportedCodec(f"codec {stream.codec_context.name!r} is not supported") from None
    except av.error.FFmpegError as exc:
        raise CorruptVideo(f"the first video frame cannot be decoded ({exc.__class__.__name__})") from None
    raise CorruptVideo("the video stream holds no decodable frame")


def _count_packets(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> int:
    """Count the video packets by demuxing (no decoding: cheap).  A cut-off file shows up here as a
    demuxer error or as fewer packets than the header promised."""
    container.seek(0, stream=stream)
    count = 0
    try:
        for packet in container.demux(stream):
            if packet.size:
                count += 1
    except av.error.FFmpegError as exc:
        raise CorruptVideo(f"the video file is corrupt or truncated ({exc.__class__.__name__})") from None
    return count


def check_limits(info: VideoInfo, settings: Settings) -> None:
    s = settings
    if info.width > s.max_width or info.height > s.max_height or info.width * info.height > s.max_pixels:
        raise VideoTooLarge(
            f"frame size {info.width}x{info.height} exceeds the limit "
            f"({s.max_width}x{s.max_height}, {s.max_pixels} pixels)"
        )
    if info.duration_s > s.max_duration_s:
        raise VideoTooLarge(f"duration {info.duration_s:.1f}s exceeds the limit of {s.max_duration_s:.0f}s")
    if info.frames > s.max_frames:
        raise VideoTooLarge(f"{info.frames} frames exceed the limit of {s.max_frames}")

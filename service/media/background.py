"""Backgrounds: an image, a video, a solid colour or the original background blurred.

A background is given as a string: a path to an image or video file, ``#RRGGBB``, or ``blur``.
``open_background`` turns it into a source that hands out one background frame per video frame,
already at the output size: images are scaled to cover and centred (never stretched), videos are
looped to the input's length and resampled to its frame rate by timestamp.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Protocol

import av
import cv2
import numpy as np

from service.config import Settings, get_settings
from service.errors import BackdropError, InvalidBackground, InvalidColor
from service.media.probe import IMAGE_FORMATS, normalise_rotation, open_input

COLOR_RE = re.compile(r"^#[0-9a-fA-F]{6}$")


class BackgroundSource(Protocol):
    def frames(self, images: np.ndarray, times: list[float]) -> np.ndarray:
        """Background for each frame of a batch: ``images`` uint8 (N, H, W, 3), ``times`` seconds."""
        ...

    def close(self) -> None: ...


def parse_color(spec: str) -> tuple[int, int, int]:
    if not COLOR_RE.match(spec):
        raise InvalidColor(f"colour {spec!r} is not of the form #RRGGBB")
    return int(spec[1:3], 16), int(spec[3:5], 16), int(spec[5:7], 16)


def cover(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Scale ``image`` so it covers width×height, keeping its aspect, and crop the centre."""
    h, w = image.shape[:2]
    scale = max(width / w, height / h)
    nw, nh = max(width, round(w * scale)), max(height, round(h * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (nw, nh), interpolation=interp)
    x, y = (nw - width) // 2, (nh - height) // 2
    return np.ascontiguousarray(resized[y : y + height, x : x + width])


class ColorBackground:
    def __init__(self, rgb: tuple[int, int, int], width: int, height: int):
        self.plate = np.empty((height, width, 3), np.uint8)
        self.plate[:] = rgb

    def frames(self, images: np.ndarray, times: list[float]) -> np.ndarray:
        return np.broadcast_to(self.plate, images.shape)

    def close(self) -> None:
        pass


class ImageBackground(ColorBackground):
    def __init__(self, image: np.ndarray, width: int, height: int):
        self.plate = cover(image, width, height)


class BlurBackground:
    """The input's own background, blurred (the person is composited back on top, sharp).

    The blur runs at a quarter of the size: a wide Gaussian there costs 1/16 and looks the same."""

    def __init__(self, width: int, height: int, strength: float = 0.03):
        self.sigma = max(2.0, strength * max(width, height) / 4)

    def frames(self, images: np.ndarray, times: list[float]) -> np.ndarray:
        out = np.empty_like(images)
        for i, img in enumerate(images):
            h, w = img.shape[:2]
            small = cv2.resize(img, (max(1, w // 4), max(1, h // 4)), interpolation=cv2.INTER_AREA)
            small = cv2.GaussianBlur(small, (0, 0), self.sigma)
            out[i] = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
        return out

    def close(self) -> None:
        pass


class VideoBackground:
    """A background video, looped and resampled: for output time t it shows the frame of the
    background that is on screen at ``t mod duration``."""

    def __init__(self, path: Path, width: int, height: int):
        self.path, self.width, self.height = path, width, height
        self._container: av.container.InputContainer | None = None
        self._iter: Iterator[tuple[float, np.ndarray]] | None = None
        self._current: tuple[float, np.ndarray] | None = None
        self._next: tuple[float, np.ndarray] | None = None
        self.duration = self._measure()

    def _measure(self) -> float:
        container = open_input(self.path)
        try:
            stream = container.streams.video[0]
            end = 0.0
            count = 0
            for packet in container.demux(stream):
                if packet.pts is not None and packet.time_base is not None:
                    end = max(end, float((packet.pts + (packet.duration or 0)) * Fraction(packet.time_base)))
                    count += 1
            if count == 0:
                raise InvalidBackground("the background video has no frames")
            start = _start_s(stream)
            return max(end - start, 1e-3)
        except av.error.FFmpegError as exc:
            raise InvalidBackground(f"the background video cannot be read ({exc.__class__.__name__})") from None
        finally:
            container.close()

    def _restart(self) -> None:
        self.close()
        self._container = open_input(self.path)
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        start = _start_s(stream)

        def gen() -> Iterator[tuple[float, np.ndarray]]:
            rot = None
            for frame in self._container.decode(stream):  # type: ignore[union-attr]
                if rot is None:
                    rot = normalise_rotation(getattr(frame, "rotation", 0) or 0) // 90
                img = frame.to_ndarray(format="rgb24")
                if rot:
                    img = np.rot90(img, rot)
                t = float(frame.time) - start if frame.time is not None else 0.0
                yield t, cover(img, self.width, self.height)

        self._iter = gen()
        self._current = next(self._iter, None)
        self._next = next(self._iter, None)
        if self._current is None:
            raise InvalidBackground("the background video has no decodable frames")

    def _at(self, t: float) -> np.ndarray:
        t = t % self.duration
        if self._current is None or t < self._current[0]:
            self._restart()
        assert self._current is not None and self._iter is not None
        while self._next is not None and self._next[0] <= t:
            self._current, self._next = self._next, next(self._iter, None)
        return self._current[1]

    def frames(self, images: np.ndarray, times: list[float]) -> np.ndarray:
        try:
            return np.stack([self._at(t) for t in times])
        except av.error.FFmpegError as exc:
            raise InvalidBackground(f"the background video cannot be decoded ({exc.__class__.__name__})") from None

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


def _start_s(stream: av.video.stream.VideoStream) -> float:
    """The stream's first timestamp in seconds (0 when it records none)."""
    if stream.start_time is None or stream.time_base is None:
        return 0.0
    return float(stream.start_time * stream.time_base)


def _read_image(path: Path, settings: Settings) -> np.ndarray | None:
    """The picture in ``path`` as RGB, or None when it is not an image."""
    data = np.fromfile(str(path), dtype=np.uint8)
    if data.size == 0:
        raise InvalidBackground("the background file is empty")
    # Check the size from the header before decoding: a tiny file can declare a giant picture.
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, ValueError, OSError):
        container = None
    if container is not None:
        try:
            streams = container.streams.video
            is_image = any(tag in container.format.name for tag in IMAGE_FORMATS)
            if streams and is_image:
                ctx = streams[0].codec_context
                if ctx.width * ctx.height > settings.max_background_pixels:
                    raise InvalidBackground(
                        f"background image {ctx.width}x{ctx.height} exceeds {settings.max_background_pixels} pixels"
                    )
            elif streams:
                return None  # a video
        finally:
            container.close()
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        return None
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def open_background(spec: str, width: int, height: int, settings: Settings | None = None) -> BackgroundSource:
    """The background source for ``spec`` at the output size."""
    settings = settings or get_settings()
    spec = spec.strip()
    if spec.lower() == "blur":
        return BlurBackground(width, height)
    if spec.startswith("#"):
        return ColorBackground(parse_color(spec), width, height)
    path = Path(spec)
    if not path.is_file():
        raise InvalidBackground(f"background {spec!r} is not '#RRGGBB', 'blur' or an existing file")
    image = _read_image(path, settings)
    if image is not None:
        return ImageBackground(image, width, height)
    try:
        return VideoBackground(path, width, height)
    except BackdropError as exc:
        if isinstance(exc, InvalidBackground):
            raise
        raise InvalidBackground(f"the background is neither an image nor a video: {exc.message}") from None


def validate_background(spec: str, settings: Settings | None = None) -> None:
    """Refuse a bad background early (the API calls this before accepting a job)."""
    open_background(spec, 16, 16, settings).close()

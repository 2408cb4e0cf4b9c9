"""Backgrounds: an image, a video, a solid colour or the original background blurred.

A background is given as a string: a path to an image or video file, ``#RRGGBB``, ``blur`` or
``blur:<strength>`` (0.05 to 1, default 0.3; larger is blurrier).
``open_background`` turns it into a source that hands out one background frame per video frame,
already at the output size: images are scaled to cover and centred (never stretched), videos are
looped to the input's length and resampled to its frame rate by timestamp.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Protocol, cast

import av
import cv2
import numpy as np

from service.array_pool import ArrayPool, Empty, kept_array
from service.config import Settings, get_settings
from service.errors import BackgroundTooLarge, CorruptBackground, CorruptVideo, InputError
from service.media import bmp, heif, icc
from service.media.colour_space import HLG, PQ, SRGB, ColourSpace, converter, in_space
from service.media.decode import RgbConverter
from service.media.inspect import (
    BackgroundInfo,
    ImageHeader,
    ImageHeaderError,
    VideoInfo,
    inspect_background,
    parse_color,
    read_image_header,
    sample_aspect,
    validate_background,
)
from service.media.packets import read_packets
from service.media.probe import (
    decoded_frames,
    decoder_pixel_cap,
    open_input,
    orientation,
    prepare_decoder,
    thread_decoder,
    too_large_after_error,
    video_stream,
)
from service.options import blur_strength

__all__ = ["BackgroundSource", "open_background", "parse_color", "validate_background"]


class BackgroundSource(Protocol):
    def frames(self, images: np.ndarray, times: list[float], empty: Empty = np.empty) -> np.ndarray:
        """Background for each frame of a batch: ``images`` uint8 (N, H, W, 3), ``times`` seconds;
        ``empty`` makes the array a background made for the batch is written into (a job's
        ``ArrayPool``: at 1080p each new one was 1,500 page faults a frame)."""
        ...

    def close(self) -> None: ...


def cover(image: np.ndarray, width: int, height: int, pixel_aspect: float = 1.0,
          out: np.ndarray | None = None) -> np.ndarray:
    """Scale ``image`` so it covers width×height, keeping its aspect, and crop the centre.
    ``pixel_aspect``: the output's pixels' width over their height, over the image's (an
    anamorphic 720x480 output shown 16:9 takes a crop of 16:9, squeezed into its frame).

    The centre is cropped first and only it is scaled: scaling the whole picture first would make
    a picture of extreme aspect (1×50 million pixels) tens of gigabytes.  ``out``: a uint8
    (height, width, 3) array to write into."""
    h, w = image.shape[:2]
    shown = width * pixel_aspect  # the output's width in the image's pixels' units
    scale = max(shown / w, height / h)
    cw, ch = min(w, max(1, round(shown / scale))), min(h, max(1, round(height / scale)))
    x, y = (w - cw) // 2, (h - ch) // 2
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    crop = image[y : y + ch, x : x + cw]
    if out is not None:
        return cv2.resize(crop, (width, height), dst=out, interpolation=interp)
    return np.ascontiguousarray(cv2.resize(crop, (width, height), interpolation=interp))


class ColorBackground:
    """One colour, given in sRGB, as the video's colour space has it (``space``)."""

    def __init__(self, rgb: tuple[int, int, int], width: int, height: int, space: ColourSpace = SRGB):
        self.plate = np.empty((height, width, 3), np.uint8)
        self.plate[:] = in_space(np.array([[rgb]], np.uint8), SRGB, space)[0, 0]

    def frames(self, images: np.ndarray, times: list[float], empty: Empty = np.empty) -> np.ndarray:
        return np.broadcast_to(self.plate, images.shape)

    def close(self) -> None:
        pass


class ImageBackground(ColorBackground):
    """A still picture, covering the frame, in the video's colour space (``space``): from sRGB, or
    from the colour space its ``profile`` names (``icc``), brought into sRGB at the output size, or
    from its own HDR space (``own``: a HEIF picture's CICP numbers), as an HDR video background is."""

    def __init__(self, image: np.ndarray, width: int, height: int, pixel_aspect: float = 1.0,
                 space: ColourSpace = SRGB, profile: icc.RgbProfile | None = None, own: ColourSpace = SRGB):
        self.plate = in_space(icc.to_srgb(cover(image, width, height, pixel_aspect), profile), own, space)


class BlurBackground:
    """The input's own background, blurred (the person is composited back on top, sharp).

    The blur runs at a quarter of the size: a wide Gaussian there costs 1/16 and looks the same.
    ``strength`` is a tenth of the spec's ``blur:<strength>`` (the default 0.03 is ``blur``)."""

    def __init__(self, width: int, height: int, strength: float = 0.03):
        self.sigma = max(2.0, strength * max(width, height) / 4)

    def frames(self, images: np.ndarray, times: list[float], empty: Empty = np.empty) -> np.ndarray:
        out = empty(images.shape, np.uint8)
        for i, img in enumerate(images):
            h, w = img.shape[:2]
            small = cv2.resize(img, (max(1, w // 4), max(1, h // 4)), interpolation=cv2.INTER_AREA)
            small = cv2.GaussianBlur(small, (0, 0), self.sigma)
            cv2.resize(small, (w, h), dst=out[i], interpolation=cv2.INTER_LINEAR)
        return out

    def close(self) -> None:
        pass


class VideoBackground:
    """A background video (or animated image), looped and resampled: for output time t it shows the
    frame of the background that is on screen at ``t mod duration``.

    Its headers were checked by ``inspect_background``; as they can lie, the decoder refuses frames
    past ``pixels`` before allocating them, and a pass over more than ``max_frames`` frames stops:
    either fails the job with ``background_too_large``.

    ``threads``: its decoder's threads, as the job's own decoder has them (``pipeline.codec_threads``;
    0 = FFmpeg's choice).  FFmpeg's frame threads each hold frames of their own: a 4K background
    decoded with three threads on 2 cores took 50 MB more than with one, and a 1080p job with
    every option on it peaked at 1.0-1.07 GB, 0.96-0.98 GB with one."""

    def __init__(self, info: VideoInfo, width: int, height: int, pixels: int, max_frames: int,
                 pixel_aspect: float = 1.0, threads: int = 0, space: ColourSpace = SRGB):
        self.info, self.path, self.width, self.height = info, info.path, width, height
        self.space = space  # the video's: each picture is brought from its own into it
        self.pixels, self.max_frames = pixels, max_frames
        self.threads = threads
        self.pixel_aspect = pixel_aspect  # the output's
        self.own_aspect = 1.0  # the background's, read with its length
        self._container: av.container.InputContainer | None = None
        self._iter: Generator[tuple[float, np.ndarray], None, None] | None = None
        self._current: tuple[float, np.ndarray] | None = None
        self._next: tuple[float, np.ndarray] | None = None
        self._rgb: RgbConverter | None = None
        self._packets = 0  # the video's (``_measure``): how many may be damaged (``decoded_frames``)
        # the pictures at the output size: the current one, the next, and the one being made
        self._fitted = ArrayPool(max_bytes=3 * width * height * 3)
        self._profile = _profile(self.path)  # an animated PNG's or WebP's, like a still one's
        self.duration = self._measure()

    def _measure(self) -> float:
        container = open_input(self.path)
        try:
            stream = video_stream(container)
            end = 0.0
            count = 0
            for packet in read_packets(container, stream):
                if packet.pts is not None and packet.time_base is not None:
                    end = max(end, float((packet.pts + (packet.duration or 0)) * Fraction(packet.time_base)))
                    count += 1
                    self._check_count(count)
            if count == 0:
                raise CorruptBackground("the background video has no frames")
            self._packets = count
            self.own_aspect = float(sample_aspect(stream))
            start = _start_s(stream)
            return max(end - start, 1e-3)
        except av.error.FFmpegError as exc:
            raise CorruptBackground(f"the background video cannot be read ({exc.__class__.__name__})") from None
        finally:
            container.close()

    def _restart(self) -> None:
        self.close()
        self._container = open_input(self.path)
        stream = video_stream(self._container)
        thread_decoder(stream, self.threads)
        prepare_decoder(stream, self.pixels)
        start = _start_s(stream)

        def gen() -> Generator[tuple[float, np.ndarray], None, None]:
            turn: tuple[int, bool] | None = None
            try:
                frames = decoded_frames(self._container, stream, self._packets, self.pixels)  # type: ignore[arg-type]
                for count, frame in enumerate(frames, 1):
                    self._check_count(count)
                    if frame.width * frame.height > self.pixels:
                        raise BackgroundTooLarge(
                            f"a background frame is {frame.width}x{frame.height}, larger than its headers declare"
                        )
                    if turn is None:
                        turn = orientation(self.info, frame)
                    yield self._fit(frame, turn, start)
            except av.error.FFmpegError as exc:
                if too_large_after_error(stream, self.pixels):
                    raise BackgroundTooLarge("a background frame is larger than its headers declare") from None
                raise CorruptBackground(
                    f"the background video cannot be decoded ({exc.__class__.__name__})"
                ) from None
            except CorruptVideo as exc:  # too many damaged packets
                raise CorruptBackground(f"the background video: {exc.message}") from None

        self._iter = gen()
        self._current = next(self._iter, None)
        self._next = next(self._iter, None)
        if self._current is None:
            raise CorruptBackground("the background video has no decodable frames")

    def _check_count(self, count: int) -> None:
        if count > self.max_frames:
            raise BackgroundTooLarge(f"the background holds more than {self.max_frames} frames")

    def _fit(self, frame: av.VideoFrame, turn: tuple[int, bool], start: float) -> tuple[float, np.ndarray]:
        """(time, picture upright and covering the output) of one background frame, made RGB as the
        video's frames are (``decode.RgbConverter``: its matrix, a pooled buffer), in the video's
        colour space."""
        if self._rgb is None or (self._rgb.width, self._rgb.height) != (frame.width, frame.height):
            self._rgb = RgbConverter(frame.width, frame.height, *turn, alpha=True)
        own_space = ColourSpace(int(frame.color_primaries), int(frame.color_trc))  # the converter unsets them
        img = self._rgb(frame)
        if img.shape[-1] == 4:  # an animated GIF or PNG, or a video, with transparency
            img = on_black(img[..., :3], img[..., 3].astype(np.float32) * np.float32(1 / 255))
        img = icc.to_srgb(img, self._profile)
        t = float(frame.time) - start if frame.time is not None else 0.0
        own = 1 / self.own_aspect if turn[0] in (90, 270) else self.own_aspect  # turned a quarter: width and height swap
        shape = (self.height, self.width, 3)
        convert = converter(own_space, self.space)
        if convert is None:
            return t, cover(img, self.width, self.height, self.pixel_aspect / own, out=self._fitted.empty(shape, np.uint8))
        # in another colour space, the picture at the output size is only a step: a work array
        fitted = cover(img, self.width, self.height, self.pixel_aspect / own, out=kept_array(self, "_covered", shape, np.uint8))
        return t, convert(fitted, out=self._fitted.empty(shape, np.uint8))

    def _at(self, t: float) -> np.ndarray:
        t = t % self.duration
        if self._current is None or t < self._current[0]:
            self._restart()
        assert self._current is not None and self._iter is not None
        while self._next is not None and self._next[0] <= t:
            self._current, self._next = self._next, next(self._iter, None)
        return self._current[1]

    def frames(self, images: np.ndarray, times: list[float], empty: Empty = np.empty) -> np.ndarray:
        try:
            return np.stack([self._at(t) for t in times], out=empty((len(times), self.height, self.width, 3), np.uint8))
        except av.error.FFmpegError as exc:
            raise CorruptBackground(f"the background video cannot be decoded ({exc.__class__.__name__})") from None

    def close(self) -> None:
        """Close the file, and end the generator that decodes it: the generator holds the decoder
        (its frame threads, ``av:<codec>:df<n>``, and their frames), and it and this object refer
        to each other, so until the garbage collector came round they outlived the close."""
        if self._iter is not None:
            self._iter.close()
            self._iter = None
        if self._container is not None:
            self._container.close()
            self._container = None


def _start_s(stream: av.video.stream.VideoStream) -> float:
    """The stream's first timestamp in seconds (0 when it records none)."""
    if stream.start_time is None or stream.time_base is None:
        return 0.0
    return float(stream.start_time * stream.time_base)


def _read_image(path: Path, info: BackgroundInfo, header: heif.HeifHeader | None) -> np.ndarray:
    """The still picture in ``path`` as RGB, once ``inspect_background`` has checked its header
    against the limits (a 0.9 MB PNG can declare 30000×30000); the decoded size is checked against
    the header.  ``cv2.imread`` streams the file: an upload may be far larger than its pixels.
    ``header``: the picture's HEIF header where it is an AVIF or HEIC (``_heif_header``)."""
    if header is not None:
        return _read_heif(path, header)
    try:
        image_header = read_image_header(path)
    except ImageHeaderError as exc:
        raise CorruptBackground(str(exc)) from None
    if image_header.format in ("png", "webp", "gif"):
        return _read_with_alpha(path, info, image_header)
    masked = bmp.read_masked(path) if image_header.format == "bmp" else None
    if masked is not None:
        rgb, opacity = masked
        return rgb if opacity is None else on_black(rgb, opacity)
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)  # JPEG (turned by its Exif orientation), other BMPs
    if image is None:
        raise CorruptBackground("the background image cannot be decoded")
    if image.shape[0] * image.shape[1] > info.width * info.height:
        raise BackgroundTooLarge("the background image is larger than its header declares")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)  # type: ignore[no-any-return]


def _read_with_alpha(path: Path, info: BackgroundInfo, header: ImageHeader) -> np.ndarray:
    """A PNG, WebP or GIF as RGB, shown on black where it is see-through (``on_black``), then turned
    as its Exif orientation says.

    Read once as stored (``IMREAD_UNCHANGED``): colours, alpha and the orientation are all applied
    here.  OpenCV's colour read turned the picture by its Exif orientation but its unchanged read
    (the only one with alpha) did not, so a turned logo lost its transparency or had it laid on
    crooked; and it ignores a grey PNG's see-through colour (``tRNS``), and a 16-bit RGB one's, so
    what the file marks see-through showed its stored grey."""
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None and header.format == "gif":
        raw = _gif_by_ffmpeg(path, info, header)
    if raw is None:
        raise CorruptBackground("the background image cannot be decoded")
    if raw.shape[0] * raw.shape[1] > info.width * info.height:
        raise BackgroundTooLarge("the background image is larger than its header declares")
    stored = raw if raw.ndim == 3 else raw[..., None]
    opacity: np.ndarray | None = None
    if stored.shape[2] == 4:
        full = 65535.0 if raw.dtype == np.uint16 else 255.0  # a 16-bit PNG's, else 8 bits
        opacity = stored[..., 3].astype(np.float32) * np.float32(1 / full)
    elif header.transparent:
        key = np.array(header.transparent[::-1], raw.dtype)  # as stored: BGR, or one grey
        opacity = np.any(stored != key, axis=2).astype(np.float32)
    colours = stored[..., :3] if stored.shape[2] >= 3 else np.repeat(stored, 3, axis=2)
    if colours.dtype == np.uint16:
        colours = cv2.convertScaleAbs(colours, alpha=1 / 257)  # rounded to 8 bits
    rgb = cv2.cvtColor(np.ascontiguousarray(colours), cv2.COLOR_BGR2RGB)
    if opacity is not None:
        rgb = on_black(rgb, opacity)
    return np.ascontiguousarray(_oriented(rgb, header.orientation))


def _gif_by_ffmpeg(path: Path, info: BackgroundInfo, header: ImageHeader) -> np.ndarray | None:
    """A still GIF that OpenCV refuses, as BGRA from FFmpeg's decoder (None where it fails too).

    OpenCV asserts on GIFs that browsers and FFmpeg show: a background colour index past the
    palette (web beacons), a picture that runs past the canvas' edge (cut there).  On the GIFs both
    read the two agree pixel for pixel, but around a picture smaller than the canvas FFmpeg paints
    the background colour where OpenCV, and browsers, leave it see-through: so it is cleared here.
    An animated GIF is FFmpeg's already (``VideoBackground``)."""
    try:
        with open_input(path) as container:
            stream = video_stream(container)
            prepare_decoder(stream, info.width * info.height)
            frame = next(container.decode(stream), None)
            if frame is None:
                return None
            bgra = frame.to_ndarray(format="bgra")
    except (av.error.FFmpegError, InputError):  # open_input's and video_stream's refusals
        return None
    left, top, width, height = header.first_picture or (0, 0, 0, 0)
    if width and height:  # FFmpeg spreads a picture of no width or height over the canvas
        shown = np.zeros(bgra.shape[:2], bool)
        shown[top : top + height, left : left + width] = True
        bgra[~shown, 3] = 0
    return bgra


def _oriented(image: np.ndarray, orientation: int) -> np.ndarray:
    """``image`` turned and mirrored as an Exif orientation (1-8) says it is to be shown."""
    if orientation in (5, 7):  # across a diagonal
        image = cv2.transpose(image)
        return cv2.rotate(image, cv2.ROTATE_180) if orientation == 7 else image
    turns = {3: cv2.ROTATE_180, 6: cv2.ROTATE_90_CLOCKWISE, 8: cv2.ROTATE_90_COUNTERCLOCKWISE}
    flips = {2: 1, 4: 0}
    if orientation in turns:
        return cv2.rotate(image, turns[orientation])
    if orientation in flips:
        return cv2.flip(image, flips[orientation])
    return image


def _heif_header(path: Path) -> heif.HeifHeader | None:
    """The HEIF header of ``path`` (an AVIF or HEIC picture), or None for any other file."""
    with open(path, "rb") as f:
        if heif.kind(f.read(64)) is None:
            return None
        try:
            return heif.read_header(f, f.seek(0, 2))
        except heif.HeifError as exc:
            raise CorruptBackground(str(exc)) from None


def _read_heif(path: Path, header: heif.HeifHeader) -> np.ndarray:
    """A HEIF picture as RGB, on black where its alpha plane makes it see-through, cut to its clean
    aperture (``clap``), then turned and mirrored as its header says (``irot``, ``imir``; an Exif
    orientation in the file is not the picture's).

    Decoded here tile by tile (HEVC by FFmpeg's decoder, AV1 by dav1d), not by OpenCV's libavif:
    that refused every AVIF whose header ends within its first 500 bytes with Exif after it (how
    libavif itself writes a photo with Exif and no ICC profile), and applied no crop or turn."""
    first = header.picture.tiles[0]
    to_rgb = RgbConverter(first.width, first.height)  # a grid's tiles are all one size
    with open(path, "rb") as f:
        rgb = _assemble(f, header, header.picture, lambda frame: to_rgb(_with_colours(frame, header)))
        if header.alpha is not None and not header.premultiplied:  # premultiplied: on black already
            rgb = on_black(rgb, _assemble(f, header, header.alpha, _opacity))
    if header.crop is not None:
        left, top, width, height = header.crop
        rgb = rgb[top:top + height, left:left + width]
    turned = {90: cv2.ROTATE_90_COUNTERCLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_CLOCKWISE}
    if header.rotation in turned:
        rgb = cv2.rotate(rgb, turned[header.rotation])
    if header.mirror is not None:
        rgb = cv2.flip(rgb, header.mirror)
    return np.ascontiguousarray(rgb)


def _assemble(f: BinaryIO, header: heif.HeifHeader, coded: heif.Coded,
              convert: Callable[[av.VideoFrame], np.ndarray]) -> np.ndarray:
    """A picture (or its alpha plane) at the header's size: each tile decoded, made an array by
    ``convert``, put in its place in the grid, and what runs past the picture cut off."""
    name = header.format.upper()
    canvas: np.ndarray | None = None
    for index, tile in enumerate(coded.tiles):
        ctx = cast(av.video.codeccontext.VideoCodecContext,
                   av.CodecContext.create("hevc" if header.format == "heic" else "libdav1d", "r"))
        ctx.extradata = tile.config
        # the decoder may allocate for the tile's declared size, with its stride's margin, no more
        ctx.options = {"max_pixels": str(decoder_pixel_cap(tile.width * tile.height, tile.width, tile.height))}
        try:
            frames = [*ctx.decode(av.Packet(heif.item_bytes(f, header, tile))), *ctx.decode(None)]
        except av.FFmpegError:
            frames = []
        if not frames:
            raise CorruptBackground(f"the {name} background cannot be decoded")
        frame = frames[0]
        if (frame.width, frame.height) != (tile.width, tile.height):
            raise CorruptBackground(f"the {name}'s pictures are coded at {frame.width}x{frame.height}, "
                                    f"its header says {tile.width}x{tile.height}")
        part = convert(frame)
        if canvas is None:
            canvas = np.zeros((header.height, header.width, *part.shape[2:]), part.dtype)
        top, left = (index // coded.columns) * tile.height, (index % coded.columns) * tile.width
        place = canvas[top:top + tile.height, left:left + tile.width]
        place[...] = part[:place.shape[0], :place.shape[1]]
    assert canvas is not None  # read_header: a picture has at least one tile
    return canvas


def _with_colours(frame: av.VideoFrame, header: heif.HeifHeader) -> av.VideoFrame:
    """A tile to be made RGB with the matrix and range its header names (``nclx``), which rule
    over the bitstream's."""
    if header.cicp is not None:
        frame.colorspace, frame.color_range = header.cicp[2], 2 if header.cicp[3] else 1
    return frame


def _opacity(frame: av.VideoFrame) -> np.ndarray:
    """An alpha plane's tile as opacity (float32, 0 to 1): its luma samples at their bit depth,
    full range unless the bitstream says limited (libavif writes alpha full range)."""
    bits = frame.format.components[0].bits
    plane = frame.planes[0]
    dtype = np.dtype(np.uint16 if bits > 8 else np.uint8)
    rows = np.frombuffer(memoryview(plane), dtype).reshape(plane.height, -1)[:, :frame.width]
    if int(frame.color_range) == 1:  # MPEG (limited) range
        low, span = 16 << (bits - 8), 219 << (bits - 8)
    else:
        low, span = 0, (1 << bits) - 1
    opacity: np.ndarray = np.clip((rows.astype(np.float32) - low) * np.float32(1 / span), 0, 1)
    return opacity


def _hdr_space(header: heif.HeifHeader | None) -> ColourSpace | None:
    """The HDR colour space (PQ or HLG) a HEIF picture's CICP numbers name, else None."""
    if header is None or header.cicp is None or header.cicp[1] not in (PQ, HLG):
        return None
    return ColourSpace(header.cicp[0], header.cicp[1])


def _profile(path: Path, header: heif.HeifHeader | None = None) -> icc.RgbProfile | None:
    """The colour profile a picture (or an animated one) carries, where it is one ``icc`` applies:
    an embedded ICC profile, else a HEIF picture's CICP numbers (from its ``header``)."""
    if header is None:
        profile = icc.embedded_profile(path)
        return icc.parse(profile) if profile else None
    if header.icc and len(header.icc) <= icc.MAX_PROFILE_BYTES:
        return icc.parse(header.icc)
    return icc.from_cicp(*header.cicp[:2]) if header.cicp is not None else None


def on_black(rgb: np.ndarray, opacity: np.ndarray) -> np.ndarray:
    """A see-through picture (``opacity`` float32, 0 to 1) shown on black, as a video shows what has
    nothing behind it: what a transparent pixel stores under its opacity may be anything."""
    return (rgb * opacity[..., None] + 0.5).astype(np.uint8)  # type: ignore[no-any-return]


def open_background(spec: str, width: int, height: int, settings: Settings | None = None,
                    pixel_aspect: float = 1.0, threads: int = 0, space: ColourSpace = SRGB) -> BackgroundSource:
    """The background source for ``spec`` at the output size, whose pixels are ``pixel_aspect``
    as wide as they are high (``VideoInfo.pixel_aspect``); a video's decoder gets ``threads``
    (0 = FFmpeg's choice).  ``space``: the video's colour space, which the background is brought
    into (an HDR video's, ``colour_space``); a blurred one is the video's own already."""
    settings = settings or get_settings()
    spec = spec.strip()
    strength = blur_strength(spec)
    if strength is not None:
        return BlurBackground(width, height, strength / 10)
    if spec.startswith("#"):
        return ColorBackground(parse_color(spec), width, height, space)
    path = Path(spec)
    info = inspect_background(path, settings)
    if info.kind == "image":
        header = _heif_header(path)  # read once: its colours, then its pictures
        own = _hdr_space(header)
        profile = None if own is not None else _profile(path, header)
        return ImageBackground(_read_image(path, info, header), width, height, pixel_aspect, space, profile, own or SRGB)
    pixels = info.width * info.height
    if info.kind == "animated":
        max_frames = max(info.frames, settings.max_animated_background_pixels // pixels)
    else:
        max_frames = settings.max_frames
    assert info.video is not None  # a video's and an animation's headers come with them
    return VideoBackground(info.video, width, height, pixels, max_frames, pixel_aspect, threads, space)

"""Encode composited frames, keeping the input's timestamps, and carry its audio across.

Output formats:

| name          | container | video                          | what it holds                         |
| ------------- | --------- | ------------------------------ | ------------------------------------- |
| `mp4`         | MP4       | H.264 (libx264) yuv420p        | the person on the new background      |
| `webm`        | WebM      | VP9 (libvpx) yuva420p          | the person with an alpha channel      |
| `mov`         | MOV       | ProRes 4444 (prores_aw) + alpha | the person with an alpha channel     |
| `matte`       | MP4       | H.264 yuv420p, grey            | the alpha matte itself                |
| `greenscreen` | MP4       | H.264 yuv420p                  | the person on chroma-key green        |

Audio: each input audio stream is copied packet for packet when the output container takes its
codec, otherwise transcoded (AAC for MP4/MOV, Opus for WebM), named as it was (``_label_like``).
Subtitles likewise: copied where the container takes them, text ones otherwise re-encoded (MP4's
and MOV's ``mov_text``, WebM's WebVTT), pictures ones it does not take (DVD, Blu-ray) left out
(``SubtitleRoute``).  Their packets are interleaved with the video as it is written (read from a
second demuxer of the input), so nothing piles up in memory.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from fractions import Fraction
from itertools import islice
from pathlib import Path
from typing import Any, cast, get_args

import av
import cv2
import numpy as np
from av.subtitles.subtitle import SubtitleSet

from service.config import X264Preset
from service.media import cues, timecode
from service.media.packets import read_packets
from service.media.probe import VideoInfo, open_input
from service.media.webm_display import write_display_size

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FormatSpec:
    extension: str
    content_type: str
    container: str
    codec: str
    pix_fmt: str
    alpha: bool  # frames handed to the writer are RGBA
    audio_copy: frozenset[str]  # audio codecs this container takes as they are
    audio_codec: str  # what anything else is transcoded to
    options: dict[str, str] = field(default_factory=dict)
    #: what text subtitles the container does not take are re-encoded to (``SubtitleRoute``)
    subtitle_codec: str = "mov_text"

    @property
    def even_height(self) -> bool:
        """4:2:0 stores chroma for pairs of rows: an even height."""
        return self.pix_fmt.startswith("yuv") and "420" in self.pix_fmt

    @property
    def even_width(self) -> bool:
        """4:2:0 stores chroma for pairs of columns, and FFmpeg's ProRes encoders take even widths
        only (a 161-wide video's MOV job failed as the encoder opened)."""
        return self.even_height or self.codec.startswith("prores")


#: AVColorSpace SMPTE170M (BT.601's matrix) and AVColorRange MPEG (limited: Y' 16-235)
SMPTE170M, MPEG_RANGE = 6, 1
_X264 = {"preset": "veryfast", "crf": "18", "movflags": "+faststart"}
X264_PRESETS: tuple[str, ...] = get_args(X264Preset)  # the others (``format_spec``, the x264_preset setting)
_MP4_AUDIO = frozenset({"aac", "mp3", "ac3", "eac3", "alac", "flac", "opus"})
#: FFmpeg's MOV muxer takes neither FLAC nor Opus (MP4's does): they are transcoded to AAC there
_MOV_AUDIO = (_MP4_AUDIO - {"flac", "opus"}) | {"pcm_s16le", "pcm_s24le"}
FORMATS: dict[str, FormatSpec] = {
    "mp4": FormatSpec(".mp4", "video/mp4", "mp4", "libx264", "yuv420p", False, _MP4_AUDIO, "aac", _X264),
    # VP9 at the realtime deadline; no look-ahead (libvpx keeps 25 frames by default, which that
    # deadline does not use: the same file within 1 %, and at 1080p with alpha 200 MB less of a job's peak)
    "webm": FormatSpec(
        ".webm", "video/webm", "webm", "libvpx-vp9", "yuva420p", True, frozenset({"opus", "vorbis"}), "libopus",
        {"deadline": "realtime", "cpu-used": "8", "row-mt": "1", "crf": "30", "b": "0", "lag-in-frames": "0"},
        "webvtt",
    ),
    # FFmpeg's other ProRes encoder, prores_ks, took 200 ms a 1080p frame on one thread, 4x this
    # one's, for a file 3 % larger and as close to the input (mean error 0.01 levels, alpha within 1)
    "mov": FormatSpec(
        ".mov", "video/quicktime", "mov", "prores_aw", "yuva444p10le", True, _MOV_AUDIO, "aac",
        {"profile": "4", "vendor": "apl0"},
    ),
    "matte": FormatSpec(".mp4", "video/mp4", "mp4", "libx264", "yuv420p", False, _MP4_AUDIO, "aac",
                        {**_X264, "crf": "8"}),
    "greenscreen": FormatSpec(".mp4", "video/mp4", "mp4", "libx264", "yuv420p", False, _MP4_AUDIO, "aac", _X264),
}
#: name -> (file extension, content type): what the API and storage need to know.
OUTPUT_FORMATS: dict[str, tuple[str, str]] = {k: (v.extension, v.content_type) for k, v in FORMATS.items()}
GREEN = (0, 177, 64)
#: How far (in frames) decode times may run ahead of the encoder's own: see ``_steady_dts``.
_DTS_WINDOW_FRAMES = 8


def format_spec(fmt: str, x264_preset: str | None = None) -> FormatSpec:
    """``FORMATS[fmt]``, its libx264 formats (mp4, matte, greenscreen) at ``x264_preset`` when given:
    the same constant quality (crf) at another speed, paid in file size (``bench/x264_presets.py``)."""
    spec = FORMATS[fmt]
    if x264_preset is None or spec.codec != "libx264":
        return spec
    if x264_preset not in X264_PRESETS:
        raise ValueError(f"unknown libx264 preset {x264_preset!r}")
    return replace(spec, options={**spec.options, "preset": x264_preset})


def last_frame_duration(info: VideoInfo, first_pts: int, end_pts: int, first_dts: int, last_dts: int,
                        last_pts: int, reached: int) -> int:
    """How long an output's last packet (in decode order: at ``last_dts``, shown at ``last_pts``)
    lasts so that the video is as long as the input's track (``VideoInfo.track_from``, counted
    from its first frame shown, ``first_pts``), or, where the input records none, ends at
    ``end_pts``, its last frame's end: encoders assume a constant rate, which changes the length of
    variable-rate input.

    Counted from its decode time, the samples' durations add up to that length (MP4 readers divide
    the frames by it for the rate).  Players end a video where a packet's time plus its duration
    reaches furthest (``reached``, by the others): where frames are reordered and unevenly timed,
    that fell short (mediabunny's cursed-vfr.mp4 came out 7.6 s of 8.7), and then the last packet
    lasts until the end.  Times are the input's ticks, from its start."""
    before_last = last_dts - first_dts
    track = info.track_from(first_pts)
    length = track if track and track > before_last else end_pts - first_pts
    duration = max(1, length - before_last)
    if max(reached, last_pts + duration) < first_pts + length:
        duration = first_pts + length - last_pts
    return duration


def shown_until(packet: av.Packet, following: av.Packet) -> int | None:
    """Where ``packet`` stops being shown (``last_frame_duration``'s ``reached``): its presentation
    time plus its sample's length, which in MP4 lasts until ``following``'s decode time; None where
    either is untimed."""
    if packet.pts is None or packet.dts is None or following.dts is None:
        return None
    return int(packet.pts + following.dts - packet.dts)


def output_size(info: VideoInfo, spec: FormatSpec) -> tuple[int, int]:
    """The width and height an output in ``spec`` is written at: the video's as shown, one column
    or row more, a copy of its edge, where it is odd and the codec stores even sizes only."""
    return (info.width + (info.width % 2 if spec.even_width else 0),
            info.height + (info.height % 2 if spec.even_height else 0))


class VideoWriter:
    """Writes frames with given timestamps (input time base) and the input's audio, subtitles and
    chapters to ``path``."""

    def __init__(
        self, path: Path, fmt: str, info: VideoInfo, *, audio: bool = True, threads: int = 0,
        spec: FormatSpec | None = None,
    ):
        """``audio``: carry the input's sound, subtitles and chapters (not into a chunk's part: the
        join carries them); ``threads``: encoder threads (0 = FFmpeg's choice); ``spec``: ``fmt``
        encoded otherwise (another libx264 preset, ``format_spec``; the device path's NVENC,
        ``service.media.hwencode``)."""
        self.spec = spec or FORMATS[fmt]
        self.info = info
        self.path = path
        self.width, self.height = output_size(info, self.spec)
        self.time_base = info.time_base
        self._frame_ticks = max(1, round(1 / (info.fps * info.time_base)))
        self.out = av.open(str(path), mode="w", format=self.spec.container)
        try:
            self.stream = cast(av.VideoStream, self.out.add_stream(self.spec.codec, rate=info.fps))
            ctx = self.stream.codec_context
            ctx.width, ctx.height = self.width, self.height
            ctx.pix_fmt = self.spec.pix_fmt
            if threads:
                ctx.thread_count = threads
            ctx.time_base = self.time_base
            self._tag(ctx)
            if info.pixel_aspect != 1:  # anamorphic: shown as wide as the input is
                ctx.sample_aspect_ratio = info.pixel_aspect
            self.stream.time_base = self.time_base
            opts = dict(self.spec.options)
            if "movflags" in opts:
                self.out.options["movflags"] = opts.pop("movflags")
            if self.spec.container in ("mp4", "mov") and self.time_base.numerator == 1:
                # Keep the input's timescale: the muxer would otherwise pick its own and round
                # every timestamp and duration into it (119/4 fps came out 29.755).
                self.out.options["video_track_timescale"] = str(self.time_base.denominator)
                # and the movie's, in which the edit list gives the track's start: at the default
                # 1000 a part beginning at 161792/15360 s (10.5333 s) read back at 161787
                self.out.options["movie_timescale"] = str(self.time_base.denominator)
            ctx.options = opts
            carry_timecode(self.stream, info)
            self.side_tracks = SideTrackCarrier(info, self.out, self.spec) if audio and info.has_side_tracks else None
        except BaseException:
            self.out.close()
            raise
        self._span: tuple[int, int] | None = None  # first pts, end of the last frame
        self._first_dts: int | None = None
        self._reached = 0  # where the packets muxed so far end, the furthest (``last_frame_duration``)
        self._packets = 0
        self._held: av.Packet | None = None
        self._i420: tuple[av.VideoFrame, np.ndarray] | None = None  # (the frame handed on, RGB -> I420 scratch)

    def write(
        self, frames: np.ndarray, pts: list[int], durations: list[int] | None = None, layout: str | None = None
    ) -> None:
        """``frames``: uint8 (N, H, W, 3) RGB, or (N, H, W, 4) RGBA for alpha formats; ``pts`` and
        ``durations`` in the input's time base (durations keep the last frame's length exact).
        ``layout="yuv420p"``: frames are (N, H·3/2, W) I420 at the output's even size (the device
        path converts on the GPU), handed to the encoder as they are."""
        yuv = layout == "yuv420p"
        layout = layout or ("rgba" if self.spec.alpha else "rgb24")
        durations = durations or [self._frame_ticks] * len(pts)
        reuse = self.spec.pix_fmt == "yuv420p" and layout in ("rgb24", "yuv420p")
        for image, t, d in zip(frames, pts, durations, strict=True):
            image = image if yuv else self._pad(image)
            frame = self._i420_frame(image, yuv) if reuse else self._converted(image, layout)
            frame.pts = t - self.info.origin  # the output starts at 0 (``VideoInfo.origin``)
            frame.time_base = self.time_base
            self._span = (t, t + d) if self._span is None else (min(self._span[0], t), max(self._span[1], t + d))
            if self.side_tracks is not None:
                self.side_tracks.mux_until(float(frame.pts * self.time_base))
            self._mux(self.stream.encode(frame))

    def _tag(self, target: Any) -> None:
        """Say how the output's colours are to be read, on the encoder and on each frame (encoders
        take a frame's tags over their own: ProRes wrote none).  RGB becomes Y'CbCr by BT.601's
        matrix in limited range (OpenCV's I420 conversion, ``_converted``, the device path's
        graph); the primaries and transfer are the input's, which RGB keeps.  Untagged, players
        read HD as BT.709: a saturated red came out with 31 levels of green."""
        target.colorspace, target.color_range = SMPTE170M, MPEG_RANGE
        target.color_primaries, target.color_trc = self.info.color_primaries, self.info.color_trc

    def _converted(self, image: np.ndarray, layout: str) -> av.VideoFrame:
        """``image`` as a new frame in the encoder's pixel format, by BT.601 in limited range
        (what FFmpeg did inside the encoder before, now tagged)."""
        frame = av.VideoFrame.from_ndarray(image, format=layout)
        if frame.format.name != self.spec.pix_fmt:
            frame = frame.reformat(format=self.spec.pix_fmt, dst_colorspace="ITU601", dst_color_range="MPEG")
        self._tag(frame)
        return frame

    def _i420_frame(self, image: np.ndarray, yuv: bool) -> av.VideoFrame:
        """``image`` (RGB, or I420 already) in the one yuv420p frame this writer hands the encoder.

        A new frame a call (``from_ndarray``, then the encoder's own RGB -> YUV conversion into yet
        another) meant two fresh frame buffers a frame, past glibc's mmap threshold as the pipeline
        sets it, each zeroed by the kernel a page at a time: at 1080p about half the page faults of
        a whole job.  OpenCV's RGB -> I420 (BT.601, limited range, as FFmpeg's: Y within 1 level)
        writes into a reused array, which is copied into the reused frame; ``make_writable`` gives
        the frame new buffers should the encoder still hold the old ones."""
        if self._i420 is None:
            self._i420 = (av.VideoFrame(self.width, self.height, "yuv420p"),
                          np.empty((self.height * 3 // 2, self.width), np.uint8))
            self._tag(self._i420[0])
        frame, scratch = self._i420
        i420 = image if yuv else cv2.cvtColor(image, cv2.COLOR_RGB2YUV_I420, dst=scratch)
        frame.make_writable()
        h, w = self.height, self.width
        flat, luma, chroma = i420.reshape(-1), h * w, (h // 2) * (w // 2)  # planes back to back
        sources = (flat[:luma].reshape(h, w), flat[luma : luma + chroma].reshape(h // 2, w // 2),
                   flat[luma + chroma : luma + 2 * chroma].reshape(h // 2, w // 2))
        for plane, source in zip(frame.planes, sources, strict=True):
            rows = np.frombuffer(memoryview(plane), np.uint8).reshape(plane.height, plane.line_size)
            np.copyto(rows[:, : plane.width], source)
        return frame

    def _mux(self, packets: list[av.Packet]) -> None:
        """Mux video packets one behind: the last one is held back so ``close`` can give it the
        duration that makes the track exactly as long as the input (encoders assume a constant
        rate, which changes the length, and so the average rate, of variable-rate input)."""
        for packet in packets:
            if self._first_dts is None and packet.dts is not None:
                self._first_dts = packet.dts
            self._steady_dts(packet)
            if self._held is not None:
                self._reached = max(self._reached, shown_until(self._held, packet) or 0)
                self.out.mux(self._held)
            self._held = packet

    def _steady_dts(self, packet: av.Packet) -> None:
        """Decode timestamps on the input's nominal grid where they can be, as the input's own were.

        The encoder derives decode times from presentation times, so a gap between frames (a
        dropped frame in a constant-rate clip) turns into an uneven sample table, and MP4 readers
        then report frames/duration (29.48) instead of the clip's rate (30000/1001). Taking the
        smaller of the grid time and the encoder's keeps them strictly increasing and never after
        the presentation time; the window stops a sparse variable-rate clip from decoding far
        ahead of what is shown."""
        if packet.dts is None or self._first_dts is None:
            return
        grid = self._first_dts + self._packets * self._frame_ticks
        self._packets += 1
        packet.dts = max(packet.dts - _DTS_WINDOW_FRAMES * self._frame_ticks, min(grid, packet.dts))

    def close(self) -> None:
        """Flush the encoder and the rest of the audio, and finish the file."""
        try:
            self._mux(self.stream.encode(None))
            last = self._held
            if last is not None and last.pts is not None and last.dts is not None and self._first_dts is not None \
                    and self._span:
                # the span is in the input's times, the packets in the output's (``VideoInfo.origin``)
                last.duration = last_frame_duration(self.info, *self._span, self._first_dts, last.dts,
                                                    last.pts + self.info.origin, self._reached + self.info.origin)
            if last is not None:
                self.out.mux(last)
                self._held = None
            if self.side_tracks is not None:
                self.side_tracks.finish()
        except BaseException:
            self.abort()
            raise
        self._release(ignoring=())  # writes the trailer (MP4's index): a failure here is the file's, and raises
        if self.spec.container == "webm" and self.info.pixel_aspect != 1:
            # anamorphic: FFmpeg's Matroska muxer writes no display size from the codec's aspect
            write_display_size(self.path, self.width, self.height, self.info.pixel_aspect)

    def abort(self) -> None:
        """Give the file up (the caller deletes it).  Closing it may fail again, as a full disk fails
        the trailer too: that must not hide the error that ended the writing."""
        self._release(ignoring=(OSError, av.error.FFmpegError))

    def _release(self, ignoring: tuple[type[BaseException], ...]) -> None:
        """Close the audio's input and the output file, once, ignoring the errors of ``ignoring``."""
        if self.side_tracks is not None:
            self.side_tracks.close()
            self.side_tracks = None
        if self.out is not None:
            out, self.out = self.out, None  # type: ignore[assignment]
            with contextlib.suppress(*ignoring):
                out.close()

    def _pad(self, image: np.ndarray) -> np.ndarray:
        dh, dw = self.height - image.shape[0], self.width - image.shape[1]
        if dh or dw:
            image = np.pad(image, ((0, dh), (0, dw), (0, 0)), mode="edge")
        return image


def carry_timecode(stream: av.video.stream.VideoStream, info: VideoInfo) -> None:
    """Give the output's video track the input's timecode (``VideoInfo.timecode``) where its rate
    can carry one (``timecode.at_rate``): MOV's and MP4's muxers write it as a timecode track,
    Matroska's as a tag.  Set before the header is written, with the rate it counts in (a stream
    copied from a template has none, and the muxer took its time base's: 15360 frames a second)."""
    stamp = timecode.at_rate(info.timecode, info.fps)
    if stamp:
        stream.codec_context.framerate = info.fps
        stream.metadata["timecode"] = stamp


#: The most chapters an output is given (a film has tens; a hostile file may mark millions)
MAX_CHAPTERS = 1000


def _carry_chapters(out: av.container.OutputContainer, marked: list[Any], info: VideoInfo) -> None:
    """Give the output the input's chapters (``marked``: PyAV's), with their titles, before its
    header is written: their times moved back by the input's start (``VideoInfo.origin``) and kept
    within the pictures, as subtitle cues are (``SubtitleRoute``); at most ``MAX_CHAPTERS``."""
    begins, ends = Fraction(0), _pictures_end(info)
    origin = info.origin * info.time_base
    kept: list[Any] = []
    for chapter in marked:
        tb = chapter["time_base"]
        if not tb or len(kept) >= MAX_CHAPTERS:
            continue
        start = max(begins, chapter["start"] * tb - origin)
        end = min(ends, chapter["end"] * tb - origin)
        if end <= start:
            continue
        title = chapter["metadata"].get("title")
        kept.append({"id": len(kept) + 1, "start": round(start * 1000), "end": round(end * 1000),
                     "time_base": Fraction(1, 1000), "metadata": {"title": title} if title else {}})
    if len(marked) > MAX_CHAPTERS:
        log.warning("the input marks %d chapters; the output keeps the first %d", len(marked), MAX_CHAPTERS)
    if kept:
        out.set_chapters(kept)


class SideTrackCarrier:
    """Copies (or transcodes) every audio and subtitle stream of the input into the output, in step
    with video, and gives it the input's chapters: all it carries besides the pictures, read by
    one demuxer of the input (``VideoInfo.has_side_tracks``).  The writer uses it, and the join of
    a chunked job (``service.media.chunks``) muxes it once beside the chunks' video packets."""

    def __init__(self, info: VideoInfo, out: av.container.OutputContainer, spec: FormatSpec):
        self.input = open_input(info.path)
        self.out = out
        self.origin = info.origin * info.time_base  # where the input starts: the output's 0
        self.routes: dict[int, _Route | SubtitleRoute] = {}
        carried = {a.index for a in info.audio}  # the video's programme's (``inspect.same_program``)
        firsts = _first_packets(info.path, carried) if carried else {}
        for stream in self.input.streams.audio:
            if stream.index not in carried:
                continue
            if _copyable(stream, spec, firsts.get(stream.index)):
                self.routes[stream.index] = _Route(stream, out.add_stream_from_template(stream), None, None, self.origin,
                                                   before_start=spec.container not in EDIT_LISTS)
            else:
                self.routes[stream.index] = _Route.transcoding(stream, out, spec.audio_codec, info.path, self.origin)
            _label_like(self.routes[stream.index].target, stream)
        for track in self.input.streams.subtitles:
            if track.index not in info.subtitles:
                continue
            route = SubtitleRoute.made(track, out, spec, self.origin, _pictures_end(info))
            if route is not None:
                self.routes[track.index] = route
                _label_like(route.target, track)
        if info.chapters:
            _carry_chapters(out, self.input.chapters(), info)
        routed = [self.input.streams[i] for i in self.routes]
        self._packets: Iterator[av.Packet] = read_packets(self.input, *routed) if routed else iter(())
        self._pending: av.Packet | None = None
        self._done = False

    def mux_until(self, seconds: float) -> None:
        """Write every audio packet that starts before ``seconds`` of the output."""
        while not self._done:
            packet = self._pending or next(self._packets, None)
            self._pending = None
            if packet is None:
                self._done = True
                return
            if packet.pts is not None and packet.time_base is not None and \
                    float(packet.pts * packet.time_base - self.origin) > seconds:
                self._pending = packet
                return
            self._route(packet)

    def finish(self) -> None:
        self.mux_until(float("inf"))
        for route in self.routes.values():
            route.flush(self.out)

    def close(self) -> None:
        self.input.close()

    def _route(self, packet: av.Packet) -> None:
        route = self.routes.get(packet.stream.index)
        if route is None:
            return
        if packet.size == 0 and packet.pts is None:
            return  # the demuxer's end-of-stream marker
        route.carry(packet, self.out)


#: The tags a player names an audio track by, kept on each output track.
TRACK_TAGS = ("language", "title")


def _label_like(target: av.stream.Stream, source: av.stream.Stream) -> None:
    """Name the output track as its input track: its language and title, and its disposition (the
    default track, a commentary, one for the hearing impaired).  Without them every track came out
    ``und``, and a film's English and French sound could no longer be told apart."""
    for tag in TRACK_TAGS:
        value = source.metadata.get(tag)
        if value and value != "und":
            target.metadata[tag] = value
    target.disposition = source.disposition


def _copyable(stream: av.audio.stream.AudioStream, spec: FormatSpec, first: av.Packet | None) -> bool:
    """Whether the output container can take this stream's packets as they are.

    The codec is named by its canonical name, so MP3 read by FFmpeg's ``mp3float`` decoder still
    counts as ``mp3``.  A stream whose sample rate or channel count the demuxer could not tell
    without a decoder (ADTS AAC in MPEG-TS, opened with ``codec_whitelist=none``) cannot be copied
    either: the muxer refuses a stream header without them, so that stream is transcoded.
    """
    ctx = stream.codec_context
    return (ctx.codec.canonical_name in spec.audio_copy and bool(ctx.sample_rate) and bool(ctx.channels)
            and _muxer_takes(stream, spec.container, first))


#: how many of a file's packets ``_first_packets`` reads for its streams' first (sound comes within
#: the first few; a stream that starts later is tried by its header alone)
FIRST_PACKET_WITHIN = 500


def _muxer_takes(stream: av.stream.Stream, container: str, first: av.Packet | None = None) -> bool:
    """Whether ``container``'s muxer writes a copy of ``stream``: its header, and with ``first``
    (its first packet, ``_first_packets``) that packet and the trailer, tried in memory (a
    millisecond).  Muxers refuse
    some streams of codecs they take, and they say so only as they write, which failed the whole
    job with "Invalid argument": MP4 takes MP3, but not at 8 kHz ("not standard"), which it says
    at the header (an AVI with such sound); it takes AC-3, but builds the track's ``dac3`` box from
    the first packet as it writes the trailer, and E-AC-3 labelled AC-3 (NUT names it so) failed
    there, after the whole video was made.  Such streams are transcoded.  Subtitle tracks are
    tried by their header: a first cue may come an hour in."""
    try:
        probe = av.open(io.BytesIO(), "w", format=container)
        try:
            target = probe.add_stream_from_template(stream)
            probe.start_encoding()
            if first is not None:
                first.stream = target
                probe.mux(first)
        finally:
            probe.close()
    except (av.error.FFmpegError, ValueError):
        return False
    return True


def _first_packets(path: Path, indices: set[int]) -> dict[int, av.Packet]:
    """The first packet holding data of each stream of ``indices``, found among the file's first
    ``FIRST_PACKET_WITHIN`` packets in one reading (a stream with none there is left out).  A
    packet keeps its data once its file is closed."""
    found: dict[int, av.Packet] = {}
    with open_input(path) as source:
        for packet in islice(read_packets(source), FIRST_PACKET_WITHIN):
            index = packet.stream.index
            if index in indices and packet.size and index not in found:
                found[index] = packet
                if len(found) == len(indices):
                    break
    return found


def _decoded_format(path: Path, index: int, packets: int = 64) -> tuple[int, int]:
    """Sample rate and channel count of an audio stream whose headers do not give them, from its
    first decodable packets (a few, never the whole stream); (0, 0) when none decodes."""
    with open_input(path) as container:
        for n, packet in enumerate(read_packets(container, container.streams[index])):
            if n >= packets:
                break
            try:
                for frame in packet.decode():
                    audio = cast(av.AudioFrame, frame)
                    return audio.sample_rate, audio.layout.nb_channels
            except av.error.FFmpegError:
                continue
    return 0, 0


#: The channel layouts each transcoder keeps (encoded and muxed into its containers:
#: tests/pipeline/test_formats.py); the others are mixed down to stereo, one channel stays mono.
#: FFmpeg's AAC encoder takes no 7.1.
KEPT_LAYOUTS = {
    "aac": frozenset({"mono", "stereo", "2.1", "3.0", "3.0(back)", "3.1", "4.0", "quad", "quad(side)", "4.1", "5.0",
                      "5.0(side)", "5.1", "5.1(side)", "6.0", "6.1", "7.0", "hexagonal"}),
    "libopus": frozenset({"mono", "stereo", "3.0", "quad", "5.0", "5.1", "6.1", "7.1"}),
}


#: the layout a stream that names no channel order most likely has, by its number of channels
USUAL_LAYOUTS = {1: "mono", 2: "stereo", 3: "3.0", 4: "quad", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}


def kept_layout(codec: str, layout: str, channels: int) -> str:
    """The layout ``codec`` encodes a source of ``layout`` and ``channels`` in: its own where
    ``KEPT_LAYOUTS`` has it, else the usual one for that many channels where the encoder takes that
    (the resampler moves each speaker to its nearest: AC-3's 5.1, which FFmpeg names ``5.1(side)``,
    becomes Opus's 5.1 with its side speakers behind; it was mixed down to stereo; a source that
    names no order, "6 channels" as Matroska's PCM, is read in that usual order), else stereo (mono
    for one channel)."""
    kept = KEPT_LAYOUTS.get(codec, frozenset())
    if layout in kept:
        return layout
    if channels and USUAL_LAYOUTS.get(channels) in kept:
        return USUAL_LAYOUTS[channels]
    return "stereo" if (channels or 2) >= 2 else "mono"


def encoder_rate(codec: str, rate: int) -> int:
    """``rate`` where the encoder takes it, else the next rate up it takes (its highest past them
    all): AAC has no 192 kHz, and asked for it the job failed as its encoder opened."""
    rates = av.codec.Codec(codec, "w").audio_rates
    if not rates or rate in rates:
        return rate
    return min((r for r in rates if r >= rate), default=max(rates))


#: The output containers whose edit lists hide what a track holds before the file's start
EDIT_LISTS = frozenset({"mp4", "mov"})


def _before_start(packet: av.Packet) -> bool:
    """Whether a copied packet ends before the output's start (its time already moved by the
    input's origin).  An MP4's edit list can hide sound before its start, and FFmpeg reads that
    sound with negative times: copied into MP4 the output's edit list hides it again, but WebM has
    none, so its muxer moved every track later and the hidden sound played before the pictures
    (0.3 s of Opus from an MP4 cut with its sound hidden).  A packet that reaches past the start
    is kept: a decoder needs the one before for its first samples."""
    return packet.pts is not None and packet.duration is not None and packet.duration > 0 \
        and packet.pts + packet.duration <= 0


@dataclass
class _Route:
    source: av.audio.stream.AudioStream
    target: av.stream.Stream  # an AudioStream where it transcodes
    resampler: av.AudioResampler | None
    encoder_rate: int | None
    #: where the input starts, in seconds: the output's 0 (``VideoInfo.origin``)
    origin: Fraction
    #: where the next transcoded sample goes, in samples at ``encoder_rate`` (None before the first)
    next_pts: int | None = None
    #: the decode time of the last packet copied, in the output's time base (None before the first)
    last_dts: int | None = None
    #: (pts, time base) of the last packet transcoded where it was timed and gave no sound
    silent: tuple[int, Fraction] | None = None
    #: whether copied packets that end before the output's start are left out (``_before_start``)
    before_start: bool = False

    @classmethod
    def transcoding(
        cls, source: av.audio.stream.AudioStream, out: av.container.OutputContainer, codec: str, path: Path,
        origin: Fraction,
    ) -> _Route:
        src = source.codec_context
        src_rate, src_channels = src.sample_rate, src.channels
        src_layout = src.layout.name if src_rate and src_channels else ""
        if not (src_rate and src_channels):
            src_rate, src_channels = _decoded_format(path, source.index)
        rate = 48000 if "opus" in codec else encoder_rate(codec, src_rate or 48000)
        target = cast(av.AudioStream, out.add_stream(codec, rate=rate))
        layout = kept_layout(codec, src_layout, src_channels)
        target.codec_context.layout = layout
        fmt = "flt" if "opus" in codec else "fltp"
        target.codec_context.format = fmt
        target.codec_context.time_base = Fraction(1, rate)
        return cls(source, target, av.AudioResampler(format=fmt, layout=layout, rate=rate), rate, origin)

    def carry(self, packet: av.Packet, out: av.container.OutputContainer) -> None:
        """Copy or transcode ``packet`` into the output, its time moved back by ``origin``."""
        if self.resampler is None:
            if packet.time_base is not None and self.origin:
                shift = round(self.origin / Fraction(packet.time_base))
                packet.pts = None if packet.pts is None else packet.pts - shift
                packet.dts = None if packet.dts is None else packet.dts - shift
            if self.before_start and _before_start(packet):
                return
            self._follow_on(packet)
            self._lasting(packet)
            dts, time_base = packet.dts, packet.time_base
            packet.stream = self.target
            out.mux(packet)
            out_tb = self.target.time_base  # the muxer's from now on
            if dts is not None and time_base is not None and out_tb is not None:
                self.last_dts = _rescaled(dts, Fraction(time_base) / Fraction(out_tb))
            return
        try:
            frames = packet.decode()
        except av.error.FFmpegError:
            return  # one damaged audio packet is dropped, not the job
        if frames and frames[0].pts is None:
            self._time_untimed(cast(av.AudioFrame, frames[0]), packet)
        self.silent = (packet.pts, Fraction(packet.time_base)) if not frames and packet.pts is not None else None
        for frame in frames:
            self._encode(self.resampler.resample(cast(av.AudioFrame, frame)), out)

    def _time_untimed(self, frame: av.AudioFrame, packet: av.Packet) -> None:
        """Time a decoded frame that came untimed by its packets.  A decoder that times none of its
        frames (WMA) is timed by its packet: the sound began where the first untimed frames were
        counted from, 0 (0.39 s early in an ASF clip).  An untimed packet right after a timed one
        that gave no sound (faac's first ADTS frame holds only its name, a data element) starts one
        frame after that one's time: in MPEG-TS only each PES packet's first audio frame is timed
        when nothing is decoded while probing (FFmpeg times the rest from the sample rate, which it
        then does not know), and counted from 0 such sound played a frame early (23 ms)."""
        if packet.pts is not None:
            frame.pts, frame.time_base = packet.pts, packet.time_base
        elif self.silent is not None and frame.sample_rate:
            pts, time_base = self.silent
            frame.pts = pts + round(Fraction(frame.samples, frame.sample_rate) / time_base)
            frame.time_base = time_base

    def _lasting(self, packet: av.Packet) -> None:
        """A copied packet that says nothing of how long it lasts is given the step from the last
        one, as long as a frame of sound before it lasted.  AAC in Matroska, ASF or NUT carries no
        durations, and the intake's demuxer, which decodes nothing, cannot count them; MP4 times
        each sample by the next one's start, so only the last was left at 0, and the file's edit
        list ended where that frame began: players dropped it (21 ms of 48 kHz AAC, 128 ms at
        8 kHz).  Called after ``_follow_on``, so both times are in the output's time base."""
        if not packet.duration and packet.dts is not None and self.last_dts is not None \
                and packet.dts > self.last_dts:
            packet.duration = packet.dts - self.last_dts

    def _follow_on(self, packet: av.Packet) -> None:
        """A copied packet's decode time put one tick of the output's after the last one's where it
        is not already past it (its presentation time with it, where that was earlier), as FFmpeg's
        command line does: MP4 takes strictly increasing times only, and Chrome's MediaRecorder
        wrote Opus packets into WebM with repeated times (200, 200, 300, 400, 400 ms): the muxer
        refused the second and the job crashed.  Compared in the output's time base (the muxer's
        from the first packet on), where two times a tick apart in the input's can be one."""
        out_tb = self.target.time_base
        if packet.dts is None or packet.time_base is None or self.last_dts is None or out_tb is None:
            return
        scale = Fraction(packet.time_base) / Fraction(out_tb)
        if scale != 1:
            packet.pts = None if packet.pts is None else _rescaled(packet.pts, scale)
            packet.dts = _rescaled(packet.dts, scale)
            packet.duration = _rescaled(packet.duration or 0, scale)
            packet.time_base = Fraction(out_tb)
        if packet.dts <= self.last_dts:
            if packet.pts is not None and packet.pts >= packet.dts:
                packet.pts = max(packet.pts, self.last_dts + 1)
            packet.dts = self.last_dts + 1

    def flush(self, out: av.container.OutputContainer) -> None:
        if self.resampler is None:
            return
        self._encode(self.resampler.resample(None), out)
        for packet in cast(av.AudioStream, self.target).encode(None):
            out.mux(packet)

    def _encode(self, frames: list[av.AudioFrame], out: av.container.OutputContainer) -> None:
        """Encode resampled frames at the source's times, in samples at the output rate (a
        resampler with nothing to convert hands frames on in the source's time base): audio that
        starts after the video, or resumes after a gap, stays where it was, as copied audio does.
        They were counted from 0, so audio that began 0.5 s in played 0.5 s early.  A time that
        would go back (overlapping or untimed source frames) follows on."""
        rate = self.encoder_rate or 48000
        for frame in frames:
            pts = self.next_pts
            if frame.pts is not None and frame.time_base is not None:
                pts = round((frame.pts * frame.time_base - self.origin) * rate)
            if pts is None or (self.next_pts is not None and pts - self.next_pts < rate // 1000):
                pts = self.next_pts or 0  # within a millisecond: the rounding of the source's times
            frame.pts, frame.time_base = pts, Fraction(1, rate)
            self.next_pts = pts + frame.samples
            for packet in cast(av.AudioStream, self.target).encode(frame):
                out.mux(packet)


class SubtitleRoute:
    """One subtitle track into the output: its packets copied where the container takes its codec
    (``_muxer_takes``: MP4 and MOV take ``mov_text``, WebM WebVTT), else, for text subtitles, each
    cue decoded (to ASS, FFmpeg's common form, styles kept where the target has them: italics and
    bold in ``mov_text``) and encoded in the container's own (``FormatSpec.subtitle_codec``), as
    FFmpeg's command line does.  Picture subtitles the container does not take (Blu-ray's PGS,
    DVB's) cannot be turned into text: such a track is left out, with a warning.  A re-encoded cue
    is made ready for its encoder first (``service.media.cues``: hard spaces, styles the script
    lacks, overlapping cues cut into stretches for ``mov_text``).

    Cue times move back by the input's start (``VideoInfo.origin``) as the sound's do.  The cues
    are kept within the pictures (``until``, output seconds): one before them is cut to where the
    output starts, or dropped where it ends before; one past their end is cut there, or dropped.
    A cue's length is only a number, and a subtitle file longer than the clip (or a damaged cue
    hours long) made the output as long as the cue: a player's timeline of black after the video.
    A cue's decode time follows on from the last (``_Route._follow_on``): MP4 takes no two at one
    time, and ASS events may start together."""

    def __init__(self, source: av.subtitles.stream.SubtitleStream, target: av.stream.Stream, transcode: bool,
                 origin: Fraction, until: Fraction):
        self.source, self.target, self.transcode, self.until = source, target, transcode, until
        self._copy = _Route(cast(Any, source), target, None, None, origin)  # the shift and follow-on of copies
        self._styles = cues.styles_of(source.codec_context.subtitle_header) if transcode else []
        # ``mov_text`` shows one cue at a time: overlapping ones are cut into stretches
        self._timeline = cues.Timeline() if transcode and target.codec_context.name == "mov_text" else None
        self._tb: Fraction | None = None  # the cues' time base, from the first

    @classmethod
    def made(cls, source: av.subtitles.stream.SubtitleStream, out: av.container.OutputContainer, spec: FormatSpec,
             origin: Fraction, until: Fraction) -> SubtitleRoute | None:
        """The route for ``source``, or None where it cannot be carried (logged)."""
        ctx = source.codec_context
        if ctx is None or ctx.codec is None:
            log.warning("subtitle track %d: its codec is unknown; left out", source.index)
            return None
        if _muxer_takes(source, spec.container):
            return cls(source, out.add_stream_from_template(source), False, origin, until)
        if not ctx.codec.text_sub:
            log.warning("subtitle track %d (%s): %s takes no such pictures; left out",
                         source.index, ctx.codec.name, spec.container)
            return None
        try:
            ctx.open()
        except av.error.FFmpegError:
            log.warning("subtitle track %d (%s) cannot be decoded; left out", source.index, ctx.codec.name)
            return None
        header = ctx.subtitle_header
        if not header:  # every text decoder gives one (its styles): an encoder cannot start without
            return None
        target = cast("av.subtitles.stream.SubtitleStream", out.add_stream(spec.subtitle_codec))
        target.codec_context.time_base = source.time_base or Fraction(1, 1000)
        target.codec_context.subtitle_header = header
        return cls(source, target, True, origin, until)

    def carry(self, packet: av.Packet, out: av.container.OutputContainer) -> None:
        if packet.pts is None or packet.time_base is None:
            return  # a cue with no time cannot be placed
        tb = self._tb = Fraction(packet.time_base)
        start, length = packet.pts, packet.duration or 0
        if not self.transcode:
            self._place(packet, start, length, out)
            return
        try:
            decoded = self.source.codec_context.decode2(packet)
        except av.error.FFmpegError:
            return  # one damaged cue is dropped, not the job
        if decoded is None:
            return
        if not length and decoded.end_display_time:
            length = round(Fraction(decoded.end_display_time, 1000) / tb)
        texts = (getattr(rect, "ass", b"") for rect in decoded)  # a picture rect has none
        lines = [cues.fixed_line(text.decode("utf-8", "replace"), self._styles) for text in texts if text]
        if not lines:
            return
        if self._timeline is None:
            self._write(cues.joined(lines), start, length, tb, out)
            return
        for begin, end, text in self._timeline.add(start, start + length if length else None, lines):
            self._write(text, begin, end - begin, tb, out)

    def flush(self, out: av.container.OutputContainer) -> None:
        if self._timeline is None or self._tb is None:
            return
        last = round((self._copy.origin + self.until) / self._tb)  # the pictures' end, in the cues' ticks
        for begin, end, text in self._timeline.close(last):
            self._write(text, begin, end - begin, self._tb, out)

    def _write(self, line: str, start: int, length: int, tb: Fraction, out: av.container.OutputContainer) -> None:
        """Encode one cue (a decoded ASS dialogue line) and place it."""
        cue = SubtitleSet.create(line.encode(), 0, max(0, round(length * tb * 1000)))
        try:
            packet = cast("av.subtitles.stream.SubtitleStream", self.target).codec_context.encode_subtitle(cue)
        except av.error.FFmpegError:
            return
        packet.time_base = tb
        self._place(packet, start, length, out)

    def _place(self, packet: av.Packet, start: int, length: int, out: av.container.OutputContainer) -> None:
        """Mux a cue at ``start`` for ``length`` (its ticks), kept within the pictures."""
        assert packet.time_base is not None
        tb = Fraction(packet.time_base)
        begins = round(self._copy.origin / tb)  # the output's 0, in the cue's ticks
        ends = round((self._copy.origin + self.until) / tb)  # the pictures' end
        if (start + length <= begins if length else start < begins) or start >= ends:
            return  # outside the pictures (a cue of no length, shown until the next, from its start)
        if start < begins:
            start, length = begins, length - (begins - start)
        length = min(length, ends - start)
        packet.pts = packet.dts = start
        packet.duration = length
        self._copy.carry(packet, out)


def _pictures_end(info: VideoInfo) -> Fraction:
    """Where the input's pictures end, in the output's seconds (from ``VideoInfo.origin``)."""
    first = info.first_pts if info.first_pts is not None else info.origin
    return (first - info.origin) * info.time_base + Fraction(info.duration_s)


def _rescaled(ticks: int, scale: Fraction) -> int:
    """``ticks`` times ``scale``, rounded half away from zero as FFmpeg rescales a packet's times
    (``av_rescale_q``) when it is muxed."""
    value = ticks * scale
    return int(math.floor(value + Fraction(1, 2))) if value >= 0 else -int(math.floor(-value + Fraction(1, 2)))

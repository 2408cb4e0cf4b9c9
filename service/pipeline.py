"""Frames in → composited frames out: the one place that joins media and inference.

Three stages overlap, joined by bounded queues so memory stays flat however long the video is:

    reader thread:  decode (PyAV) → batches of frames + their backgrounds
    caller thread:  matte (ONNX) → edge refinement → harmonisation (ONNX)
    writer thread:  compositing → encode (PyAV) + audio passthrough → progress callback

The model's stage is the slowest on a CPU, so everything else runs beside it, not after it.

The slowest stage sets the pace.  ``cancel`` is polled once per batch; a failure or a cancel
anywhere stops every stage and leaves no output file behind.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

import cv2
import numpy as np

from service.array_pool import ArrayPool, Empty
from service.config import Settings, get_settings
from service.errors import Canceled, InvalidParameter
from service.inference.compositing import create_compositor
from service.inference.harmonize import Harmonizer
from service.inference.models import MattingModel, get_model
from service.inference.people import PeopleSelection, PersonDetector, PersonFound, clip_coverage, people_found
from service.inference.refine import EdgeRefiner
from service.media.background import BackgroundSource, ColorBackground, open_background
from service.media.colour_space import SRGB, ColourSpace
from service.media.decode import iter_frames
from service.media.encode import FORMATS, GREEN, VideoWriter, format_spec, output_size
from service.media.probe import VideoInfo, probe_video
from service.options import SCENE_FORMATS, Options, background_kind

log = logging.getLogger(__name__)
Progress = Callable[[int, int], None]


#: What a caller may choose for one video: the one options model, shared with the API (the CLI
#: flags and the job's options); ``replace_background`` validates it again with the background known.
ReplaceOptions = Options


@dataclass(frozen=True)
class ReplaceResult:
    frames: int
    duration_s: float
    width: int
    height: int
    output_format: str
    size_bytes: int
    content_type: str


@dataclass
class Batch:
    """Frames decoded together, with their timing and (when the output has one) their background;
    the previews build a batch of one frame to show exactly what a job's first frame becomes."""

    images: np.ndarray  # uint8 (N, H, W, 3)
    pts: list[int]
    durations: list[int]
    background: np.ndarray | None


@dataclass(frozen=True)
class Window:
    """One chunk of a longer video (``service.media.chunks``, issue 16): frames before
    ``model_from_pts`` are decoded only; frames from there to ``start_pts`` run through the model
    (and the edge refiner and harmoniser) to warm their state across frames, and are dropped;
    frames from ``start_pts`` up to ``end_pts`` are written with their own timestamps.  ``info`` is
    the whole video's (size, rotation, rate, time base: every chunk's encoder is set up alike) with
    the chunk's file; a chunk writes no audio (the join muxes it once).  ``seek_dts``: decode from
    the keyframe at this decode time, found by a seek in the file (the parts of ``service.segments``
    read one file), instead of from its first packet."""

    info: VideoInfo
    model_from_pts: int
    start_pts: int
    end_pts: int | None
    seek_dts: int | None = None


_END = object()
_Frame = TypeVar("_Frame", bound="_Timed")


class _Timed(Protocol):
    pts: int


def window_frames(decode: Callable[[int | None], Iterator[_Frame]], window: Window | None) -> Iterator[_Frame]:
    """The frames ``window`` runs through the model (all of them without one), from a decoder
    ``decode(seek_dts)``: it decodes from the window's keyframe, or from the first frame where the
    container's index put that seek past the warm-up, and stops at the next window's first frame
    (frames come in display order)."""
    seek = None if window is None else window.seek_dts
    frames = decode(seek)
    try:
        for frame in frames:
            if window is None:
                yield frame
                continue
            if seek is not None:
                if frame.pts > window.model_from_pts:
                    log.warning("a seek to decode time %s overshot; decoding from the first frame", seek)
                    yield from window_frames(decode, replace(window, seek_dts=None))
                    return
                seek = None
            if window.end_pts is not None and frame.pts >= window.end_pts:
                return  # the next window's
            if frame.pts >= window.model_from_pts:
                yield frame
    finally:
        close = getattr(frames, "close", None)
        if close is not None:
            close()


def replace_background(
    input_path: Path,
    background: str | None,
    output_path: Path,
    options: ReplaceOptions | None = None,
    *,
    progress: Progress | None = None,
    cancel: Callable[[], bool] | None = None,
    settings: Settings | None = None,
    model: MattingModel | None = None,
    window: Window | None = None,
) -> ReplaceResult:
    """Put the person in ``input_path`` on ``background`` and write ``output_path``.

    ``background`` may be None only for outputs that carry no background (webm, mov, matte,
    greenscreen): ``Options`` decides, with the same rules the API applied.  Raises a
    ``BackdropError`` subclass on bad input; ``Canceled`` if ``cancel()`` returned True.  The output
    appears only when it is complete.
    """
    settings = settings or get_settings()
    options = (options or ReplaceOptions()).with_background(background_kind(background))
    output_path = check_output(Path(output_path), [Path(input_path)] + ([Path(background)] if background else []))
    partial = output_path.with_name(f".{output_path.name}.partial")
    _check_writable(output_path, partial)
    info = window.info if window is not None else probe_video(Path(input_path), settings)
    spec = FORMATS[options.output_format]
    model = model or get_model(options.model, settings, load=False)  # not loaded where parts run the job
    bg = background_for(options.output_format, background, info.width, info.height, settings, float(info.pixel_aspect),
                        codec_threads(model, settings)[0], video_space(info))
    try:
        # the GPU worker path (issue 15), where the settings ask for it and it covers the job
        from service.device_pipeline import try_device

        frames: _Count | None = try_device(info, bg, background, partial, options, model, settings, progress, cancel,
                                           window)
        if frames is None:
            # the CPU path: parts of the video side by side where that applies (service.segments)
            from service.segments import try_segments

            frames = try_segments(info, background, partial, options, model, settings, progress, cancel, window)
        if frames is None:
            frames = _run(info, bg, partial, options, model, settings, progress, cancel, window)
        os.replace(partial, output_path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        if bg is not None:
            bg.close()
        release_free_memory()
    duration = frames.duration
    width, height = output_size(info, spec)  # the file's: 4:2:0 stores even sizes only
    return ReplaceResult(
        frames=frames.count, duration_s=duration, width=width, height=height,
        output_format=options.output_format, size_bytes=output_path.stat().st_size, content_type=spec.content_type,
    )


def check_output(output: Path, inputs: list[Path]) -> Path:
    """The file an output named ``output`` is written to, refused before any work where it would
    replace one of the ``inputs`` (the video or a background file), is a folder, or is something
    other than a file (a device, a FIFO, a socket), or its folder does not exist: an output is
    written beside it and renamed into place at the end (``replace_background``, the client's
    download), so without this a mistyped path failed only after the whole video had been
    processed, an output named like the input replaced it, and ``-o /dev/null`` run as root
    replaced the device with a file.  A symbolic link is written through: the file it points to
    is the output, as a shell's ``>`` writes it, not the link replaced."""
    shown = repr(str(output)[:200])
    if output.is_symlink():
        output = Path(os.path.realpath(output))
    if output.is_dir():
        raise InvalidParameter(f"the output {shown} is a folder: give a file name")
    if output.exists() and not output.is_file():
        raise InvalidParameter(f"the output {shown} is not a file (a device, a FIFO or a socket): give a file "
                               "name, or - for standard output")
    for source in inputs:
        try:
            same = os.path.samefile(source, output)
        except OSError:  # either is missing (a colour or blur is no file)
            same = False
        if same:
            raise InvalidParameter(f"the output {shown} is an input of the job: it would be overwritten")
    if not output.parent.is_dir():
        raise InvalidParameter(f"the output {shown} cannot be written: its folder does not exist")
    return output


def _check_writable(output: Path, partial: Path) -> None:
    """Refuse an output that cannot be written where it is to go (no permission, a read-only
    disk), by opening the ``partial`` file it is written to first."""
    existed = partial.exists()  # another run's, writing now or killed: left to the run that writes it
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT, 0o644)
    except OSError as exc:
        raise InvalidParameter(f"the output {str(output)[:200]!r} cannot be written: {exc.strerror}") from None
    os.close(fd)
    if not existed:
        partial.unlink(missing_ok=True)


def background_for(fmt: str, spec: str | None, width: int, height: int, settings: Settings,
                   pixel_aspect: float = 1.0, threads: int = 0, space: ColourSpace = SRGB) -> BackgroundSource | None:
    """The background the frames of ``fmt`` are put on (jobs and previews): None for an output that
    shows none (webm and mov carry alpha, matte is the mask), whose background, if one was given
    anyway, is never read: a blurred or video one would be made frame by frame for nothing (a
    1080p webm job peaked at 1.12 GB with ``blur``, 0.97 GB without).  ``threads``: a background
    video's decoder threads, the job's decoder's (``codec_threads``).  ``space``: the video's
    colour space (``video_space``), which the background is brought into; a preview's frame is a
    browser's sRGB picture.  The green screen's green stays the code value keyers look for."""
    if fmt == "greenscreen":
        return ColorBackground(GREEN, width, height)
    if spec is None or fmt not in SCENE_FORMATS:
        return None
    return open_background(spec, width, height, settings, pixel_aspect, threads, space)


def video_space(info: VideoInfo) -> ColourSpace:
    """The colour space the video's frames, and so its output, are in."""
    return ColourSpace(info.color_primaries, info.color_trc)


@dataclass
class _Count:
    """Frames written so far, and the span of their timestamps."""

    tick_s: float
    frame_s: float
    count: int = 0
    first_pts: int | None = None
    last_pts: int | None = None

    @property
    def duration(self) -> float:
        if self.first_pts is None or self.last_pts is None:
            return 0.0
        return (self.last_pts - self.first_pts) * self.tick_s + self.frame_s


def edge_refine(options: ReplaceOptions, settings: Settings, model: MattingModel) -> bool:
    """Whether edge correction runs: the job's choice, else the setting, else the model's default."""
    for choice in (options.edge_refine, settings.edge_refine):
        if choice is not None:
            return choice
    return model.refine_by_default


#: ``people=largest`` finds who covers most of the clip on this many frames a second (the detector's
#: cost, ~0.1 s a frame on a small CPU, stays a few per cent of a job's).
COVERAGE_SAMPLES_PER_S = 4


def people_selection(
    options: ReplaceOptions, settings: Settings, info: VideoInfo | None = None,
    cancel: Callable[[], bool] | None = None,
) -> PeopleSelection | None:
    """The per-job choice of who stays, or None when everyone does (then nothing runs: the output is
    the same as without the feature).  It multiplies the alpha before compositing, so it works with
    every model, output format and compositor.  With ``info``, ``people=largest`` first looks over
    the whole clip (a pass of the person detector on a few frames a second) for the person who
    covers most of it."""
    if not options.selects_people:
        return None
    largest = options.people == "largest"
    coverage = None
    if largest and info is not None:
        detector = PersonDetector(settings)
        coverage = clip_coverage(_sampled_frames(info, COVERAGE_SAMPLES_PER_S, settings), detector, cancel)
    return PeopleSelection(options.keep_points, largest, settings=settings, coverage=coverage)


def _sampled_frames(info: VideoInfo, per_s: float, settings: Settings) -> Iterator[np.ndarray]:
    """The clip's frames at about ``per_s`` a second, the first frame first."""
    stride = max(1, round(info.fps / per_s))
    frames = iter_frames(info, 1, settings=settings)
    try:
        for i, frame in enumerate(frames):
            if i % stride == 0:
                yield frame.image
    finally:
        cast(Generator[Any, None, None], frames).close()


def first_frame_people(
    input_path: Path, options: ReplaceOptions | None = None, *, settings: Settings | None = None,
    model: MattingModel | None = None,
) -> list[PersonFound]:
    """The people on the first (upright) frame of ``input_path``, largest first, found the way a job
    finds them (the job's model and edge refinement, then the person split); when ``options`` choose
    people, the choice is resolved too and raises ``NoPersonAtPoint`` / ``NoPersonFound`` as the job
    would.  What a worker lane runs for ``POST /jobs`` to refuse a bad point before queueing."""
    settings = settings or get_settings()
    options = options or ReplaceOptions()
    info = probe_video(Path(input_path), settings)
    frames = iter_frames(info, 1, settings=settings)
    try:
        image = next(frames).image[None]
    finally:
        cast(Generator[Any, None, None], frames).close()  # closes the container now
    model = model or get_model(options.model, settings)
    matte, _ = model.predict(image, model.new_state())
    alpha = matte.alpha if not edge_refine(options, settings, model) else EdgeRefiner()(image, matte.alpha)
    selection = people_selection(options, settings) or PeopleSelection(settings=settings)
    selection(image, alpha)
    assert selection.splitter.owners is not None
    return people_found(selection.splitter, selection.splitter.owners, (image.shape[2], image.shape[1]))


def codec_threads(model: MattingModel, settings: Settings) -> tuple[int, int]:
    """Decoder and encoder threads for one job (0 = FFmpeg's choice).

    On a CPU provider the model's session already keeps every core busy, and the decode and encode
    stages run beside it in their own threads: codec threads of their own would only fight the
    model's threads for the same cores (desk.mp4 on 2 cores: 15.6 → 19.3 frames/s with one each).
    On a GPU the codecs are the bottleneck and get FFmpeg's threading."""
    auto = 1 if model.on_cpu else 0
    return settings.decode_threads or auto, settings.encode_threads or auto


@functools.cache
def _glibc() -> Any:
    """The C library's malloc controls (``mallopt``, ``malloc_trim``), or None where it is not glibc."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


@functools.cache  # once a process
def _return_freed_frames() -> None:
    """Blocks of 1 MB and more (frames, mattes) come from mmap and go back to the system when freed.

    glibc raises its mmap threshold after each such block is freed, up to 32 MB, after which whole
    1080p frames come from the per-thread heaps of the three stages and stay there: a 1920x1080 job
    peaked at 880 MB instead of 700.  Setting the threshold stops that; glibc only, once a process.

    Setting it also fixes glibc's trim threshold at its 128 KB default (glibc otherwise keeps it at
    twice the mmap threshold, up to 64 MB): the work arrays under 1 MB that the edge refiner, Poisson
    and the harmoniser make a strip or a frame at a time went back to the kernel whenever they were
    the last block of a thread's heap, and came back as new zeroed pages.  With every option a 1080p
    job took 1.5 million page faults and 6 s of system time for 150 frames; a 32 MB trim threshold
    keeps up to that much free at the top of each heap: 350,000 faults, 3 s, for 20 MB more at the
    peak (README, RVM on a CPU)."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 32 << 20)  # M_TRIM_THRESHOLD


def release_free_memory() -> None:
    """At the end of a job: give the kernel back the memory that is free in the heaps
    (``malloc_trim``; glibc only).  ``_return_freed_frames`` lets each thread's heap keep up to
    32 MB free at its top while a job runs, so its work arrays are not new pages every frame; a
    worker process that runs job after job would otherwise keep that much idle (six jobs of three
    kinds in one process: 340 -> 503 MB resident after each; with this 272 -> 466 MB, where the
    process that kept the 128 KB threshold took 277 -> 422 MB)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


#: Most pixels one batch holds: ``batch_size`` frames up to 720p, two at 1080p, one at 4K.  Each
#: stage keeps several full-resolution copies of its batch (uint8 frames, background, float alpha
#: and foreground), and what a batch holds is that many times a frame's: at 4K, four frames a batch
#: peaked at 1.88 GB, one at 1.23 GB (30 frames, 2-core Xeon).  At 1080p two frames a batch run as
#: fast as four (120 frames in 6.0-6.9 s against 6.2-7.1, 7 runs each in turn, 2-core EPYC) and
#: peak lower: 567 against 684 MB, and with a video background, people=largest, edge refinement,
#: Poisson and harmonisation together 0.87 against 1.06 GB.
BATCH_PIXELS = 2 * 1920 * 1088


#: Largest frame whose batches' arrays a job reuses (``ArrayPool``, up to what its two queues may
#: hold).  Arrays the pool holds while they are idle are memory the job keeps: at 1080p 40-90 MB
#: more at the peak for 395,000 -> 70,000 page faults; at 4K, where a batch is one frame and each
#: array 25-33 MB, 125 MB more (1.18 -> 1.30 GB, 30 frames) for no system time saved.  Parts side
#: by side (``service.segments``) have a pool each, within their share of ``queue_memory_mb``:
#: 238 720p frames in two parts, 30 MB more for 325,000 -> 92,000 faults and 3-4 % less time.
POOLED_PIXELS = 1920 * 1088


def frames_per_batch(settings: Settings, pixels: int) -> int:
    """Frames in one batch of frames of ``pixels`` each: ``batch_size``, fewer where that many would
    pass ``BATCH_PIXELS``; always at least one."""
    return max(1, min(settings.batch_size, BATCH_PIXELS // max(1, pixels)))


def queue_depth(settings: Settings, batch_bytes: int) -> int:
    """Batches a queue between two stages holds: ``queue_depth``, fewer where that many batches of
    ``batch_bytes`` would pass ``queue_memory_mb``; always at least one."""
    return max(1, min(settings.queue_depth, settings.queue_memory_mb * 2**20 // max(1, batch_bytes)))


def _batches(
    info: VideoInfo, bg: BackgroundSource | None, size: int, threads: int, window: Window | None = None,
    empty: Empty = np.empty, settings: Settings | None = None,
) -> Iterator[Batch]:
    """The decoded frames in batches of ``size`` (``frames_per_batch``), each with its background;
    ``empty`` makes the batch's arrays: its frames, and its background where one is made for it."""
    buf: list[np.ndarray] = []
    pts: list[int] = []
    durations: list[int] = []
    tb = float(info.time_base)

    def flush() -> Batch:
        images = np.stack(buf, out=empty((len(buf), *buf[0].shape), np.uint8))
        times = [p * tb for p in pts]
        back = None if bg is None else bg.frames(images, times, empty)
        if back is not None and back.strides[0] != 0:  # one plate broadcast over the batch stays one plate
            back = np.ascontiguousarray(back)
        return Batch(images, list(pts), list(durations), back)

    for frame in window_frames(lambda seek: iter_frames(info, threads, seek_dts=seek, settings=settings), window):
        buf.append(frame.image)
        pts.append(frame.pts)
        durations.append(frame.duration)
        if len(buf) == size:
            yield flush()
            buf.clear()
            pts.clear()
            durations.clear()
    if buf:
        yield flush()


class _Stage(threading.Thread):
    """A pipeline thread that reports its exception instead of dying silently."""

    def __init__(self, name: str, target: Callable[[], None], stop: threading.Event):
        super().__init__(name=name, daemon=True)
        self._target_fn = target
        self.stop = stop
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._target_fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller thread
            self.error = exc
            self.stop.set()


def _put(q: queue.Queue, item: object, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, stop: threading.Event) -> object:
    while True:
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            if stop.is_set():
                return _END


def _run(
    info: VideoInfo,
    bg: BackgroundSource | None,
    path: Path,
    options: ReplaceOptions,
    model: MattingModel,
    settings: Settings,
    progress: Progress | None,
    cancel: Callable[[], bool] | None,
    window: Window | None = None,
) -> _Count:
    spec = FORMATS[options.output_format]
    stop = threading.Event()
    _return_freed_frames()
    # the queues hold at most queue_memory_mb of frames each (decoded: frame and background; composed:
    # frame, background, float alpha and foreground), so a 1080p job stays far under 1 GB
    frame_pixels = info.coded_width * info.coded_height
    batch_frames = frames_per_batch(settings, frame_pixels)
    pixels = batch_frames * frame_pixels
    decoded: queue.Queue = queue.Queue(maxsize=queue_depth(settings, pixels * 6))
    composed: queue.Queue = queue.Queue(maxsize=queue_depth(settings, pixels * 13))
    count = _Count(tick_s=float(info.time_base), frame_s=float(1 / info.fps))
    pool = ArrayPool(max_bytes=2 * settings.queue_memory_mb * 2**20 if frame_pixels <= POOLED_PIXELS
                     else 0)
    compositor = create_compositor(options.composite, pool.empty)
    decode_threads, encode_threads = codec_threads(model, settings)
    writer = VideoWriter(path, options.output_format, info, threads=encode_threads, audio=window is None,
                         spec=format_spec(options.output_format, settings.x264_preset))

    def read() -> None:
        for batch in _batches(info, bg, batch_frames, decode_threads, window, pool.empty, settings):
            if not _put(decoded, batch, stop):
                return
        _put(decoded, _END, stop)

    def write() -> None:
        last_report = 0.0
        while True:
            item = _get(composed, stop)
            if item is _END:
                return
            batch, alpha, fg = cast(tuple[Batch, np.ndarray, np.ndarray | None], item)
            if window is not None and batch.pts[0] < window.start_pts:
                batch, alpha, fg = _from_pts(batch, alpha, fg, window.start_pts)  # warm-up dropped
                if not batch.pts:
                    continue
            frames = compose_batch(spec.alpha, options.output_format, batch, alpha, fg, compositor, pool.empty)
            pts = batch.pts
            writer.write(frames, pts, batch.durations)
            count.count += len(pts)
            count.first_pts = pts[0] if count.first_pts is None else count.first_pts
            count.last_pts = pts[-1]
            now = time.monotonic()
            if progress is not None and now - last_report >= settings.progress_interval_s:
                last_report = now
                progress(count.count, max(info.frames, count.count))

    reader = _Stage("backdrop-decode", read, stop)
    writer_thread = _Stage("backdrop-encode", write, stop)
    reader.start()
    writer_thread.start()
    try:
        state = model.new_state()
        refiner = EdgeRefiner() if edge_refine(options, settings, model) else None
        harmonizer = Harmonizer(options.harmonize, settings) if options.harmonize > 0 else None
        selection = people_selection(options, settings, info, cancel)
        while True:
            if cancel is not None and cancel():
                raise Canceled("the job was canceled")
            item = _get(decoded, stop)
            if item is _END:
                break
            batch: Batch = item  # type: ignore[assignment]
            matte, state = model.predict(batch.images, state, empty=pool.empty)
            alpha = matte.alpha if refiner is None else refiner(batch.images, matte.alpha, out=matte.alpha)
            if selection is not None:
                alpha = selection(batch.images, alpha, pool.empty)
            fg = matte.foreground
            if harmonizer is not None and batch.background is not None:
                fg = harmonizer(batch.images if fg is None else fg, alpha, batch.background, pool.empty)
            if not _put(composed, (batch, alpha, fg), stop):
                break
        _put(composed, _END, stop)
        finish_stages(reader, writer_thread, writer)
        if progress is not None:
            progress(count.count, count.count)
        return count
    except BaseException:
        abort_stages(reader, writer_thread, writer, stop)
        raise
    finally:
        stop.set()


def finish_stages(reader: _Stage, writer_thread: _Stage, writer: VideoWriter) -> None:
    """Once the model's stage has sent its end: wait for the writer stage, raise the first error of
    either stage, and close the file."""
    writer_thread.join()
    for stage in (reader, writer_thread):
        if stage.error is not None:
            raise stage.error
    writer.close()


def abort_stages(reader: _Stage, writer_thread: _Stage, writer: VideoWriter, stop: threading.Event) -> None:
    """On any failure: stop both stages, wait for them, drop the partial file, and raise a stage's
    own error (the root cause) when it has one other than a cancel; else the caller re-raises."""
    stop.set()
    reader.join(timeout=30)
    writer_thread.join(timeout=30)
    writer.abort()
    for stage in (reader, writer_thread):
        if stage.error is not None and not isinstance(stage.error, Canceled):
            raise stage.error from None


def _from_pts(
    batch: Batch, alpha: np.ndarray, fg: np.ndarray | None, start: int
) -> tuple[Batch, np.ndarray, np.ndarray | None]:
    """The frames of a batch from time ``start`` on (frames arrive in display order)."""
    k = next((i for i, p in enumerate(batch.pts) if p >= start), len(batch.pts))
    back = None if batch.background is None else batch.background[k:]
    return (Batch(batch.images[k:], batch.pts[k:], batch.durations[k:], back), alpha[k:],
            None if fg is None else fg[k:])


def compose_batch(
    alpha_out: bool,
    fmt: str,
    batch: Batch,
    alpha: np.ndarray,
    foreground: np.ndarray | None,
    compositor: Callable[..., np.ndarray],
    empty: Empty = np.empty,
) -> np.ndarray:
    """The output frames of a batch, made by ``empty``: the matte, the person with its alpha, or the
    person composited on the batch's background (used by the writer stage and by previews).  Channels
    are joined by OpenCV a frame at a time: numpy's concatenate along the last axis took 10 ms a
    1080p frame, a fifth of the writer's whole time for a MOV job, OpenCV's merge 2 ms."""
    if fmt == "matte":
        grey = _alpha8(alpha)
        matte = empty((*grey.shape, 3), np.uint8)
        for i, a in enumerate(grey):
            cv2.cvtColor(a, cv2.COLOR_GRAY2RGB, dst=matte[i])
        return matte
    if alpha_out:
        fg = batch.images if foreground is None else foreground
        rgba = empty((*alpha.shape, 4), np.uint8)
        for i, a in enumerate(_alpha8(alpha)):
            cv2.merge([fg[i], a], dst=rgba[i])
        return rgba
    assert batch.background is not None
    return compositor(batch.images, alpha, batch.background, foreground)


def _alpha8(alpha: np.ndarray) -> np.ndarray:
    """Float alpha in [0, 1] as uint8, rounded (only outputs that show the alpha need it)."""
    return np.clip(alpha * 255.0 + 0.5, 0, 255).astype(np.uint8)

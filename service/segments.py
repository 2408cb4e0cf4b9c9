"""One video across the cores of one machine: parts of it run side by side, then are joined.

ONNX Runtime spreads one small network poorly over several cores: RVM's low-resolution pass at
320x180 takes 40 ms a frame on one thread of a 2-core Xeon and 28 ms on two (1.4x), while two
copies of it on one thread each finish two frames in those 40 ms (2x).  RVM is recurrent, so
frames cannot simply be handed out in turn; but parts of a video can run independently, as
issue 16's chunks do across workers.  So on the CPU provider, ``replace_background`` cuts a video
into ``parts`` spans of about equal model work (``plan_segments``); each runs the ordinary
pipeline in its own thread (``pipeline._run`` with a ``Window``: decoding from a keyframe found
by a seek, the model warmed on ``chunk_warmup_frames`` frames before the span, the span encoded
without audio), with one model session shared by the parts and ``cores // parts`` threads for
each call; then the encoded parts are joined by packet copy with the input's audio muxed once
(``chunks.join_chunks``).  Each part gets ``queue_memory_mb / parts`` for its queues and batches
of at most ``BATCH_PIXELS / parts`` pixels (``settings_per_part``: a part's stages each hold a
batch while they work on it, and a 720p job in two parts with batches of four frames peaked
120-180 MB higher than with two, no faster), so the process stays as small as one pipeline.

Not cut: chunk tasks (already one span of a job), jobs choosing people (a clip-wide tracker),
inputs whose container cannot keep exact timestamps (``chunks.chunk_muxer``: MP4/MOV family only),
short videos (``min_part_frames`` a part), large frames (``segment_max_pixels``: at 1080p the
full-resolution stages already keep two cores busy, and two parts would pass 1 GB) and GPU
providers.  The device path cuts its own videos with the same plan and join, for another reason: its
CPU encoder, not its model, is what limits it (``device_pipeline.device_parts``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from service.config import Settings
from service.errors import Canceled
from service.inference.models import MattingModel, get_model
from service.media.background import BackgroundSource
from service.media.chunks import (
    NotChunkable,
    chunk_info,
    chunk_muxer,
    clean_keyframes,
    clean_start,
    video_packets,
)
from service.media.encode import FORMATS
from service.media.hwencode import worker_cores
from service.media.probe import VideoInfo
from service.options import Options
from service.pipeline import (
    Progress,
    Window,
    _Count,
    _run,
    background_for,
    codec_threads,
    frames_per_batch,
    video_space,
)

log = logging.getLogger(__name__)

#: Most parts chosen by ``segments=0`` (each holds its own frames and encoder).
MAX_AUTO_PARTS = 4
#: Fewest frames a part may have.  Two parts on two cores do ~1.4x the model's frames of one part on
#: both, less the warm-up (``chunk_warmup_frames`` more model runs a part each): a 238-frame 720p
#: clip ran 1.06-1.12x faster in two parts, a 150-frame one no faster.
MIN_FRAMES = 96
#: Fewest frames a part may have where a frame has at most ``SMALL_FRAME_PIXELS``.  What parts win
#: back is the model's share of a frame's work (its low-resolution pass costs the same at any size),
#: and the full-resolution stages, already spread over the cores, take less of it on small frames:
#: 150-frame clips on 2 cores ran 1.17-1.20x faster in two parts at 640x360 and 768x432, 1.1x at
#: 854x480, 1.05x at 960x540, no faster at 1280x720; at 640x360 two parts pay off from ~100 frames
#: (120: 1.2x, 96: 1.05x).
MIN_FRAMES_SMALL = 56
SMALL_FRAME_PIXELS = 854 * 480


def min_part_frames(pixels: int) -> int:
    """Fewest frames a part of a video with ``pixels`` a frame may have (``MIN_FRAMES_SMALL``, ``MIN_FRAMES``)."""
    return MIN_FRAMES_SMALL if pixels <= SMALL_FRAME_PIXELS else MIN_FRAMES


def part_count(settings: Settings, frames: int, pixels: int, cores: int | None = None) -> tuple[int, int]:
    """(parts, model threads a part) for a video of ``frames`` frames of ``pixels`` each:
    ``settings.segments`` (0 = one per core, at most ``MAX_AUTO_PARTS``), fewer where a part would
    have under ``min_part_frames`` or the parts' frames together more than ``segment_max_pixels``."""
    cores = cores or worker_cores()
    wanted = settings.segments or min(MAX_AUTO_PARTS, cores)
    parts = max(1, min(wanted, frames // min_part_frames(pixels), settings.segment_max_pixels // max(1, pixels)))
    return parts, settings.intra_op_threads or max(1, cores // parts)


def plan_segments(info: VideoInfo, parts: int, warmup: int) -> list[Window] | None:
    """``parts`` windows covering every frame of ``info`` once (each about as much model work), or None
    when the input cannot be cut exactly (``NotChunkable``) or has too few frames.

    A part after the first starts decoding at a clean keyframe (one that nothing before it in
    decode order displays after) at or before its warm-up's first frame: ``seek_dts``, the
    keyframe's decode time, is where ``iter_frames`` seeks."""
    if parts < 2:
        return None
    try:
        chunk_muxer(info)  # MP4/MOV family with a 1/N time base: timestamps survive the join exactly
        packets = video_packets(info.path)
    except NotChunkable as e:
        log.info("the video runs in one part: %s", e)
        return None
    order = sorted(pts for pts, _, _, shown in packets if shown)  # the frames shown, in display order
    if len(order) < parts * min_part_frames(info.width * info.height) or len(set(order)) != len(order):
        return None
    clean = clean_keyframes(packets)
    bounds = part_bounds(len(order), parts, warmup)
    if bounds is None:
        return None
    # a part is processed as a chunk is: it ends with its own last frame (the track's length is the
    # whole video's, which only the join applies) and carries no audio (the join muxes it once)
    part = chunk_info(info, info.path)
    windows = []
    for k in range(parts):
        start = order[bounds[k]]
        end = order[bounds[k + 1]] if k + 1 < parts else None
        model_from = order[max(0, bounds[k] - warmup)] if k else order[0]
        seek = None
        if k:
            found = clean_start(packets, clean, model_from)  # the keyframe a decode may start at
            seek = None if found is None else packets[found][1]
        windows.append(Window(part, model_from, start, end, seek_dts=seek))
    return windows


def part_bounds(frames: int, parts: int, warmup: int) -> list[int] | None:
    """Where ``parts`` parts of ``frames`` frames begin (display-order indices, then ``frames``), so
    that every part runs about as many frames through the model: the first has no warm-up, so it is
    ``warmup`` frames longer than the others.  None when a part would be empty."""
    share = (frames + (parts - 1) * warmup) / parts
    bounds = [0] + [min(frames, round(share + (k - 1) * (share - warmup))) for k in range(1, parts)] + [frames]
    if any(b >= c for b, c in zip(bounds, bounds[1:], strict=False)):
        return None
    return bounds


def try_segments(
    info: VideoInfo, background: str | None, path: Path, options: Options, model: MattingModel,
    settings: Settings, progress: Progress | None, cancel: Callable[[], bool] | None, window: Window | None,
) -> _Count | None:
    """``replace_background``'s hook: run the video in parts side by side when that applies; None
    (nothing done) otherwise."""
    if window is not None or options.selects_people or not model.on_cpu:
        return None
    parts, threads = part_count(settings, info.frames or int(info.duration_s * info.fps), info.width * info.height)
    windows = plan_segments(info, parts, settings.chunk_warmup_frames) if parts > 1 else None
    if not windows:
        return None
    part_settings = settings_per_part(settings, len(windows), threads, info.coded_width * info.coded_height)
    part_model = get_model(model.name, part_settings, threads=threads)

    def run(bg: BackgroundSource | None, file: Path, report: Progress, stopped: Callable[[], bool],
            window: Window) -> _Count:
        return _run(window.info, bg, file, options, part_model, part_settings, report, stopped, window)

    with opencv_threads(threads):
        return run_parts(windows, info, background, path, options, part_settings, progress, cancel, run,
                         decode_threads=codec_threads(part_model, part_settings)[0])


def settings_per_part(settings: Settings, parts: int, threads: int, pixels: int) -> Settings:
    """The settings each of ``parts`` parts of frames of ``pixels`` runs with: ``threads`` a call for
    the model and the parts' other sessions (the harmoniser), and queues and batches that together
    hold what one pipeline's may (``queue_memory_mb``, ``pipeline.BATCH_PIXELS``)."""
    return settings.model_copy(update={
        "intra_op_threads": threads,
        "queue_memory_mb": max(1, settings.queue_memory_mb // parts),
        "batch_size": frames_per_batch(settings, parts * pixels),
    })


@contextmanager
def opencv_threads(count: int) -> Iterator[None]:
    """OpenCV's threads a call set to ``count`` while parts run side by side (each part's share of
    the cores, as for the model's session), then put back.  OpenCV's pool spans every core by
    default; with each core already busy with a part, splitting a part's full-resolution steps over
    all of them only adds hand-offs between threads (640x360 on 2 cores, 300 frames: 0.3-0.6 s
    less CPU time).  The setting is the process's: a job that runs beside another in the same
    process may see it, which changes its speed, not its result."""
    import cv2

    before = cv2.getNumThreads()
    cv2.setNumThreads(count)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


#: One part's run: (its background, its file, its progress, its cancel, its window) -> what it wrote.
PartRun = Callable[[BackgroundSource | None, Path, Progress, Callable[[], bool], Window], _Count]


def run_parts(
    windows: list[Window], info: VideoInfo, background: str | None, path: Path, options: Options,
    settings: Settings, progress: Progress | None, cancel: Callable[[], bool] | None, run: PartRun,
    *, decode_threads: int = 0,
) -> _Count:
    """Each window through ``run`` (the ordinary pipeline, or the device path's) in its own thread,
    then the parts joined into ``path`` with the input's audio.  A failure or a cancel in any part
    stops them all; no part file is left.  ``decode_threads``: each part's background video decoder's
    (its own decoder's, 0 = FFmpeg's choice)."""
    from service.media.chunks import join_chunks

    lock = threading.Lock()
    failed = threading.Event()
    done = [0] * len(windows)
    counts: list[_Count | None] = [None] * len(windows)
    errors: list[BaseException | None] = [None] * len(windows)
    suffix = FORMATS[options.output_format].extension
    files = [path.with_name(f".{path.name}.part{k}{suffix}") for k in range(len(windows))]

    def stopped() -> bool:
        with lock:
            return failed.is_set() or (cancel is not None and cancel())

    def reporter(k: int) -> Progress:
        def report(count: int, _total: int) -> None:
            with lock:
                done[k] = count
                if progress is not None:
                    total = sum(done)
                    progress(total, max(info.frames, total))
        return report

    def work(k: int) -> None:
        bg = background_for(options.output_format, background, info.width, info.height, settings, float(info.pixel_aspect),
                            decode_threads, video_space(info))
        try:
            counts[k] = run(bg, files[k], reporter(k), stopped, windows[k])
        except BaseException as e:  # noqa: BLE001 - raised again by the caller's thread
            errors[k] = e
            failed.set()
        finally:
            if bg is not None:
                bg.close()

    threads = [threading.Thread(target=work, args=(k,), name=f"backdrop-part{k}", daemon=True)
               for k in range(len(windows))]
    log.info("the video runs in %d parts side by side", len(windows))
    try:
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        except BaseException:  # e.g. the worker's soft time limit, raised in this thread
            failed.set()
            for t in threads:
                if t.is_alive():
                    t.join(timeout=30)
            raise
        own = [e for e in errors if e is not None and not isinstance(e, Canceled)]
        if own:
            raise own[0]
        if any(e is not None for e in errors):
            raise Canceled("the job was canceled")
        joined = join_chunks(files, info, options.output_format, path, info.path)
    finally:
        for f in files:
            f.unlink(missing_ok=True)
    first, last = counts[0], counts[-1]
    assert first is not None and last is not None
    total = _Count(tick_s=first.tick_s, frame_s=first.frame_s, count=joined.frames,
                   first_pts=first.first_pts, last_pts=last.last_pts)
    if progress is not None:
        progress(total.count, total.count)
    return total


__all__ = ["MAX_AUTO_PARTS", "MIN_FRAMES", "MIN_FRAMES_SMALL", "SMALL_FRAME_PIXELS", "PartRun", "min_part_frames",
           "part_bounds", "part_count", "plan_segments", "run_parts", "settings_per_part", "try_segments"]

"""The device path of ``replace_background``: decode → model → composite on the model's device,
with only the encoder's finished I420 frame coming back to the host.

    decode thread:  NVDEC (or the CPU decoder) → 4:2:0 planes → ``yuv_to_src`` graph → src on the device
    caller thread:  RVM with IO binding (states stay on the device) → ``blend`` graph → I420 to the host
    encode thread:  NVENC, or libx264 threaded over the worker's cores; audio as the ordinary path

Without NVENC (H100, H200) the CPU encoder is the limit, so a video runs in parts side by side, each
with its own encoder (``device_parts``, with ``service.segments``' plan and join).

It covers what a GPU worker is for: RVM composited on a colour, image or video background (mp4 and
greenscreen output) or its matte alone (matte output), 4:2:0-even frames not turned or mirrored by their tags, no edge refinement, harmonisation or
people selection; anything else takes the ordinary pipeline (``covers`` says why).  ``auto`` uses it
when a CUDA provider works; ``on`` also on the CPU provider, where the same graphs and bindings run
(the tests compare it with the ordinary pipeline).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from service.config import Settings
from service.errors import BackdropError, Canceled
from service.inference import gpu
from service.inference.models import MattingModel
from service.inference.models.rvm_device import DeviceRVM
from service.media.background import BackgroundSource, ColorBackground, VideoBackground
from service.media.encode import VideoWriter
from service.media.hwdecode import PlaneFrame, cuda_decode_available, iter_planes, sync_decoder
from service.media.hwencode import device_format, nvenc_available, worker_cores
from service.media.probe import VideoInfo
from service.options import Options
from service.pipeline import (
    _END,
    Progress,
    Window,
    _Count,
    _get,
    _put,
    _Stage,
    abort_stages,
    edge_refine,
    finish_stages,
    window_frames,
)
from service.segments import MAX_AUTO_PARTS, MIN_FRAMES, plan_segments, run_parts

log = logging.getLogger(__name__)
FORMATS = ("mp4", "greenscreen", "matte")


def device_for(settings: Settings) -> gpu.Device | None:
    """The device the device path runs on under ``settings.device_pipeline``, or None (off)."""
    if settings.device_pipeline == "off":
        return None
    device = gpu.probe_device(settings)
    return device if device.on_gpu or settings.device_pipeline == "on" else None


def covers(options: Options, model: MattingModel, info: VideoInfo, bg: BackgroundSource | None,
           settings: Settings) -> str | None:
    """Why the device path cannot run this job (None when it can)."""
    if model.name != "rvm":
        return f"model {model.name}"
    if options.output_format not in FORMATS:
        return f"output {options.output_format}"
    if options.composite != "alpha":
        return f"compositor {options.composite}"
    if options.harmonize > 0 or options.selects_people or edge_refine(options, settings, model):
        return "harmonisation, people selection or edge refinement"
    if options.output_format != "matte" and not isinstance(bg, ColorBackground | VideoBackground):
        return "a background computed from the frame"
    if info.rotation or info.mirror or (info.width, info.height) != (info.coded_width, info.coded_height):
        return "a rotated, mirrored or cropped frame"
    if info.width % 2 or info.height % 2:
        return "an odd frame size"
    return None


@dataclass
class DeviceCount(_Count):
    """Frames written and their span (what ``replace_background`` reports), plus what ran."""

    decoder: str = ""
    encoder: str = ""
    providers: tuple[str, ...] = ()


#: Cores each libx264 gets at least when the device path runs a video in parts.
CORES_PER_ENCODER = 4


def device_parts(settings: Settings, info: VideoInfo, *, nvenc: bool, cores: int | None = None) -> int:
    """How many parts of one video the device path runs side by side.

    On a GPU without NVENC (H100, H200) the model and the NVDEC decode outrun libx264, which encodes
    1080p at ~55-115 frames/s on 16 cores (the H200 runs) and gains nothing from more threads, so a
    video is cut as the CPU path cuts it (``segments``) and each part gets its own encoder.  ``settings.segments``
    (0 = one part per ``CORES_PER_ENCODER`` cores, at most ``MAX_AUTO_PARTS``; 1 = never), never
    under ``MIN_FRAMES`` a part.  NVENC: one part (NVENC keeps up, and cards cap its sessions)."""
    if nvenc:
        return 1
    cores = cores or worker_cores()
    wanted = settings.segments or min(MAX_AUTO_PARTS, cores // CORES_PER_ENCODER)
    frames = info.frames or int(info.duration_s * info.fps)
    return max(1, min(wanted, frames // MIN_FRAMES))


def try_device(
    info: VideoInfo, bg: BackgroundSource | None, background: str | None, path: Path, options: Options,
    model: MattingModel, settings: Settings, progress: Progress | None, cancel: Callable[[], bool] | None,
    window: Window | None,
) -> _Count | None:
    """``replace_background``'s hook: run the job on the device path when the settings ask for it and
    it covers the job (in parts side by side where ``device_parts`` says so); None (nothing done)
    otherwise.  ``bg`` is the job's open background, ``background`` its spec (parts open their own)."""
    device = device_for(settings)
    if device is None:
        return None
    reason = covers(options, model, info, bg, settings)
    if reason is not None:
        log.info("device path skipped: %s", reason)
        return None
    try:
        nvenc = device.on_gpu and nvenc_available("h264_nvenc", device.index)
        parts = device_parts(settings, info, nvenc=nvenc) if window is None else 1
        windows = plan_segments(info, parts, settings.chunk_warmup_frames) if parts > 1 else None
        if windows:
            part_settings = settings.model_copy(
                update={"encode_threads": settings.encode_threads or max(1, worker_cores() // len(windows))})

            def run(part_bg: BackgroundSource | None, file: Path, report: Progress, stopped: Callable[[], bool],
                    part: Window) -> _Count:
                return run_device(part.info, part_bg, file, options, part_settings, device, report, stopped, part)

            return run_parts(windows, info, background, path, options, part_settings, progress, cancel, run,
                             decode_threads=settings.decode_threads)
        return run_device(info, bg, path, options, settings, device, progress, cancel, window)
    except (BackdropError, MemoryError):
        raise  # the input's fault, a cancel or the job's own limits: the same on any path
    except Exception:
        if not device.on_gpu:
            raise  # the CPU provider runs the same code as the tests: a failure there is a bug to see
        # a driver, library or TensorRT failure on this machine: the job still gets done
        log.exception("device path failed; the ordinary pipeline runs this job")
        return None


class Converter:
    """Decoded planes → RVM's ``src`` on the device (one session per plane layout and matrix)."""

    def __init__(self, device: gpu.Device, settings: Settings, height: int, width: int):
        self.device, self.settings, self.size = device, settings, (height, width)
        self._sessions: dict[tuple[str, str], tuple[Any, Any]] = {}

    def __call__(self, frame: PlaneFrame, matrix: str = "bt601") -> Any:
        """``matrix``: the video's own (``gpu.matrix_for``): most HD video is BT.709, which read
        as BT.601 gave the network and the picture shifted colours."""
        key = (frame.layout, matrix)
        if key not in self._sessions:
            session = gpu.device_session(gpu.yuv_to_src(frame.layout, *self.size, matrix=matrix).SerializeToString(),
                                         self.device, self.settings)
            self._sessions[key] = (session, session.io_binding())
        session, binding = self._sessions[key]
        for name, plane in frame.planes.items():
            if isinstance(plane, np.ndarray):
                binding.bind_cpu_input(name, plane)
            else:
                binding.bind_input(name, "cuda", plane.device_id, np.uint8, [plane.rows, plane.pitch], plane.ptr)
        binding.bind_output("src", self.device.kind, self.device.index)
        session.run_with_iobinding(binding)
        (src,) = binding.get_outputs()
        binding.clear_binding_inputs()  # the frame's memory goes back to the decoder's pool
        return src


class Blender:
    """RVM's ``fgr``/``pha`` on the device + the frame's background → the I420 frame on the host
    (``output`` ``matte``: the alpha as grey).  A still background is uploaded once."""

    def __init__(self, device: gpu.Device, settings: Settings, height: int, width: int, output: str = "i420"):
        import onnxruntime as ort

        self.device, self.output = device, output
        graph = gpu.matte(height, width) if output == "matte" else gpu.blend(height, width, output)
        self.session = gpu.device_session(graph.SerializeToString(), device, settings)
        self.binding = self.session.io_binding()
        self._ort = ort
        self._still: Any = None

    def still(self, plate: np.ndarray) -> None:
        self._still = self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(plate), self.device.kind,
                                                             self.device.index)

    def __call__(self, fgr: Any, pha: Any, background: np.ndarray | None = None) -> np.ndarray:
        b = self.binding
        b.bind_ortvalue_input("pha", pha)
        if self.output != "matte":
            b.bind_ortvalue_input("fgr", fgr)
            if background is not None:
                b.bind_cpu_input("bg", np.ascontiguousarray(background))
            else:
                b.bind_ortvalue_input("bg", self._still)
        b.bind_output("frame", "cpu")
        self.session.run_with_iobinding(b)
        return b.copy_outputs_to_cpu()[0]


@dataclass
class Lane:
    """The sessions one frame size needs (RVM, YUV in, blend or matte out), kept by the process
    between jobs: a TensorRT engine is loaded once, not per job."""

    rvm: DeviceRVM
    convert: Converter
    blender: Blender
    matte: Blender


_lanes: dict[tuple[Any, ...], list[Lane]] = {}
_lanes_lock = threading.Lock()


def _acquire(settings: Settings, device: gpu.Device, h: int, w: int) -> tuple[tuple[Any, ...], Lane]:
    key = (h, w, device.kind, device.index, tuple(device.providers), settings.rvm_long_side, settings.fp16,
           str(settings.engine_cache_dir), str(settings.model_dir))
    with _lanes_lock:
        free = _lanes.setdefault(key, [])
        if free:
            lane = free.pop()
            lane.rvm.reset()
            return key, lane
    lane = Lane(DeviceRVM(settings, device, (h, w)), Converter(device, settings, h, w),
                Blender(device, settings, h, w), Blender(device, settings, h, w, "matte"))
    return key, lane


def _release(key: tuple[Any, ...], lane: Lane) -> None:
    with _lanes_lock:
        free = _lanes.setdefault(key, [])
        if len(free) < MAX_AUTO_PARTS:  # a job in parts uses one lane a part
            free.append(lane)


def run_device(
    info: VideoInfo,
    bg: BackgroundSource | None,
    path: Path,
    options: Options,
    settings: Settings,
    device: gpu.Device,
    progress: Progress | None = None,
    cancel: Callable[[], bool] | None = None,
    window: Window | None = None,
    *,
    keep_on_device: bool = True,
) -> DeviceCount:
    """Write ``path`` from ``info``'s video composited on ``bg``, on ``device`` (see the module).
    ``keep_on_device=False``: NVDEC's frames are downloaded to the host (a fallback to measure)."""
    h, w = info.height, info.width
    nvdec = device.on_gpu and cuda_decode_available(device.index)
    on_device = nvdec and keep_on_device
    nvenc = device.on_gpu and nvenc_available("h264_nvenc", device.index)
    spec = device_format(options.output_format, nvenc=nvenc, device=device.index, x264_preset=settings.x264_preset)
    threads = settings.encode_threads or (0 if nvenc else worker_cores())
    count = DeviceCount(tick_s=float(info.time_base), frame_s=float(1 / info.fps),
                        decoder="nvdec" if nvdec else "cpu", encoder=spec.codec)
    key, lane = _acquire(settings, device, h, w)
    rvm, convert = lane.rvm, lane.convert
    blender = lane.matte if options.output_format == "matte" else lane.blender
    count.providers = tuple(rvm.providers)
    still = bg is None or isinstance(bg, ColorBackground)
    if isinstance(bg, ColorBackground):
        blender.still(bg.plate)
    log.info("device path: %dx%d decode %s, model %s, encode %s (%d threads)", w, h, count.decoder,
             count.providers, spec.codec, threads)
    depth = settings.queue_depth * settings.batch_size
    stop = threading.Event()
    decoded: queue.Queue = queue.Queue(maxsize=depth)
    composed: queue.Queue = queue.Queue(maxsize=depth)
    writer = VideoWriter(path, options.output_format, info, threads=threads, audio=window is None, spec=spec)
    tb = float(info.time_base)
    matrix = gpu.matrix_for(info.colorspace)
    placeholder = np.empty((1, h, w, 3), np.uint8)

    def decode(seek_dts: int | None) -> Iterator[PlaneFrame]:
        return iter_planes(info, nvdec=nvdec, on_device=on_device, device=device.index,
                           threads=settings.decode_threads, seek_dts=seek_dts, settings=settings)

    def read() -> None:
        for frame in window_frames(decode, window):
            if frame.on_device:
                sync_decoder(device.index)
            src = convert(frame, matrix)
            back = None if still or bg is None else bg.frames(placeholder, [frame.pts * tb])[0]
            if not _put(decoded, (src, back, frame.pts, frame.duration), stop):
                return
        _put(decoded, _END, stop)

    def write() -> None:
        last_report = 0.0
        while True:
            item = _get(composed, stop)
            if item is _END:
                return
            yuv, pts, duration = cast(tuple[np.ndarray, int, int], item)
            writer.write(yuv[None], [pts], [duration], layout="yuv420p")
            count.count += 1
            count.first_pts = pts if count.first_pts is None else count.first_pts
            count.last_pts = pts
            now = time.monotonic()
            if progress is not None and now - last_report >= settings.progress_interval_s:
                last_report = now
                progress(count.count, max(info.frames, count.count))

    reader = _Stage("backdrop-device-decode", read, stop)
    writer_thread = _Stage("backdrop-device-encode", write, stop)
    reader.start()
    writer_thread.start()
    try:
        n = 0
        while True:
            if cancel is not None and n % settings.batch_size == 0 and cancel():
                raise Canceled("the job was canceled")
            item = _get(decoded, stop)
            if item is _END:
                break
            src, back, pts, duration = cast(tuple[Any, np.ndarray | None, int, int], item)
            n += 1
            fgr, pha = rvm.step(src)
            if window is not None and pts < window.start_pts:
                continue  # warm-up frame: the state moved on, nothing is written
            if not _put(composed, (blender(fgr, pha, back), pts, duration), stop):
                break
        _put(composed, _END, stop)
        finish_stages(reader, writer_thread, writer)
        _release(key, lane)  # only after a clean run: a failed one may have left a binding half made
        if progress is not None:
            progress(count.count, count.count)
        return count
    except BaseException:
        abort_stages(reader, writer_thread, writer, stop)
        raise
    finally:
        stop.set()

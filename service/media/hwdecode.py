"""Decode for the device path: NVDEC through PyAV's ``HWAccel`` where the machine has it, else the
CPU decoder; either way the frames come out as their 4:2:0 planes, not as RGB.

With NVDEC and ``on_device`` the decoded frames stay in GPU memory (``is_hw_owned``) and each plane is
handed over through DLPack: ``DevicePlane`` holds the capsule (which keeps FFmpeg's frame alive) and
the pointer, rows and pitch read from it, which ``gpu.yuv_to_src`` binds without a copy (it crops the
pitch itself).  Without NVDEC the planes are numpy views of the software frame's own memory, bound to
the same graph.  ``cuda_decode_available`` opens a CUDA device context once per process and logs the
answer; the timestamps follow the same rules as ``service.media.decode`` (tested equal).
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import av
import numpy as np

from service.config import Settings, get_settings
from service.media.decode import decode_error, fitted_size, timed_frames
from service.media.inspect import OPEN_OPTIONS
from service.media.probe import VideoInfo, open_input, prepare_decoder, thread_decoder, video_stream

log = logging.getLogger(__name__)

_lock = threading.Lock()
_cuda: dict[int, bool] = {}


def cuda_decode_available(device: int = 0) -> bool:
    """Whether this FFmpeg can open a CUDA device for decoding (probed once per device, logged)."""
    with _lock:
        if device not in _cuda:
            _cuda[device] = _probe_cuda(device)
        return _cuda[device]


def _probe_cuda(device: int) -> bool:
    from av.codec.hwaccel import HWAccel, hwdevices_available

    if "cuda" not in hwdevices_available():
        log.info("decode: this FFmpeg has no CUDA hwaccel; CPU decoder")
        return False
    try:
        HWAccel("cuda", device=str(device), allow_software_fallback=False).create(av.Codec("h264", "r"))
    except Exception as exc:  # noqa: BLE001 - no driver, no device, no NVDEC: all mean the CPU
        log.info("decode: no CUDA device for NVDEC (%s); CPU decoder", exc)
        return False
    log.info("decode: NVDEC on cuda:%d", device)
    return True


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p), ("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32),
        ("ndim", ctypes.c_int32), ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64),
    ]


_get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_get_pointer.restype = ctypes.c_void_p
_get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


@dataclass
class DevicePlane:
    """One plane of a frame in device memory: (rows, pitch) bytes at ``ptr``; ``capsule`` (the DLPack
    export) holds FFmpeg's reference to the frame until this object is dropped."""

    capsule: Any
    ptr: int
    rows: int
    pitch: int
    device_type: int
    device_id: int

    @classmethod
    def from_dlpack(cls, plane: Any) -> DevicePlane:
        capsule = plane.__dlpack__()
        tensor = _DLTensor.from_address(_get_pointer(capsule, b"dltensor"))
        if tensor.dtype.bits != 8 or tensor.ndim not in (2, 3):
            raise ValueError(f"unexpected DLPack plane: {tensor.ndim} dims of {tensor.dtype.bits} bits")
        rows, pitch = tensor.shape[0], tensor.strides[0]
        ptr = (tensor.data or 0) + tensor.byte_offset
        return cls(capsule, ptr, rows, pitch, tensor.device_type, tensor.device_id)


@dataclass
class PlaneFrame:
    layout: str  # "i420" (planes y, u, v) or "nv12" (y, uv)
    planes: dict[str, Any]  # numpy (rows, pitch) uint8 views on the host, or DevicePlane
    pts: int
    duration: int
    frame: Any  # the av.VideoFrame the host views point into (kept alive with them)

    @property
    def on_device(self) -> bool:
        return any(isinstance(p, DevicePlane) for p in self.planes.values())


def _host_planes(frame: av.VideoFrame) -> tuple[str, dict[str, np.ndarray]]:
    def view(i: int) -> np.ndarray:
        p = frame.planes[i]
        return np.frombuffer(memoryview(p), np.uint8).reshape(p.height, p.line_size)

    if frame.format.name == "nv12":
        return "nv12", {"y": view(0), "uv": view(1)}
    return "i420", {"y": view(0), "u": view(1), "v": view(2)}


def iter_planes(info: VideoInfo, *, nvdec: bool, on_device: bool, device: int = 0,
                threads: int = 0, seek_dts: int | None = None,
                settings: Settings | None = None) -> Iterator[PlaneFrame]:
    """The frames of ``info.path`` as 4:2:0 planes with their timestamps.  ``nvdec``: decode with
    NVDEC (the caller asked ``cuda_decode_available``); ``on_device``: keep its frames on the GPU.
    Frames of another size or pixel format are converted (on the host) to the probed size's yuv420p.
    ``seek_dts``: from the keyframe at or before that decode time, and ``settings``' limits, as
    ``decode.iter_frames``."""
    container = _open(info, nvdec=nvdec, on_device=on_device, device=device)
    try:
        stream = video_stream(container)
        if seek_dts is not None:
            container.seek(seek_dts, stream=stream, backward=True, any_frame=False)
        if not nvdec:  # NVDEC decodes asynchronously on its own; frame threads only add surfaces held
            thread_decoder(stream, threads)
        w, h = info.coded_width, info.coded_height
        settings = settings or get_settings()
        prepare_decoder(stream, settings.max_pixels)
        last_pts: int | None = None
        try:
            for frame, pts, duration in timed_frames(container, stream, info, settings):
                last_pts = pts
                yield _planes(frame, w, h, pts, duration)
        except av.error.FFmpegError as exc:
            raise decode_error(stream, settings, last_pts, exc) from None
    finally:
        container.close()


def _open(info: VideoInfo, *, nvdec: bool, on_device: bool, device: int) -> av.container.InputContainer:
    if not nvdec:
        return open_input(info.path)
    from av.codec.hwaccel import HWAccel

    on_device = on_device and share_primary_context(device)
    # allow_software_fallback: a stream NVDEC cannot take (a profile, a size) decodes on the CPU,
    # frame by frame the code below sees which.
    accel = HWAccel("cuda", device=str(device), allow_software_fallback=True, is_hw_owned=on_device)
    try:
        return av.open(str(info.path), **OPEN_OPTIONS, hwaccel=accel)
    except av.error.FFmpegError as exc:
        if not on_device:
            raise
        # FFmpeg could not share onnxruntime's context: NVDEC still decodes, its frames come to the host
        log.warning("decode: NVDEC frames cannot stay on the GPU (%s); they go through the host", exc)
        return _open(info, nvdec=True, on_device=False, device=device)


def _planes(frame: av.VideoFrame, w: int, h: int, pts: int, duration: int) -> PlaneFrame:
    full_range = frame.color_range == 2  # AVCOL_RANGE_JPEG: the YUV graph reads limited range
    if frame.format.name == "cuda" and (frame.width, frame.height) == (w, h) and not full_range:
        sw = frame.sw_format.name if frame.sw_format is not None else ""
        if sw == "nv12":
            on_gpu = {"y": DevicePlane.from_dlpack(frame.planes[0]), "uv": DevicePlane.from_dlpack(frame.planes[1])}
            return PlaneFrame("nv12", dict(on_gpu), pts, duration, frame)
    fit = fitted_size(frame.width, frame.height, w, h) if (frame.width, frame.height) != (w, h) else None
    if fit is not None:
        return _letterboxed(frame, fit, w, h, pts, duration)
    if frame.format.name not in ("yuv420p", "nv12") or (frame.width, frame.height) != (w, h) or full_range:
        # another size, bit depth, subsampling or range (or a hardware frame of one): to the host,
        # yuv420p in limited range
        frame = frame.reformat(format="yuv420p", width=w, height=h, dst_color_range="MPEG")
    layout, planes = _host_planes(frame)
    return PlaneFrame(layout, planes, pts, duration, frame)


def _letterboxed(frame: av.VideoFrame, fit: tuple[int, int, int, int], w: int, h: int, pts: int,
                 duration: int) -> PlaneFrame:
    """A frame of another shape than the output's, scaled into its place (``decode.fitted_size``)
    on limited-range black, as the CPU decoder letterboxes it: yuv420p planes of its own."""
    fw, fh, x, y = fit
    small = frame.reformat(format="yuv420p", width=fw, height=fh, dst_color_range="MPEG")
    _, inner = _host_planes(small)
    planes = {"y": np.full((h, w), 16, np.uint8)}
    planes["y"][y : y + fh, x : x + fw] = inner["y"][:, :fw]
    for name in ("u", "v"):
        planes[name] = np.full(((h + 1) // 2, (w + 1) // 2), 128, np.uint8)
        planes[name][y // 2 : (y + fh) // 2, x // 2 : (x + fw) // 2] = inner[name][:, : fw // 2]
    return PlaneFrame("i420", dict(planes), pts, duration, frame)


# --- CUDA's primary context, shared by FFmpeg and onnxruntime ----------------------------------

_libcuda: Any = None
_primary: dict[int, ctypes.c_void_p] = {}
_shared: dict[int, bool] = {}
#: the flags FFmpeg gives a primary context it shares (``primary_ctx``, what PyAV's ``is_hw_owned`` sets)
CU_CTX_SCHED_BLOCKING_SYNC = 0x04


def _driver() -> Any:
    """The CUDA driver library, initialised; False without one (no GPU)."""
    global _libcuda
    if _libcuda is None:
        try:
            lib = ctypes.CDLL("libcuda.so.1")
            _libcuda = lib if lib.cuInit(0) == 0 else False
        except OSError:
            _libcuda = False
    return _libcuda


def share_primary_context(device: int = 0) -> bool:
    """Give CUDA's primary context on ``device`` the flags FFmpeg asks of a primary context it shares,
    before onnxruntime makes it active; whether it has them (False: no driver, or already active with
    other flags).

    NVDEC frames that stay on the GPU (``is_hw_owned``) must live in the context onnxruntime reads
    them from, so PyAV opens FFmpeg's CUDA device on the primary context, and FFmpeg refuses one that
    is already active with other flags ("Operation not supported", seen on an H200 when onnxruntime's
    CUDA provider had made it active with the default flags).  Blocking sync also suits a worker
    whose CPU cores encode: a thread waiting for the GPU sleeps instead of spinning."""
    with _lock:
        if device not in _shared:
            _shared[device] = _set_primary_flags(device)
        return _shared[device]


def _set_primary_flags(device: int) -> bool:
    cuda = _driver()
    if not cuda:
        return False
    dev, flags, active = ctypes.c_int(), ctypes.c_uint(), ctypes.c_int()
    if cuda.cuDeviceGet(ctypes.byref(dev), device) != 0:
        return False
    if cuda.cuDevicePrimaryCtxGetState(dev, ctypes.byref(flags), ctypes.byref(active)) != 0:
        return False
    if flags.value == CU_CTX_SCHED_BLOCKING_SYNC:
        return True
    if active.value:
        log.info("decode: CUDA's primary context is already active with flags %#x; NVDEC frames go through "
                 "the host", flags.value)
        return False
    setter = getattr(cuda, "cuDevicePrimaryCtxSetFlags_v2", None) or cuda.cuDevicePrimaryCtxSetFlags
    return bool(setter(dev, CU_CTX_SCHED_BLOCKING_SYNC) == 0)


def sync_decoder(device: int = 0) -> None:
    """Wait for FFmpeg's copies of the last decoded frame (issued on CUDA's default stream in the
    primary context PyAV shares with onnxruntime) before another stream reads it.  Best effort:
    without libcuda (no GPU) there is nothing to wait for."""
    cuda = _driver()
    if not cuda:
        return
    ctx = _primary.get(device)
    if ctx is None:
        dev, ctx = ctypes.c_int(), ctypes.c_void_p()
        if cuda.cuDeviceGet(ctypes.byref(dev), device) != 0:
            return
        if cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev) != 0:  # held for the process
            return
        _primary[device] = ctx
    if cuda.cuCtxPushCurrent_v2(ctx) == 0:
        try:
            cuda.cuStreamSynchronize(None)
        finally:
            cuda.cuCtxPopCurrent_v2(ctypes.byref(ctypes.c_void_p()))

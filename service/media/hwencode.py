"""Encode for the device path: NVENC where the card has one, else libx264 on the worker's own cores.

Data-centre Hopper cards (H100, H200) have NVDEC but no NVENC, so the probe opens ``h264_nvenc`` for
real (a tiny frame size) rather than trusting that the codec is compiled in: FFmpeg ships it
everywhere.  The answer is cached per process and logged.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av

from service.media.encode import FormatSpec, format_spec

log = logging.getLogger(__name__)
_lock = threading.Lock()
_nvenc: dict[tuple[str, int], bool] = {}

#: NVENC's counterpart of the mp4 formats' libx264 ``veryfast``/``crf 18``: constant quality 19.
NVENC_OPTIONS = {"preset": "p4", "tune": "hq", "rc": "vbr", "cq": "19", "b": "0"}


def nvenc_available(codec: str = "h264_nvenc", device: int = 0) -> bool:
    """Whether ``codec`` opens on this machine (probed once, logged)."""
    with _lock:
        key = (codec, device)
        if key not in _nvenc:
            _nvenc[key] = _probe(codec, device)
        return _nvenc[key]


def _probe(codec: str, device: int) -> bool:
    try:
        ctx = av.CodecContext.create(codec, "w")
        ctx.width, ctx.height = 256, 256  # type: ignore[attr-defined]
        ctx.pix_fmt = "yuv420p"  # type: ignore[attr-defined]
        ctx.time_base = Fraction(1, 25)
        ctx.options = {"gpu": str(device)}
        ctx.open()
    except Exception as exc:  # noqa: BLE001 - not compiled in, no driver, no NVENC on this card
        log.info("encode: %s unavailable (%s); libx264 on the CPU", codec, str(exc).splitlines()[0][:200])
        return False
    log.info("encode: %s on cuda:%d", codec, device)
    return True


def worker_cores() -> int:
    """The cores this process may use: its CPU affinity (a cpuset), narrowed by a cgroup v2 CPU quota
    (``cpu.max``, what a Kubernetes CPU limit sets) where there is one."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def device_format(fmt: str, *, nvenc: bool, device: int = 0, x264_preset: str | None = None) -> FormatSpec:
    """The output format ``fmt`` as the device path encodes it: H.264 formats go to NVENC when
    ``nvenc``; otherwise (and for every other format) the ordinary spec, libx264 at ``x264_preset``."""
    spec = format_spec(fmt, x264_preset)
    if nvenc and spec.codec == "libx264":
        opts = {k: v for k, v in spec.options.items() if k == "movflags"}
        return replace(spec, codec="h264_nvenc", options={**opts, **NVENC_OPTIONS, "gpu": str(device)})
    return spec

"""RVM on the device with IO binding: its input, outputs and recurrent states never leave it.

One ``DeviceRVM`` serves one frame size.  Each ``step`` binds the frame (an ``OrtValue`` already on
the device, from ``gpu.yuv_to_src``) and the previous step's recurrent states as inputs and binds
every output to the device, so between frames nothing is copied to or from the host.  With
TensorRT in the providers it runs RVM's fixed-ratio, static-size variant (``rvm_export``), which
TensorRT builds (at fp16 with ``settings.fp16``) and caches on disk; otherwise the published file,
with its ratio bound as an input.  On the CPU provider the same code runs, which is what the tests
check against ``session.run``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from service.config import Settings
from service.inference.gpu import Device, device_session
from service.inference.models.rvm import RVM, downsample_ratio
from service.inference.rvm_export import RATIO_INPUT, STATES, fixed_rvm, rvm_state_shapes

log = logging.getLogger(__name__)
OUTPUTS = ("fgr", "pha", "r1o", "r2o", "r3o", "r4o")


class DeviceRVM:
    def __init__(self, settings: Settings, device: Device, size: tuple[int, int], *,
                 fixed: bool | None = None, weights: Path | None = None):
        """``size``: (height, width) of the frames.  ``fixed``: run the fixed-ratio variant (default:
        when TensorRT is among the providers, the one that needs it)."""
        import onnxruntime as ort

        self.settings, self.device, self.size = settings, device, size
        h, w = size
        self.ratio = downsample_ratio(h, w, settings.rvm_long_side)
        source = weights or RVM(settings).weights_path
        self.fixed = device.tensorrt if fixed is None else fixed
        path = fixed_rvm(source, self.ratio, size, Path(settings.engine_cache_dir)) if self.fixed else source
        try:
            self.session = device_session(path, device, settings, tensorrt=self.fixed)
        except Exception as exc:  # noqa: BLE001 - TensorRT may refuse to build: CUDA runs the same file
            if not (self.fixed and device.tensorrt):
                raise
            log.warning("TensorRT could not build RVM for %dx%d (%s); CUDA without it", w, h, str(exc)[:300])
            self.session = device_session(path, device, settings, tensorrt=False)
        self.providers = self.session.get_providers()
        self.binding = self.session.io_binding()
        self._ort = ort
        kind, index = device.kind, device.index
        if self.fixed:
            shapes = rvm_state_shapes(path)
            self._initial = [ort.OrtValue.ortvalue_from_numpy(np.zeros(s, np.float32), kind, index) for s in shapes]
        else:
            # the published graph expands 1×1×1×1 zeros to the states' real shape
            zero = np.zeros((1, 1, 1, 1), np.float32)
            self._initial = [ort.OrtValue.ortvalue_from_numpy(zero, kind, index) for _ in STATES]
            ratio = ort.OrtValue.ortvalue_from_numpy(np.array([self.ratio], np.float32), kind, index)
            self.binding.bind_ortvalue_input(RATIO_INPUT, ratio)
            self._ratio = ratio  # kept alive while bound
        self.states: list[Any] = list(self._initial)

    def reset(self) -> None:
        """Forget the recurrent memory (a new clip)."""
        self.states = list(self._initial)

    def step(self, src: Any) -> tuple[Any, Any]:
        """One frame: ``src`` an ``OrtValue`` (1, 3, H, W) float in [0, 1] on this device.  Returns
        ``fgr`` and ``pha`` as ``OrtValue``s on the device; the states move on."""
        b = self.binding
        b.bind_ortvalue_input("src", src)
        for name, value in zip(STATES, self.states, strict=True):
            b.bind_ortvalue_input(name, value)
        for name in OUTPUTS:
            b.bind_output(name, self.device.kind, self.device.index)
        self.session.run_with_iobinding(b)
        fgr, pha, *states = b.get_outputs()
        self.states = states
        return fgr, pha

    def step_numpy(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One uint8 (H, W, 3) RGB frame from the host (tests, and models fed by the CPU decoder):
        the alpha (H, W) and foreground (H, W, 3) float back on the host."""
        src = np.ascontiguousarray(frame.transpose(2, 0, 1)[None], dtype=np.float32) * (1.0 / 255.0)
        value = self._ort.OrtValue.ortvalue_from_numpy(src, self.device.kind, self.device.index)
        fgr, pha = self.step(value)
        return pha.numpy()[0, 0], fgr.numpy()[0].transpose(1, 2, 0)

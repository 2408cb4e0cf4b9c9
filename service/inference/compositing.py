"""Compositors: ``(frames, alpha, background, foreground=None) -> frames``, uint8 in and out.

A compositor is made per job (it may keep state across batches, e.g. temporal smoothing) and is
called on batches: frames/background uint8 (N, H, W, 3), alpha float32 (N, H, W) in [0, 1],
foreground (the model's own colour estimate, uint8 (N, H, W, 3)) or None.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

import cv2
import numpy as np

from service.array_pool import Empty, kept_array
from service.errors import InvalidParameter


class Compositor(Protocol):
    def __call__(
        self, frames: np.ndarray, alpha: np.ndarray, background: np.ndarray, foreground: np.ndarray | None = None
    ) -> np.ndarray: ...


class AlphaCompositor:
    """``out = a·F + (1 − a)·B``.  F is the model's foreground prediction where it has one: the
    input pixels at a soft edge still hold old background, which would show as a halo.  Its
    output is made by ``empty`` (a job's ``ArrayPool``); its one-frame work array, which never
    leaves a call, is its own and made once."""

    def __init__(self, empty: Empty = np.empty) -> None:
        self.empty = empty

    def __call__(
        self, frames: np.ndarray, alpha: np.ndarray, background: np.ndarray, foreground: np.ndarray | None = None
    ) -> np.ndarray:
        fg = frames if foreground is None else foreground
        single = fg.ndim == 3 and background.ndim == 3
        # a single frame, or one background / alpha for the whole batch, broadcast like numpy would
        fgs, bgs, alphas = (x if x.ndim == nd else x[None] for x, nd in ((fg, 4), (background, 4), (alpha, 3)))
        n = max(len(fgs), len(bgs), len(alphas))
        fgs, bgs, alphas = (np.broadcast_to(x, (n, *x.shape[1:])) for x in (fgs, bgs, alphas))
        out = self.empty(bgs.shape, np.uint8)
        rest = kept_array(self, "_rest", alphas.shape[1:], np.float32)  # 1 − a, one frame at a time
        for i in range(n):
            a = np.ascontiguousarray(alphas[i], dtype=np.float32)
            np.subtract(1.0, a, out=rest)
            # one fused, multi-threaded pass per frame (4× numpy's float round trip at 720p), written
            # in place; OpenCV divides by (a + (1 − a) + 1e-5): at most 0.003 of a level off the exact blend
            cv2.blendLinear(np.ascontiguousarray(fgs[i]), np.ascontiguousarray(bgs[i]), a, rest, dst=out[i])
        return out[0] if single else out


class CompositorName(StrEnum):
    ALPHA = "alpha"
    POISSON = "poisson"


def create_compositor(name: str, empty: Empty = np.empty) -> Compositor:
    """A fresh compositor for one job, whose output frames ``empty`` makes."""
    try:
        key = CompositorName(name)
    except ValueError:
        raise InvalidParameter(f"unknown compositor {name!r}; choose alpha or poisson") from None
    if key is CompositorName.ALPHA:
        return AlphaCompositor(empty)
    from service.inference.poisson import PoissonCompositor

    return PoissonCompositor(empty=empty)

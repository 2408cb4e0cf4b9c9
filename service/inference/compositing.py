"""Compositors: ``(frames, alpha, background, foreground=None) -> frames``, uint8 in and out.

A compositor is made per job (it may keep state across batches, e.g. temporal smoothing) and is
called on batches: frames/background uint8 (N, H, W, 3), alpha float32 (N, H, W) in [0, 1],
foreground (the model's own colour estimate, uint8 (N, H, W, 3)) or None.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

import numpy as np

from service.errors import InvalidParameter


class Compositor(Protocol):
    def __call__(
        self, frames: np.ndarray, alpha: np.ndarray, background: np.ndarray, foreground: np.ndarray | None = None
    ) -> np.ndarray: ...


class AlphaCompositor:
    """``out = a·F + (1 − a)·B``.  F is the model's foreground prediction where it has one: the
    input pixels at a soft edge still hold old background, which would show as a halo."""

    def __call__(
        self, frames: np.ndarray, alpha: np.ndarray, background: np.ndarray, foreground: np.ndarray | None = None
    ) -> np.ndarray:
        fg = frames if foreground is None else foreground
        a = alpha[..., None].astype(np.float32, copy=False)
        out = background.astype(np.float32)
        out += a * (fg.astype(np.float32) - out)
        np.add(out, 0.5, out=out)
        np.clip(out, 0, 255, out=out)
        return out.astype(np.uint8)


class CompositorName(StrEnum):
    ALPHA = "alpha"
    POISSON = "poisson"


def create_compositor(name: str) -> Compositor:
    """A fresh compositor for one job."""
    try:
        key = CompositorName(name)
    except ValueError:
        raise InvalidParameter(f"unknown compositor {name!r}; choose alpha or poisson") from None
    if key is CompositorName.ALPHA:
        return AlphaCompositor()
    from service.inference.poisson import PoissonCompositor

    return PoissonCompositor()

"""Edge correction after any model: a fast guided filter plus motion-aware temporal smoothing.

``EdgeRefiner()(frames, alpha)`` takes uint8 (N, H, W, 3) RGB frames and the model's float32
(N, H, W) alpha and returns a refined float32 (N, H, W) alpha in [0, 1].  One instance per job: it
keeps the previous frame and output for the temporal step; ``reset()`` forgets them (a new job, or a
cut).  The frame size may change between calls (the state is then dropped).

1. **Fast guided filter** (He & Sun 2015, "Fast Guided Filter"; He et al. 2013): the colour
   guided filter's linear coefficients ``A`` (3 per pixel) and ``b`` are fitted at reduced
   resolution (long side ``work_side``), upsampled bilinearly and applied to the *full-resolution*
   frame: ``q = A·I + b``.  Edges of the alpha snap to colour edges of the frame at full-res detail.
   A contrast step (``gain`` around 0.5) undoes the softening a segmenter's upsampling adds.
2. **Only where the model is unsure**: the filtered alpha replaces the input only in a band around
   pixels whose alpha is neither ~0 nor ~1 (smoothly blended); a confident (hard) mask passes
   through unchanged, so a perfect hard mask stays perfect.
3. **Temporal smoothing**: an exponential moving average with the previous *output*, weighted per
   pixel by how still the scene is there: the weight falls to 0 where the frame's (blurred,
   low-resolution) gray level changed, so a moving person does not leave a ghost, while the
   segmentation flicker on still regions (background, a seated speaker) is damped.
"""

from __future__ import annotations

import cv2
import numpy as np

from service.inference.strips import STRIP_ROWS, resized_rows


def _box(x: np.ndarray, r: int) -> np.ndarray:
    return cv2.boxFilter(x, -1, (2 * r + 1, 2 * r + 1), normalize=True, borderType=cv2.BORDER_REFLECT)


_ONES = np.ones((1, 3), np.float32)


def _sum_channels(x: np.ndarray) -> np.ndarray:
    """``x.sum(axis=-1)`` for float32 (h, w, 3), in one OpenCV pass (numpy's reduce over a
    3-long last axis was half the refiner's time)."""
    return np.asarray(cv2.transform(x, _ONES), np.float32).reshape(x.shape[:2])


def guided_coefficients(guide: np.ndarray, p: np.ndarray, r: int, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Colour guided filter coefficients: ``guide`` float32 (h, w, 3) in [0, 1], ``p`` (h, w).

    Returns the box-averaged ``A`` (h, w, 3) and ``b`` (h, w), so that ``q = sum(A * I) + b``."""
    mean_i = _box(guide, r)
    mean_p = _box(p, r)
    mean_ip = _box(guide * p[..., None], r)
    cov_ip = mean_ip - mean_i * mean_p[..., None]
    # covariance of the guide, 3×3 per pixel (symmetric: 6 planes)
    ii = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
    prods = np.stack([guide[..., a] * guide[..., b] for a, b in ii], axis=-1)
    var = _box(prods, r) - np.stack([mean_i[..., a] * mean_i[..., b] for a, b in ii], axis=-1)
    s00, s01, s02, s11, s12, s22 = (var[..., k] for k in range(6))
    s00 = s00 + eps
    s11 = s11 + eps
    s22 = s22 + eps
    # inverse of the symmetric 3×3 by cofactors
    c00 = s11 * s22 - s12 * s12
    c01 = s02 * s12 - s01 * s22
    c02 = s01 * s12 - s02 * s11
    c11 = s00 * s22 - s02 * s02
    c12 = s01 * s02 - s00 * s12
    c22 = s00 * s11 - s01 * s01
    det = s00 * c00 + s01 * c01 + s02 * c02
    inv_det = 1.0 / det
    cx, cy, cz = cov_ip[..., 0], cov_ip[..., 1], cov_ip[..., 2]
    a = np.stack(
        [
            (c00 * cx + c01 * cy + c02 * cz) * inv_det,
            (c01 * cx + c11 * cy + c12 * cz) * inv_det,
            (c02 * cx + c12 * cy + c22 * cz) * inv_det,
        ],
        axis=-1,
    ).astype(np.float32)
    b = (mean_p - _sum_channels(a * mean_i)).astype(np.float32)
    return _box(a, r), _box(b, r)


class EdgeRefiner:
    """Guided-filter edge correction + motion-aware temporal EMA (see the module docstring)."""

    def __init__(
        self,
        *,
        work_side: int = 480,
        radius: int = 2,
        eps: float = 1e-4,
        gain: float = 2.0,
        band: int = 6,
        sure: float = 0.02,
        temporal: float = 0.5,
        motion: float = 0.04,
    ):
        self.work_side = work_side  # long side at which the coefficients are fitted
        self.radius = radius  # box radius at that size
        self.eps = eps  # regularisation: larger = smoother, less edge-following
        self.gain = gain  # contrast around 0.5 after filtering (1 = none)
        self.band = band  # px (working size) the refinement band reaches past unsure pixels
        self.sure = sure  # alpha within `sure` of 0 or 1 counts as confident
        self.temporal = temporal  # weight of the previous output where nothing moves (0 = off)
        self.motion = motion  # gray-level change (0–1) at which the previous output is dropped
        self.reset()

    def reset(self) -> None:
        self._prev_gray: np.ndarray | None = None
        self._prev_alpha: np.ndarray | None = None

    def __call__(self, frames: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 (N, H, W, 3), got {frames.dtype} {frames.shape}")
        if alpha.shape != frames.shape[:3]:
            raise ValueError(f"alpha {alpha.shape} does not match frames {frames.shape[:3]}")
        out = np.empty(alpha.shape, np.float32)
        for i in range(frames.shape[0]):
            out[i] = self._one(frames[i], alpha[i].astype(np.float32, copy=False))
        return out

    # ------------------------------------------------------------------------------------------
    def _one(self, frame: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        """Everything is worked out at the working size (coefficients, where to refine, where the
        scene is still); the full-resolution result is then made a strip of rows at a time
        (``strips``): at 1080p the whole-frame version held ~120 MB of float arrays a frame."""
        h, w = alpha.shape
        s = min(1.0, self.work_side / max(h, w))
        lh, lw = max(1, round(h * s)), max(1, round(w * s))
        small = cv2.resize(frame, (lw, lh), interpolation=cv2.INTER_AREA) if s < 1 else frame

        unsure = ((alpha > self.sure) & (alpha < 1.0 - self.sure)).astype(np.uint8)
        if s < 1:  # any unsure full-res pixel marks its low-res pixel
            unsure = (cv2.resize(unsure, (lw, lh), interpolation=cv2.INTER_AREA) > 0).astype(np.uint8)
        coefficients: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        if unsure.any():
            guide_lo = small.astype(np.float32) * (1.0 / 255.0)
            alpha_lo = cv2.resize(alpha, (lw, lh), interpolation=cv2.INTER_AREA) if s < 1 else alpha
            a, b = guided_coefficients(guide_lo, alpha_lo, self.radius, self.eps)
            k = 2 * self.band + 1
            weight = cv2.dilate(unsure, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))).astype(np.float32)
            coefficients = (a * np.float32(1.0 / 255.0), b, _box(weight, max(1, self.band // 2)))

        gray = cv2.GaussianBlur(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32) * (1.0 / 255.0), (5, 5), 0)
        keep = None
        previous = self._prev_alpha
        if (self.temporal > 0 and previous is not None and self._prev_gray is not None
                and previous.shape == (h, w)):
            change = np.abs(gray - self._prev_gray)
            change = cv2.dilate(change, np.ones((5, 5), np.uint8))  # moving edges: a margin around them
            keep = (self.temporal * np.exp(-((change / self.motion) ** 2))).astype(np.float32)

        refined = np.empty((h, w), np.float32)
        for y0 in range(0, h, STRIP_ROWS):
            y1 = min(h, y0 + STRIP_ROWS)
            out = refined[y0:y1]
            np.clip(alpha[y0:y1], 0.0, 1.0, out=out)
            if coefficients is not None:  # out += weight * (q - out), q = sum(A * I) + b with contrast
                a, b, weight = coefficients
                q = _sum_channels(cv2.multiply(resized_rows(a, w, h, y0, y1), frame[y0:y1], dtype=cv2.CV_32F))
                q += resized_rows(b, w, h, y0, y1)
                if self.gain != 1.0:
                    q -= 0.5
                    q *= self.gain
                    q += 0.5
                np.clip(q, 0.0, 1.0, out=q)
                q -= out
                q *= resized_rows(weight, w, h, y0, y1)
                out += q
            if keep is not None and previous is not None:  # out += keep * (previous - out)
                moved = previous[y0:y1] - out
                moved *= resized_rows(keep, w, h, y0, y1)
                out += moved
            np.clip(out, 0.0, 1.0, out=out)
        self._prev_gray = gray
        self._prev_alpha = refined
        return refined

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


def guided_coefficients(guide: list[np.ndarray], p: np.ndarray, r: int,
                        eps: float) -> tuple[list[np.ndarray], np.ndarray]:
    """Colour guided filter coefficients: ``guide`` the three float32 (h, w) planes of the colour
    guide in [0, 1], ``p`` (h, w).

    Returns the box-averaged ``A`` (three planes) and ``b`` (h, w), so that ``q = sum(A * I) + b``.
    Everything is a plane of its own, never a (h, w, 3) or (h, w, 6) stack: at the working size
    (480 x 270) a plane is 0.5 MB, under the mmap threshold the pipeline sets (1 MB), so these
    temporaries come from the heap again and again, while the stacks (1.5-3 MB) came from the
    kernel afresh each frame, zeroed a page at a time: 8,000 page faults a 1080p frame, 40 % of the
    refiner's time."""
    mean_i = [_box(c, r) for c in guide]
    mean_p = _box(p, r)
    cx, cy, cz = (_box(c * p, r) - m * mean_p for c, m in zip(guide, mean_i, strict=True))
    # covariance of the guide, 3×3 per pixel (symmetric: 6 planes)
    s00, s01, s02, s11, s12, s22 = (
        _box(guide[a] * guide[b], r) - mean_i[a] * mean_i[b] for a, b in ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))
    )
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
    a = [
        (c00 * cx + c01 * cy + c02 * cz) * inv_det,
        (c01 * cx + c11 * cy + c12 * cz) * inv_det,
        (c02 * cx + c12 * cy + c22 * cz) * inv_det,
    ]
    b = mean_p - (a[0] * mean_i[0] + a[1] * mean_i[1] + a[2] * mean_i[2])
    return [_box(x, r) for x in a], _box(b, r)


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

    def __call__(self, frames: np.ndarray, alpha: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The refined alpha of each frame, into ``out`` when given: a float32 array of alpha's
        shape, which may be ``alpha`` itself (the pipeline refines the model's matte in place, so
        no frame-sized array is made afresh: at 1080p each was 2,000 page faults)."""
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 (N, H, W, 3), got {frames.dtype} {frames.shape}")
        if alpha.shape != frames.shape[:3]:
            raise ValueError(f"alpha {alpha.shape} does not match frames {frames.shape[:3]}")
        if out is None:
            out = np.empty(alpha.shape, np.float32)
        elif out.shape != alpha.shape or out.dtype != np.float32:
            raise ValueError(f"out must be float32 {alpha.shape}, got {out.dtype} {out.shape}")
        for i in range(frames.shape[0]):
            self._one(frames[i], alpha[i].astype(np.float32, copy=False), out[i])
        return out

    # ------------------------------------------------------------------------------------------
    def _one(self, frame: np.ndarray, alpha: np.ndarray, refined: np.ndarray) -> None:
        """Everything is worked out at the working size (coefficients, where to refine, where the
        scene is still); the full-resolution result is then written into ``refined`` (which may be
        ``alpha``: each strip reads its rows of alpha before it writes them) a strip of rows at a
        time (``strips``): at 1080p the whole-frame version held ~120 MB of float arrays a frame."""
        h, w = alpha.shape
        s = min(1.0, self.work_side / max(h, w))
        lh, lw = max(1, round(h * s)), max(1, round(w * s))
        small = cv2.resize(frame, (lw, lh), interpolation=cv2.INTER_AREA) if s < 1 else frame

        # alpha strictly between sure and 1 - sure (inRange's bounds are inclusive and compared in
        # float32), 1 there: one uint8 plane, where numpy's comparisons made four
        lo = np.nextafter(np.float32(self.sure), np.float32(1))
        hi = np.nextafter(np.float32(1.0 - self.sure), np.float32(0))
        unsure = cv2.inRange(alpha, float(lo), float(hi))
        cv2.threshold(unsure, 0, 1, cv2.THRESH_BINARY, dst=unsure)
        if s < 1:  # a low-res pixel is unsure where about half its area or more is (INTER_AREA's rounded mean)
            unsure = (cv2.resize(unsure, (lw, lh), interpolation=cv2.INTER_AREA) > 0).astype(np.uint8)
        coefficients: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        if unsure.any():
            guide_lo = [c.astype(np.float32) * np.float32(1.0 / 255.0) for c in cv2.split(small)]
            alpha_lo = cv2.resize(alpha, (lw, lh), interpolation=cv2.INTER_AREA) if s < 1 else alpha
            a_planes, b = guided_coefficients(guide_lo, alpha_lo, self.radius, self.eps)
            k = 2 * self.band + 1
            weight = cv2.dilate(unsure, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))).astype(np.float32)
            # A in 1/255 units, as the frame's uint8 channels multiply it
            a_frame = cv2.merge([x * np.float32(1.0 / 255.0) for x in a_planes])
            coefficients = (a_frame, b, _box(weight, max(1, self.band // 2)))

        gray = cv2.GaussianBlur(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32) * (1.0 / 255.0), (5, 5), 0)
        keep = None
        previous = self._prev_alpha
        if (self.temporal > 0 and previous is not None and self._prev_gray is not None
                and previous.shape == (h, w)):
            change = np.abs(gray - self._prev_gray)
            change = cv2.dilate(change, np.ones((5, 5), np.uint8))  # moving edges: a margin around them
            keep = (self.temporal * np.exp(-((change / self.motion) ** 2))).astype(np.float32)

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
        if self.temporal > 0:  # kept in a buffer of its own: ``refined`` belongs to the caller
            if previous is None or previous.shape != refined.shape:
                previous = np.empty_like(refined)
            np.copyto(previous, refined)
            self._prev_alpha = previous

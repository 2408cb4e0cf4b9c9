"""Colour harmonisation: bring the person's colours toward the new scene before compositing.

A tiny ONNX network (``weights/harmonizer.onnx``, model card ``weights/harmonizer.md``; trained by
``export/harmonize_train.py``) looks at the composite and the matte at 128×128 and predicts one
global colour transform of the person, ``y = M · x^γ + b`` (3×3 matrix, offset, per-channel gamma,
RGB in [0, 1]).  The transform is smoothed over time (EMA on its parameters), scaled by ``strength``
(0 = identity, 1 = full) and applied to the whole frame at full resolution through per-channel
lookup tables for the gamma, inside the box around the person (alpha > 0; the rest of the frame is
returned as it was); the compositor then takes the person from the result.

The ONNX session is made once per process (module-level cache behind a lock).
"""

from __future__ import annotations

import threading

import cv2
import numpy as np

from service.array_pool import Empty, kept_array
from service.config import Settings, get_settings
from service.errors import InvalidParameter
from service.inference.sessions import Session, create_session
from service.inference.weights import locate

FILENAME = "harmonizer.onnx"
SIZE = 128
N_PARAMS = 15

_LOCK = threading.Lock()
_SESSIONS: dict[str, Session] = {}


def get_session(settings: Settings | None = None) -> Session:
    """The process-wide harmoniser session (created on first use)."""
    settings = settings or get_settings()
    path = locate(FILENAME, settings, fix="It ships with Backdrop; reinstall or set BACKDROP_MODEL_DIR.")
    key = str(path)
    with _LOCK:
        session = _SESSIONS.get(key)
        if session is None:
            session = _SESSIONS[key] = create_session(path, settings)
        return session


def _small(img: np.ndarray) -> np.ndarray:
    """``img`` area-averaged to SIZE×SIZE: first by a whole factor (OpenCV's fast path; the at most
    k − 1 edge pixels that do not fill a cell are dropped), then to SIZE."""
    h, w = img.shape[:2]
    k = max(1, min(h, w) // SIZE)
    if k > 1:
        img = cv2.resize(img[: h // k * k, : w // k * k], (w // k, h // k), interpolation=cv2.INTER_AREA)
    return cv2.resize(img, (SIZE, SIZE), interpolation=cv2.INTER_AREA)


def identity_params() -> np.ndarray:
    p = np.zeros(N_PARAMS, np.float32)
    p[[0, 4, 8]] = 1.0
    return p


#: Bytes of one float work array of ``apply_params`` (made once a call, used for every strip):
#: under glibc's mmap threshold as the pipeline pins it (1 MB), so they come from the heap.
STRIP_BYTES = 512 * 1024


def apply_params(frames: np.ndarray, params: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Apply one transform ``params`` (15,) to uint8 RGB frames (..., 3) → uint8, into ``out``
    (the same shape) when given.

    Done a strip of rows at a time: done on a whole 1080p crop at once, the look-up's and the
    transform's float images were 25 MB each, made afresh for every frame (4,500 page faults a
    frame of a harmonised job); the bytes are the same."""
    M = params[:9].reshape(3, 3).astype(np.float32)
    b = params[9:12].astype(np.float32)
    gamma = np.exp(params[12:15].astype(np.float64))
    levels = np.arange(256, dtype=np.float64) / 255.0
    lut = np.stack([np.maximum(levels, 1e-4) ** g for g in gamma], axis=1).astype(np.float32)  # (256, 3)
    # y_i = Σ_j M_ij lut_j(x_j) + b_i, 255-scaled: one table look-up and one 3×4 transform (OpenCV)
    lut3 = lut.reshape(1, 256, 3)
    affine = np.concatenate([M * 255.0, (b * 255.0 + 0.5)[:, None]], axis=1)
    result = np.empty(frames.shape, np.uint8) if out is None else out
    src, dst = frames.reshape(-1, *frames.shape[-2:]), result.reshape(-1, *frames.shape[-2:])
    assert np.may_share_memory(dst, result) or dst.size == 0, "out must keep its rows' layout"
    width = frames.shape[-2]
    step = max(1, STRIP_BYTES // max(1, 12 * width))  # rows a strip: 3 float32 channels a pixel
    looked = np.empty((min(step, len(src)), width, 3), np.float32)
    mixed = np.empty_like(looked)
    for r0 in range(0, len(src), step):
        r1 = min(len(src), r0 + step)
        lut_img = cv2.LUT(src[r0:r1], lut3, dst=looked[: r1 - r0])
        y = cv2.transform(lut_img, affine, dst=mixed[: r1 - r0])
        np.clip(y, 0.0, 255.0, out=y)
        np.copyto(dst[r0:r1], y, casting="unsafe")  # truncates, as astype did (b holds the + 0.5)
    return result


class Harmonizer:
    """Per job: ``Harmonizer(strength)(frames, alpha, background) -> frames``; ``reset()`` at a cut.

    ``smoothing`` is the EMA weight of the past transform (0 = none)."""

    def __init__(self, strength: float, settings: Settings | None = None, *, smoothing: float = 0.8):
        if not np.isfinite(strength) or not 0.0 <= strength <= 1.0:
            raise InvalidParameter(f"harmonize strength must be in [0, 1], not {strength!r}")
        if not 0.0 <= smoothing < 1.0:
            raise ValueError("smoothing must be in [0, 1)")
        self.strength = float(strength)
        self.smoothing = smoothing
        self._settings = settings
        self._session: Session | None = None
        self._state: np.ndarray | None = None

    def reset(self) -> None:
        self._state = None

    @property
    def session(self) -> Session:
        if self._session is None:
            self._session = get_session(self._settings)
        return self._session

    def predict(self, frames: np.ndarray, alpha: np.ndarray, background: np.ndarray) -> np.ndarray:
        """Raw per-frame transforms (N, 15) from the network (no smoothing, full strength)."""
        n = frames.shape[0]
        image = np.empty((n, 3, SIZE, SIZE), np.float32)
        mask = np.empty((n, 1, SIZE, SIZE), np.float32)
        for i in range(n):
            f = _small(frames[i]).astype(np.float32)
            bg = _small(background[i]).astype(np.float32)
            m = np.clip(np.nan_to_num(_small(alpha[i].astype(np.float32, copy=False)), nan=0.0), 0.0, 1.0)
            comp = bg + m[..., None] * (f - bg)
            image[i] = (comp / 255.0).transpose(2, 0, 1)
            mask[i, 0] = m
        params = self.session.run(None, {"image": image, "mask": mask})[0]
        return np.asarray(params, dtype=np.float32).reshape(n, N_PARAMS)

    def __call__(self, frames: np.ndarray, alpha: np.ndarray, background: np.ndarray,
                 empty: Empty = np.empty) -> np.ndarray:
        """The harmonised frames, in an array ``empty`` makes (the job's ``ArrayPool``)."""
        if frames.ndim == 3:
            return self(frames[None], alpha[None], background[None])[0]
        if self.strength == 0.0:
            return frames.copy()
        params = self.predict(frames, alpha, background)
        eye = identity_params()
        out = empty(frames.shape, frames.dtype)
        # one byte a pixel, kept for both tests of alpha on every frame (numpy's comparisons made a
        # new 2 MB plane each at 1080p)
        where = kept_array(self, "_where", alpha.shape[1:], np.bool_)
        for i in range(frames.shape[0]):
            p = params[i]
            if not np.isfinite(p).all() or not np.greater(alpha[i], 0.5, out=where).any():
                p = eye if self._state is None else self._state  # no person: keep the last transform
            self._state = p if self._state is None else self.smoothing * self._state + (1 - self.smoothing) * p
            # only the person is taken from the result: the rest of the frame is left as it was
            x, y, w, h = cv2.boundingRect(np.greater(alpha[i], 0, out=where).view(np.uint8))
            out[i] = frames[i]
            if w and h:
                apply_params(frames[i, y : y + h, x : x + w], eye + self.strength * (self._state - eye),
                             out=out[i, y : y + h, x : x + w])
        return out

"""DeepLabv3+ (MobileNetV2 backbone) person segmentation, trained in this project (``export/``).

ONNX contract (see ``export/export_onnx.py``): input ``image`` float32 (N, 3, H, W) RGB in [0, 1]
(mean/std normalisation is inside the graph), H and W multiples of 16; output ``logits``
(N, 1, H, W), person logits.  The fp16 variant (``deeplabv3plus_fp16.onnx``, used when
``settings.fp16`` is set and the file exists) takes and returns float16.

Per batch: the frames' long side is resized to each working size of ``settings.deeplab_long_sides``
(aspect kept), zero-padded to a multiple of 16 (as in training) and run once for the batch; with
``settings.deeplab_flip_average`` each frame's mirror image runs in the same batch and the two logit
maps are averaged (flip test-time augmentation); with more than one working size the sizes' logits
are averaged on the largest one's grid (multi-scale test-time augmentation: people small in the
frame gain from the larger size, large ones from the smaller). Then sigmoid, crop, and the
probability resized back to frame size: that is the alpha.  Each working size costs a pass of the
network (its pixels' worth), the flip doubles it; the model card gives the measured quality and
speed of each choice.  It is a segmenter: the alpha is soft only along edges;
``service.inference.refine.EdgeRefiner`` sharpens it against the frame.

Across the frames of a job (the ``state`` from ``new_state()``, one per job, passed back in with each
batch in frame order, as RVM's recurrent state) the probability maps on the working grid are an
exponential moving average: ``p ← (1 − t)·p + t·p_prev`` with ``t = settings.deeplab_temporal`` (``smooth``), which
steadies the mask where the network wavers from frame to frame.  A single image, or ``state=None``,
has no memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from service.array_pool import Empty
from service.config import Settings
from service.errors import ModelNotFound
from service.inference.models.base import Matte, MattingModel
from service.inference.weights import locate

WEIGHTS = "deeplabv3plus.onnx"
WEIGHTS_FP16 = "deeplabv3plus_fp16.onnx"
MULTIPLE = 16
FIX = "It ships in service/inference/weights (export/export_onnx.py makes it); or set BACKDROP_MODEL_DIR."


def working_size(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(h, w) the frame is resized to before padding: long side ``long_side``, aspect kept."""
    s = long_side / max(height, width)
    return max(1, round(height * s)), max(1, round(width * s))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 * (np.tanh(0.5 * x) + 1.0)).astype(np.float32, copy=False)


@dataclass
class DeepLabState:
    """Per-job memory: the previous frame's (smoothed) probability map on the working grid."""

    prob: np.ndarray | None = None


class DeepLabV3Plus(MattingModel):
    name = "deeplabv3plus"

    def __init__(self, settings: Settings | None = None):
        super().__init__(settings)
        #: weight of the previous frame's probability map (``smooth``; the model card's figures)
        self.temporal = self.settings.deeplab_temporal

    def _weights(self) -> Path:
        if self.settings.fp16:
            try:
                return locate(WEIGHTS_FP16, self.settings, fix=FIX)
            except ModelNotFound:
                pass
        return locate(WEIGHTS, self.settings, fix=FIX)

    def preprocess(self, frames: np.ndarray, long_side: int) -> tuple[np.ndarray, tuple[int, int]]:
        """(N, 3, Hp, Wp) float32 in [0, 1] at working size ``long_side``, zero-padded to ×16, and the
        unpadded (h, w)."""
        n, height, width, _ = frames.shape
        h, w = working_size(height, width, long_side)
        hp, wp = -(-h // MULTIPLE) * MULTIPLE, -(-w // MULTIPLE) * MULTIPLE
        interp = cv2.INTER_AREA if max(height, width) > long_side else cv2.INTER_LINEAR
        batch = np.zeros((n, hp, wp, 3), np.float32)
        for i in range(n):
            small = frames[i] if (h, w) == (height, width) else cv2.resize(frames[i], (w, h), interpolation=interp)
            batch[i, :h, :w] = small
        batch *= 1.0 / 255.0
        return np.ascontiguousarray(batch.transpose(0, 3, 1, 2)), (h, w)

    def logits(self, frames: np.ndarray, long_side: int) -> np.ndarray:
        """(N, h, w) float32 person logits at working size ``long_side`` (padding cropped off),
        flip-averaged when ``settings.deeplab_flip_average``.

        On the CPU the network runs one frame (and its mirror) a call: ONNX Runtime's arena keeps
        the largest call's activations, which for a batch of four with their mirrors was 340 MB of a
        1080p job's peak (1.27 GB), and one frame a call is no slower (449 against 478 ms a batch of
        four at 384 and 256 px, 2-core EPYC).  A GPU takes the whole batch in one call."""
        n = len(frames)
        x, (h, w) = self.preprocess(frames, long_side)
        inp = self.session.get_inputs()[0]
        if "float16" in inp.type:
            x = x.astype(np.float16)
        flip = self.settings.deeplab_flip_average
        step = 1 if self.on_cpu else n
        out = np.empty((n, h, w), np.float32)
        for i in range(0, n, step):
            part = x[i : i + step]
            if flip:
                part = np.concatenate([part, part[..., ::-1]])
            logits = self.session.run(None, {inp.name: part})[0][:, 0].astype(np.float32, copy=False)
            if flip:
                # the mirror's padding sits on the left, so flipping its logits back lines them up
                # with the frame's (content at [0, w) in both)
                k = len(logits) // 2
                logits = 0.5 * (logits[:k] + logits[k:, :, ::-1])
            out[i : i + step] = logits[:, :h, :w]
        return out

    def new_state(self) -> DeepLabState:
        return DeepLabState()

    def probabilities(self, frames: np.ndarray) -> np.ndarray:
        """(N, h, w) float32 person probabilities on the largest working size's grid (no smoothing)."""
        n = len(frames)
        sides = sorted(self.settings.deeplab_long_sides, reverse=True)
        total = self.logits(frames, sides[0])  # the largest working size: the others are resized to it
        h, w = total.shape[1:]
        for side in sides[1:]:
            small = self.logits(frames, side)
            for i in range(n):
                total[i] += cv2.resize(small[i], (w, h), interpolation=cv2.INTER_LINEAR)
        return _sigmoid(total * (1.0 / len(sides)))

    def smooth(self, prob: np.ndarray, state: DeepLabState | None) -> DeepLabState | None:
        """Blend each frame's probability map (in place) with the previous frame's blended map:
        ``p ← (1 − t)·p + t·p_prev`` with ``t = self.temporal`` (an exponential moving average over
        the job's frames, in order).  The previous map lives in ``state``, one per job (as RVM's
        recurrent state); it is dropped when the working grid changes.  ``state`` None: no memory."""
        if state is None or not self.temporal:
            return state
        t = float(self.temporal)
        for i in range(len(prob)):
            if state.prob is not None and state.prob.shape == prob[i].shape:
                prob[i] *= 1.0 - t
                prob[i] += t * state.prob
            state.prob = prob[i].copy()
        return state

    def _predict(self, frames: np.ndarray, state: Any, empty: Empty) -> tuple[Matte, Any]:
        n, height, width, _ = frames.shape
        prob = self.probabilities(frames)
        state = self.smooth(prob, state)
        alpha = empty((n, height, width), np.float32)
        for i in range(n):
            cv2.resize(prob[i], (width, height), dst=alpha[i], interpolation=cv2.INTER_LINEAR)
        np.clip(alpha, 0.0, 1.0, out=alpha)
        return Matte(alpha=alpha, foreground=None), state

"""DeepLabv3+ (MobileNetV2 backbone) person segmentation, trained in this project (``export/``).

ONNX contract (see ``export/export_onnx.py``): input ``image`` float32 (N, 3, H, W) RGB in [0, 1]
(mean/std normalisation is inside the graph), H and W multiples of 16; output ``logits``
(N, 1, H, W), person logits.  The fp16 variant (``deeplabv3plus_fp16.onnx``, used when
``settings.fp16`` is set and the file exists) takes and returns float16.

Per batch: the frames' long side is resized to ``LONG_SIDE`` (aspect kept, never upsampled past
it), zero-padded to a multiple of 16 (as in training), run once for the batch, sigmoid, cropped,
and the probability resized back to frame size: that is the alpha.  With
``settings.deeplab_flip_average`` (the default) each frame's mirror image runs in the same batch and
the two logit maps are averaged (flip test-time augmentation: val mIoU 0.880 → 0.887 for twice the
model's work, 127 → 67 frames/s at 256² on 2 CPU threads; model card).  It is a segmenter: the
alpha is soft only along edges; ``service.inference.refine.EdgeRefiner`` sharpens it against the frame.
No state across frames.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from service.errors import ModelNotFound
from service.inference.models.base import Matte, MattingModel
from service.inference.weights import locate

WEIGHTS = "deeplabv3plus.onnx"
WEIGHTS_FP16 = "deeplabv3plus_fp16.onnx"
LONG_SIDE = 320  # the validation working size of the training run (model card)
MULTIPLE = 16
FIX = "It ships in service/inference/weights (export/export_onnx.py makes it); or set BACKDROP_MODEL_DIR."


def working_size(height: int, width: int, long_side: int = LONG_SIDE) -> tuple[int, int]:
    """(h, w) the frame is resized to before padding: long side ``long_side``, aspect kept."""
    s = long_side / max(height, width)
    return max(1, round(height * s)), max(1, round(width * s))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 * (np.tanh(0.5 * x) + 1.0)).astype(np.float32, copy=False)


class DeepLabV3Plus(MattingModel):
    name = "deeplabv3plus"
    long_side = LONG_SIDE

    def _weights(self) -> Path:
        if self.settings.fp16:
            try:
                return locate(WEIGHTS_FP16, self.settings, fix=FIX)
            except ModelNotFound:
                pass
        return locate(WEIGHTS, self.settings, fix=FIX)

    def preprocess(self, frames: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """(N, 3, Hp, Wp) float32 in [0, 1], zero-padded to ×16, and the unpadded (h, w)."""
        n, height, width, _ = frames.shape
        h, w = working_size(height, width, self.long_side)
        hp, wp = -(-h // MULTIPLE) * MULTIPLE, -(-w // MULTIPLE) * MULTIPLE
        interp = cv2.INTER_AREA if max(height, width) > self.long_side else cv2.INTER_LINEAR
        batch = np.zeros((n, hp, wp, 3), np.float32)
        for i in range(n):
            small = frames[i] if (h, w) == (height, width) else cv2.resize(frames[i], (w, h), interpolation=interp)
            batch[i, :h, :w] = small
        batch *= 1.0 / 255.0
        return np.ascontiguousarray(batch.transpose(0, 3, 1, 2)), (h, w)

    def _predict(self, frames: np.ndarray, state: Any) -> tuple[Matte, Any]:
        n, height, width, _ = frames.shape
        x, (h, w) = self.preprocess(frames)
        inp = self.session.get_inputs()[0]
        if "float16" in inp.type:
            x = x.astype(np.float16)
        flip = self.settings.deeplab_flip_average
        if flip:
            x = np.concatenate([x, x[..., ::-1]])
        logits = self.session.run(None, {inp.name: x})[0].astype(np.float32, copy=False)
        if flip:
            # the mirror's padding sits on the left, so flipping its logits back lines them up with
            # the frame's (content at [0, w) in both)
            logits = 0.5 * (logits[:n] + logits[n:, ..., ::-1])
        prob = _sigmoid(logits[:, 0, :h, :w])
        alpha = np.empty((n, height, width), np.float32)
        for i in range(n):
            alpha[i] = cv2.resize(prob[i], (width, height), interpolation=cv2.INTER_LINEAR)
        np.clip(alpha, 0.0, 1.0, out=alpha)
        return Matte(alpha=alpha, foreground=None), state

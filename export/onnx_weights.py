"""Load a DeepLabv3+ ONNX export back into the PyTorch model, so that training can resume from it.

Why: the committed ``deeplabv3plus.onnx`` is the only artefact a later session is sure to have (the
training checkpoints live in the git-ignored ``runs/``).  Export folds each batch norm into the
convolution before it (weight scaled, a bias added), so the ONNX file holds one (weight, bias) pair
per convolution and no normalisation statistics.

The conversion has two steps:

1. ``load_onnx_weights``: each ``Conv`` node fills the ``nn.Conv2d`` its name points at (the
   TorchScript exporter names nodes by module path, ``/backbone/features.1/conv/conv.0/conv.0.0/Conv``
   → ``backbone.features.1.conv.0.0``; the graph's order is not the modules' order, onnxslim sorts it),
   every convolution filled exactly once, shapes checked; the batch norm after it is set to the
   identity plus the folded bias.  In eval mode the model then computes the ONNX graph's
   function exactly (tested).
2. ``recalibrate_batch_norms``: in train mode a batch norm divides by the *batch's* statistics, so an
   identity batch norm would change the function.  We measure each batch norm's input mean and variance
   over some training images (eval mode, so the measured net is the exported one) and set
   ``running_mean = μ``, ``running_var = σ²``, ``weight = sqrt(σ² + ε)``, ``bias = μ + b``: the same
   function in eval mode, and in train mode the batch normalises by statistics close to (μ, σ²), so
   training continues from the exported network instead of from a perturbed one.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn


def conv_bn_pairs(model: nn.Module) -> dict[str, tuple[nn.Conv2d, nn.BatchNorm2d | None]]:
    """Every Conv2d by module name, with the BatchNorm2d that directly follows it (None if none)."""
    modules = list(model.named_modules())
    pairs = {}
    for i, (name, m) in enumerate(modules):
        if isinstance(m, nn.Conv2d):
            nxt = modules[i + 1][1] if i + 1 < len(modules) else None
            pairs[name] = (m, nxt if isinstance(nxt, nn.BatchNorm2d) else None)
    return pairs


def module_name(node_name: str) -> str:
    """``/backbone/features.1/conv/conv.0/conv.0.0/Conv`` → ``backbone.features.1.conv.0.0``.

    Each scope segment is a child's name, where a Sequential's item repeats its parent's name
    (``conv`` → ``conv.0`` → ``conv.0.0``): such a segment replaces the one before it.
    """
    parts = [p for p in node_name.split("/") if p][:-1]
    if not parts:
        raise ValueError(f"Conv node {node_name!r} does not name its module")
    path: list[str] = []
    for seg in parts:
        if path and seg.startswith(path[-1] + "."):
            path[-1] = seg
        else:
            path.append(seg)
    return ".".join(path)


def onnx_convs(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """(weight, bias) of each Conv node, by the module name in the node's name."""
    graph = onnx.load(str(path)).graph
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    convs = {}
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        w = init.get(node.input[1])
        if w is None:
            raise ValueError(f"Conv node {node.name!r}: weight {node.input[1]!r} is not an initializer")
        b = init.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        name = module_name(node.name)
        if name in convs:
            raise ValueError(f"{path}: two Conv nodes name the module {name!r}")
        convs[name] = (w, b)
    return convs


@torch.no_grad()
def load_onnx_weights(model: nn.Module, path: Path) -> nn.Module:
    """Fill ``model`` (same architecture and config as the export) from the ONNX file at ``path``."""
    pairs = conv_bn_pairs(model)
    convs = onnx_convs(path)
    if set(pairs) != set(convs):
        missing, extra = sorted(set(pairs) - set(convs)), sorted(set(convs) - set(pairs))
        raise ValueError(f"{path}: convolutions missing from the graph {missing}, unknown to the model {extra}")
    for k, (conv, bn) in pairs.items():
        w, b = convs[k]
        if tuple(conv.weight.shape) != w.shape:
            raise ValueError(f"{path}: conv {k!r} has shape {w.shape}, the model's is {tuple(conv.weight.shape)}")
        bias = torch.zeros(w.shape[0]) if b is None else torch.from_numpy(b.astype(np.float32))
        if bn is not None:
            fill_folded(conv, bn, w, bias)
            continue
        conv.weight.copy_(torch.from_numpy(w.astype(np.float32)))
        if conv.bias is None:
            if b is not None and np.any(b != 0):
                raise ValueError(f"{path}: conv {k!r} has a bias the model cannot hold")
        else:
            conv.bias.copy_(bias)
    return model


@torch.no_grad()
def fill_folded(conv: nn.Conv2d, bn: nn.BatchNorm2d, weight: np.ndarray, bias: torch.Tensor) -> None:
    """``conv`` then ``bn`` made to compute a convolution whose batch norm was folded in (``weight``,
    ``bias``): the weight copied, the batch norm the identity plus the bias (eval mode; see
    ``recalibrate_batch_norms`` for train mode)."""
    conv.weight.copy_(torch.from_numpy(weight.astype(np.float32)))
    if conv.bias is not None:
        conv.bias.zero_()
    bn.running_mean.zero_()
    bn.running_var.fill_(1.0)
    bn.weight.fill_(float(np.sqrt(1.0 + bn.eps)))
    bn.bias.copy_(bias)


@torch.no_grad()
def recalibrate_batch_norms(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Re-express every batch norm with its measured input statistics (see the module docstring)."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    sums: dict[nn.Module, list[torch.Tensor]] = {
        bn: [torch.zeros(bn.num_features, dtype=torch.float64, device=bn.weight.device)] * 2 for bn in bns
    }
    counts = dict.fromkeys(bns, 0)

    def hook(bn, inputs, _output):
        x = inputs[0].double().transpose(0, 1).reshape(bn.num_features, -1)
        s, s2 = sums[bn]
        sums[bn] = [s + x.sum(1), s2 + (x * x).sum(1)]
        counts[bn] += x.shape[1]

    handles = [bn.register_forward_hook(hook) for bn in bns]
    was_training = model.training
    model.eval()
    try:
        for x in batches:
            model(x)
    finally:
        for h in handles:
            h.remove()
    model.train(was_training)
    for bn in bns:
        n = max(counts[bn], 1)
        mu = sums[bn][0] / n
        var = (sums[bn][1] / n - mu * mu).clamp_min(0.0)
        # current eval function: y = weight * (x - rm) / sqrt(rv + eps) + bias  →  y = a·x + c
        a = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        c = bn.bias.double() - a * bn.running_mean.double()
        std = torch.sqrt(var + bn.eps)
        bn.running_mean.copy_(mu.float())
        bn.running_var.copy_(var.float())
        bn.weight.copy_((a * std).float())
        bn.bias.copy_((a * mu + c).float())
    return model

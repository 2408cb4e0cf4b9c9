"""The harmoniser network (torch): a tiny CNN that predicts a global colour transform of the person.

Inputs at 128×128: ``image`` (N, 3, H, W) the composite in [0, 1] and ``mask`` (N, 1, H, W) the
person's alpha.  Output ``params`` (N, 15): a 3×3 matrix ``M`` (row-major, 9), offset ``b`` (3) and
per-channel log-gamma ``g`` (3), applied to RGB in [0, 1] as ``y = M · x^exp(g) + b``: the exact
inverse form of the edits it is trained to undo (gains, saturation, contrast, then gamma).
The last layer starts at zero, so the untrained net is the identity transform.
"""

from __future__ import annotations

import torch
from torch import nn

N_PARAMS = 15
SIZE = 128


def _masked_stats(x: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = m.sum(dim=(2, 3)) + 1e-3
    mean = (x * m).sum(dim=(2, 3)) / w
    var = ((x - mean[..., None, None]) ** 2 * m).sum(dim=(2, 3)) / w
    return mean, torch.sqrt(var + 1e-6)


class HarmonizeNet(nn.Module):
    def __init__(self, width: int = 16, hidden: int = 64):
        super().__init__()
        c1, c2, c3 = width, width * 2, width * 4
        self.features = nn.Sequential(
            nn.Conv2d(5, c1, 3, stride=2, padding=1), nn.ReLU(inplace=True),  # 64
            nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.ReLU(inplace=True),  # 32
            nn.Conv2d(c2, c3, 3, stride=2, padding=1), nn.ReLU(inplace=True),  # 16
            nn.Conv2d(c3, c3, 3, stride=2, padding=1), nn.ReLU(inplace=True),  # 8
        )
        self.pool = nn.AvgPool2d(16)
        n_in = 2 * c3 + 4 * 3 * 2  # pooled person/scene features + RGB and log-RGB mean/std of both
        self.head = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, N_PARAMS))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = torch.cat([image, mask, image.mean(dim=1, keepdim=True) * mask], dim=1)
        f = self.features(x)
        m = self.pool(mask)
        fp, _ = _masked_stats(f, m)
        fb, _ = _masked_stats(f, 1 - m)
        logi = torch.log(image + 1e-2)
        stats = []
        for t in (image, logi):
            stats += [*_masked_stats(t, mask), *_masked_stats(t, 1 - mask)]
        raw = self.head(torch.cat([fp, fb, *stats], dim=1))
        eye = torch.eye(3, dtype=raw.dtype, device=raw.device).reshape(1, 9)
        return torch.cat([eye + raw[:, :9], raw[:, 9:12], torch.tanh(raw[:, 12:15])], dim=1)


def apply_params(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """``x`` (N, 3, H, W) in [0, 1] → transformed, clipped to [0, 1]."""
    n = x.shape[0]
    M = params[:, :9].reshape(n, 3, 3)
    b = params[:, 9:12]
    g = torch.exp(params[:, 12:15])
    y = torch.clamp(x, 1e-4, 1.0) ** g[..., None, None]
    y = torch.einsum("nij,njhw->nihw", M, y) + b[..., None, None]
    return torch.clamp(y, 0.0, 1.0)

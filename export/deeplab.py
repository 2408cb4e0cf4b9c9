"""DeepLabv3+ with a MobileNetV2 backbone, written out (no torchvision, no pretrained weights).

* Backbone: MobileNetV2 (Sandler et al. 2018) — a stride-2 3×3 stem, then inverted residual blocks
  (1×1 expansion ×t, 3×3 depthwise, linear 1×1 projection without activation; the residual only
  where stride is 1 and the channel count does not change), BatchNorm + ReLU6, the standard
  (t, c, n, s) stage table, the first block without expansion (t = 1).  Output stride 16: the
  stride-2 of the 160-channel stage is dropped and that stage and the next are dilated (rate 2).
  The final 1×1 → 1280 conv of the classifier network is not used (as in DeepLab's MobileNet).
* ASPP (Chen et al. 2018): a 1×1 branch, three atrous 3×3 branches (rates 6, 12, 18 at OS 16;
  depthwise-separable as in the DeepLabv3+ paper), image pooling; concat → 1×1 projection.
* Decoder: the stride-4 low-level features → 1×1 conv to 48 ch, concat with the ×4-upsampled ASPP
  output, two 3×3 (separable) convs, a 1×1 to one person logit, bilinear upsample to input size.

Input: float32 (N, 3, H, W) RGB in [0, 1]; the ImageNet mean/std normalisation is part of the
module (so the exported ONNX needs none outside).  Output: float32 (N, 1, H, W) person logits.
H and W should be multiples of 16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# (expansion t, output channels c, repeats n, first stride s) — MobileNetV2 table 2.
STAGES = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def make_divisible(v: float, divisor: int = 8) -> int:
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new < 0.9 * v:
        new += divisor
    return new


def conv_bn(cin: int, cout: int, k: int = 1, stride: int = 1, dilation: int = 1, groups: int = 1, act: bool = True,
            same_pad: bool = False):
    """``same_pad``: a strided 3×3 conv pads TensorFlow's way (one row and column, bottom and right:
    "SAME" on the even sizes the network gets) instead of one on every side, so that weights
    trained in TensorFlow (``export.movenet_backbone``) see the pixels they were trained on."""
    pad = dilation * (k - 1) // 2
    layers: list[nn.Module] = []
    if same_pad and stride == 2 and k == 3:
        layers.append(nn.ZeroPad2d((0, 1, 0, 1)))
        pad = 0
    layers += [
        nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int, dilation: int = 1, same_pad: bool = False):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn(cin, hidden, 1))  # 1×1 expansion
        layers.append(conv_bn(hidden, hidden, 3, stride, dilation, groups=hidden, same_pad=same_pad))  # 3×3 depthwise
        layers.append(conv_bn(hidden, cout, 1, act=False))  # linear 1×1 projection
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """Returns (stride-4 low-level features, stride-16 high-level features)."""

    def __init__(self, width: float = 1.0, output_stride: int = 16, same_pad: bool = False):
        super().__init__()
        cin = make_divisible(32 * width)
        layers: list[nn.Module] = [conv_bn(3, cin, 3, 2, same_pad=same_pad)]
        stride, dilation = 2, 1
        self.low_index = 0
        for t, c, n, s in STAGES:
            cout = make_divisible(c * width)
            block_dilation = dilation  # first block of a stage keeps the previous dilation
            if s > 1 and stride >= output_stride:
                dilation *= s  # atrous convolution instead of striding
                s = 1
            else:
                stride *= s
            for i in range(n):
                d = block_dilation if i == 0 else dilation
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t, d, same_pad))
                cin = cout
            if stride == 4 and c == 24:
                self.low_index = len(layers)  # features[:low_index] → stride 4
        self.features = nn.Sequential(*layers)
        self.low_channels = make_divisible(24 * width)
        self.high_channels = cin

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.features[: self.low_index](x)
        high = self.features[self.low_index :](low)
        return low, high


class SeparableConv(nn.Sequential):
    """Depthwise (atrous) 3×3 + BN + ReLU, then pointwise 1×1 + BN + ReLU."""

    def __init__(self, cin: int, cout: int, dilation: int = 1):
        super().__init__(
            nn.Conv2d(cin, cin, 3, 1, dilation, dilation=dilation, groups=cin, bias=False),
            nn.BatchNorm2d(cin),
            nn.ReLU(inplace=True),
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


def _cbr(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ASPP(nn.Module):
    def __init__(self, cin: int, channels: int, rates: tuple[int, ...] = (6, 12, 18)):
        super().__init__()
        self.branches = nn.ModuleList([_cbr(cin, channels)] + [SeparableConv(cin, channels, r) for r in rates])
        self.pool = _cbr(cin, channels)
        self.project = nn.Sequential(_cbr(channels * (len(rates) + 2), channels), nn.Dropout(0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(x) for b in self.branches]
        p = self.pool(x.mean(dim=(2, 3), keepdim=True))
        outs.append(p.expand(-1, -1, x.shape[2], x.shape[3]))
        return self.project(torch.cat(outs, dim=1))


class DeepLabV3Plus(nn.Module):
    def __init__(self, width: float = 1.0, aspp_channels: int = 128, low_channels: int = 48, same_pad: bool = False):
        super().__init__()
        self.config = {"width": width, "aspp_channels": aspp_channels, "low_channels": low_channels}
        if same_pad:  # only when set, so that older checkpoints' configs stay as they were
            self.config["same_pad"] = True
        self.backbone = MobileNetV2(width, output_stride=16, same_pad=same_pad)
        self.aspp = ASPP(self.backbone.high_channels, aspp_channels)
        self.low = _cbr(self.backbone.low_channels, low_channels)
        self.decoder = nn.Sequential(
            SeparableConv(aspp_channels + low_channels, aspp_channels),
            SeparableConv(aspp_channels, aspp_channels),
        )
        self.head = nn.Conv2d(aspp_channels, 1, 1)
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)
        self._init()

    def _init(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.head.weight, std=0.01)
        # zero-init the last BN of each residual block: the block starts as identity
        for m in self.modules():
            if isinstance(m, InvertedResidual) and m.use_res:
                nn.init.zeros_(m.conv[-1][1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        x = (x - self.mean) / self.std
        low, high = self.backbone(x)
        y = self.aspp(high)
        y = F.interpolate(y, size=(low.shape[2], low.shape[3]), mode="bilinear", align_corners=False)
        y = self.decoder(torch.cat([y, self.low(low)], dim=1))
        y = self.head(y)
        return F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)


def build(config: dict | None = None) -> DeepLabV3Plus:
    return DeepLabV3Plus(**(config or {}))


if __name__ == "__main__":
    m = DeepLabV3Plus()
    n = sum(p.numel() for p in m.parameters())
    print(f"params {n / 1e6:.2f} M, ~{n * 4 / 1e6:.1f} MB fp32")
    print(m(torch.rand(2, 3, 256, 192)).shape)

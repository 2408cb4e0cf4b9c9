"""deeplabv3plus's MobileNetV2 started from MoveNet's (export/movenet_backbone.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from export.deeplab import DeepLabV3Plus  # noqa: E402
from export.movenet_backbone import DEFAULT_PATH, load_movenet_backbone  # noqa: E402
from export.train_deeplab import param_groups  # noqa: E402

#: MoveNet's 33rd convolution: block 13's projection, the last one at stride 16 (after it ours dilates
#: where MoveNet strides to 32, so the two stop being comparable)
_PROBE = 32


def _movenet_feature(image: np.ndarray) -> np.ndarray:
    model = onnx.load(str(DEFAULT_PATH))
    name = [n for n in model.graph.node if n.op_type == "Conv"][_PROBE].output[0]
    model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run([name], {"input": image[None].astype(np.int32)})[0]


def _our_feature(net: DeepLabV3Plus, image: np.ndarray) -> np.ndarray:
    bns = [m for m in net.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    seen: list[np.ndarray] = []
    hook = bns[_PROBE].register_forward_hook(lambda _m, _i, out: seen.append(out.numpy()))
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        net.eval().backbone((x - net.mean) / net.std)
    hook.remove()
    return seen[0]


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """A 256×256 RGB image with structure at several scales (MoveNet's features of noise are weak)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:256, 0:256] / 256
    base = np.stack([np.sin(6 * xx + 3 * yy), np.cos(9 * yy - 2 * xx), np.sin(4 * (xx * yy) * 8)], -1)
    return np.clip(127 + 90 * base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def test_backbone_computes_movenets_features(image):
    """Copied, folded into our normalisation and padded TensorFlow's way, the backbone gives MoveNet's
    own stride-16 features; with PyTorch's symmetric padding it would not (so the padding matters)."""
    ref = _movenet_feature(image)
    net = DeepLabV3Plus(width=1.5, aspp_channels=32, same_pad=True)
    assert load_movenet_backbone(net) == 51
    ours = _our_feature(net, image)
    assert ours.shape == ref.shape == (1, 144, 16, 16)
    rel = np.abs(ours - ref).mean() / np.abs(ref).mean()
    assert rel < 0.01, rel

    sym = DeepLabV3Plus(width=1.5, aspp_channels=32)
    load_movenet_backbone(sym)
    assert np.abs(_our_feature(sym, image) - ref).mean() / np.abs(ref).mean() > 0.1


def test_refuses_another_width():
    with pytest.raises(ValueError, match="width must be 1.5"):
        load_movenet_backbone(DeepLabV3Plus(width=1.0, aspp_channels=32, same_pad=True))


def test_param_groups_give_the_backbone_its_share():
    net = DeepLabV3Plus(width=0.35, aspp_channels=16)
    plain = param_groups(net, 0.01, 1.0)
    assert len(plain) == 2 and {g["lr_share"] for g in plain} == {1.0}
    split = param_groups(net, 0.01, 0.25)
    backbone = {id(p) for p in net.backbone.parameters()}
    for g in split:
        assert all((id(p) in backbone) == (g["lr_share"] == 0.25) for p in g["params"])
    assert sum(len(g["params"]) for g in split) == len(list(net.parameters()))

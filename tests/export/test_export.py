"""ONNX export of a small randomly initialised DeepLabv3+: dynamic H/W, shapes, parity, fp16."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from export.deeplab import DeepLabV3Plus  # noqa: E402
from export.export_onnx import INPUT, OPSET, OUTPUT, export, ort_session, run_onnx, to_fp16  # noqa: E402


@pytest.fixture(scope="module", params=[False, True], ids=["pad", "same_pad"])
def exported(tmp_path_factory, request):
    """``same_pad``: strided convolutions padded TensorFlow's way (a MoveNet-initialised network)."""
    torch.manual_seed(0)
    model = DeepLabV3Plus(width=0.35, aspp_channels=32, same_pad=request.param).eval()
    # non-trivial BN statistics and head, so parity compares real signal
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
        model.head.weight.normal_(0, 0.5)
    path = export(model, tmp_path_factory.mktemp("onnx") / "d.onnx", size=(96, 96))
    return model, path


def test_contract(exported):
    _, path = exported
    m = onnx.load(str(path))
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= OPSET
    (inp,), (out,) = m.graph.input, m.graph.output
    assert (inp.name, out.name) == (INPUT, OUTPUT)
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims[1] == 3 and all(isinstance(d, str) for d in (dims[0], dims[2], dims[3]))


@pytest.mark.parametrize("shape", [(1, 3, 64, 96), (2, 3, 128, 80)])
def test_two_sizes_parity(exported, shape):
    model, path = exported
    x = np.random.default_rng(1).random(shape, dtype=np.float32)
    got = run_onnx(ort_session(path, threads=1), x)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert got.shape == (shape[0], 1, shape[2], shape[3])
    assert np.abs(got - ref).max() < 1e-3 * max(1.0, np.abs(ref).max())
    assert np.abs(ref).max() > 0.05  # the comparison is not between two near-zero maps


def test_fp16(exported, tmp_path):
    model, path = exported
    half = to_fp16(path, tmp_path / "d16.onnx")
    assert half.stat().st_size < 0.6 * path.stat().st_size
    x = np.random.default_rng(2).random((1, 3, 64, 64), dtype=np.float32)
    got = run_onnx(ort_session(half, threads=1), x)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < 0.05 * max(1.0, np.abs(ref).max())


def test_onnx_weights_round_trip(exported):
    """An export loaded back into a fresh model computes the same function (eval mode), and after
    recalibrating its batch norms on images it still does, while train mode stays close to it."""
    from export.onnx_weights import load_onnx_weights, recalibrate_batch_norms

    model, path = exported
    torch.manual_seed(1)  # different random weights: the load must overwrite every one
    fresh = DeepLabV3Plus(**model.config)
    x = torch.from_numpy(np.random.default_rng(3).random((4, 3, 64, 96), dtype=np.float32))
    with torch.no_grad():
        ref = model(x).numpy()
        assert np.abs(fresh.eval()(x).numpy() - ref).max() > 0.05
        load_onnx_weights(fresh, path)
        assert np.abs(fresh.eval()(x).numpy() - ref).max() < 1e-3 * max(1.0, np.abs(ref).max())
        recalibrate_batch_norms(fresh, [x])
        assert np.abs(fresh.eval()(x).numpy() - ref).max() < 1e-3 * max(1.0, np.abs(ref).max())
        # train mode normalises by the batch's statistics, which here are the calibration statistics
        fresh.train()
        fresh.aspp.project[1].eval()  # (dropout off: it is the one intended difference of train mode)
        assert np.abs(fresh(x).numpy() - ref).max() < 1e-3 * max(1.0, np.abs(ref).max())


def test_onnx_weights_refuse_another_architecture(exported):
    from export.onnx_weights import load_onnx_weights

    model, path = exported
    with pytest.raises(ValueError, match="shape"):
        load_onnx_weights(DeepLabV3Plus(**{**model.config, "width": 0.5}), path)
    if model.config.get("same_pad"):  # the other padding puts the first convolutions elsewhere
        with pytest.raises(ValueError, match="missing"):
            load_onnx_weights(DeepLabV3Plus(width=0.35, aspp_channels=32), path)


def test_fp16_clips_weights_beyond_its_range(tmp_path):
    """A folded batch norm can give a dead channel a weight past float16's range (~6.6e4); cast, it
    would be inf and 0 × inf = NaN. The converter clips it, so a zero input stays a zero output."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.array([5e5, 2.0], np.float32).reshape(2, 1, 1, 1), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", [INPUT, "w"], [OUTPUT], group=2)],
        "dead_channel",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [1, 2, 4, 4])],
        [w],
    )
    src = tmp_path / "dead.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), str(src))
    x = np.zeros((1, 2, 4, 4), np.float32)
    x[0, 1] = 0.25
    got = run_onnx(ort_session(to_fp16(src, tmp_path / "dead16.onnx"), threads=1), x)
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got[0, 0], 0.0)
    np.testing.assert_allclose(got[0, 1], 0.5)

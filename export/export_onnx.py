"""Export the trained DeepLabv3+ to ONNX (fp32 and fp16), simplified with onnxslim, parity-checked.

ONNX contract (``deeplabv3plus.onnx``):

* input ``image``: float32 (N, 3, H, W), RGB, values in [0, 1] (no mean/std outside: the ImageNet
  normalisation is inside the graph).  N, H and W are dynamic; H and W must be multiples of 16
  (the service resizes the frame's long side to its working size and zero-pads to a multiple of 16).
* output ``logits``: float32 (N, 1, H, W), the person logit per pixel; ``sigmoid(logits)`` is the
  person probability.
* opset 17.  ``deeplabv3plus_fp16.onnx``: the same graph with fp16 weights and fp16 ``image`` /
  ``logits`` (for GPUs; the service casts).

    .venv/bin/python -m export.export_onnx --checkpoint runs/deeplab/best.pt \
        --out service/inference/weights/deeplabv3plus.onnx --fp16-out runs/deeplab/deeplabv3plus_fp16.onnx
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
import torch

from export.deeplab import DeepLabV3Plus

OPSET = 17
INPUT, OUTPUT = "image", "logits"


def load_checkpoint(path: Path) -> DeepLabV3Plus:
    ck = torch.load(path, map_location="cpu", weights_only=False)
    model = DeepLabV3Plus(**ck["config"])
    model.load_state_dict(ck["model"])
    return model.eval()


def export(model: torch.nn.Module, out: Path, *, opset: int = OPSET, size: tuple[int, int] = (256, 256)) -> Path:
    """Export with dynamic N, H, W and simplify with onnxslim; returns ``out``."""
    import onnxslim

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    dummy = torch.rand(1, 3, *size)
    tmp = out.with_suffix(".raw.onnx")
    with torch.no_grad():
        torch.onnx.export(
            model,
            (dummy,),
            str(tmp),
            dynamo=False,  # TorchScript exporter: no onnxscript needed
            opset_version=opset,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "N", 2: "H", 3: "W"}, OUTPUT: {0: "N", 2: "H", 3: "W"}},
            do_constant_folding=True,
        )
    slim = onnxslim.slim(onnx.load(str(tmp)))
    tmp.unlink()
    out_dims = slim.graph.output[0].type.tensor_type.shape.dim
    out_dims[1].Clear()
    out_dims[1].dim_value = 1
    slim.doc_string = "DeepLabv3+ MobileNetV2 person segmentation (Backdrop). image: float (N,3,H,W) RGB [0,1]; logits (N,1,H,W)."
    onnx.checker.check_model(slim)
    onnx.save(slim, str(out))
    return out


FP16_MAX = float(np.finfo(np.float16).max)


def to_fp16(src: Path, out: Path) -> Path:
    """fp16 weights and activations with fp16 ``image`` / ``logits``.

    A small converter of our own (onnxconverter-common is not a dependency): every float32
    initializer and Constant becomes float16, Casts to float32 cast to float16, the graph's float
    inputs/outputs become float16.  Safe for this graph: its Resize nodes take int64 ``sizes`` only.
    Weights beyond float16's range are clipped to it (not cast to inf): batch-norm folding gives a
    channel whose input is always zero (a dead ReLU6 channel, running variance ~0) a scale of
    gamma / sqrt(eps), ~5e5 in the stage-4 model; as inf it would turn 0 × inf into NaN.
    """
    from onnx import TensorProto, numpy_helper

    model = onnx.load(str(src))
    g = model.graph
    for node in g.node:
        if node.op_type == "Resize" and len(node.input) > 2 and node.input[2]:
            raise ValueError("Resize with float scales: not handled by this fp16 converter")
    for i, init in enumerate(g.initializer):
        if init.data_type == TensorProto.FLOAT:
            arr = np.clip(numpy_helper.to_array(init), -FP16_MAX, FP16_MAX).astype(np.float16)
            g.initializer[i].CopyFrom(numpy_helper.from_array(arr, init.name))
    for node in g.node:
        for attr in node.attribute:
            if node.op_type == "Constant" and attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float16), attr.t.name))
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16
    for v in list(g.input) + list(g.output):
        if v.type.tensor_type.elem_type == TensorProto.FLOAT:
            v.type.tensor_type.elem_type = TensorProto.FLOAT16
    del g.value_info[:]
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return out


def ort_session(path: Path, threads: int = 2):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def run_onnx(session, x: np.ndarray) -> np.ndarray:
    dtype = np.float16 if "float16" in session.get_inputs()[0].type else np.float32
    return session.run(None, {INPUT: x.astype(dtype)})[0].astype(np.float32)


def val_inputs(data_dir: Path, count: int = 8, long_side: int = 320) -> list[np.ndarray]:
    """A few real val images as model inputs (1, 3, H, W) float32 in [0, 1], padded to ×16."""
    import cv2

    from export.train_deeplab import _resize_long, pad16

    paths = sorted((data_dir / "portraits" / "val" / "images").glob("*.jpg"))
    step = max(1, len(paths) // count)
    out = []
    for p in paths[::step][:count]:
        img = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
        padded, _, _ = pad16(_resize_long(img, long_side))
        out.append(padded.transpose(2, 0, 1)[None].astype(np.float32) / 255.0)
    return out


def parity(model: torch.nn.Module, path: Path, inputs: list[np.ndarray]) -> dict:
    """Max abs difference of logits and of probabilities, ONNX vs PyTorch, over ``inputs`` (inf
    where the ONNX output is not finite: a NaN must not vanish from the max)."""
    sess = ort_session(path)
    dl, dp, agree = 0.0, 0.0, []
    with torch.no_grad():
        for x in inputs:
            ref = model(torch.from_numpy(x)).numpy()
            got = run_onnx(sess, x)
            assert got.shape == ref.shape, (got.shape, ref.shape)
            pr, pg = 1 / (1 + np.exp(-ref)), 1 / (1 + np.exp(-got))
            dl = max(dl, float(np.nan_to_num(np.abs(got - ref), nan=np.inf).max()))
            dp = max(dp, float(np.nan_to_num(np.abs(pg - pr), nan=np.inf).max()))
            agree.append(float(((pr > 0.5) == (pg > 0.5)).mean()))
    return {"max_abs_logit": dl, "max_abs_prob": dp, "mask_agreement": float(np.mean(agree))}


def main(argv=None) -> dict:
    from service.config import get_settings

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=Path("runs/deeplab/best.pt"))
    ap.add_argument("--out", type=Path, default=Path("service/inference/weights/deeplabv3plus.onnx"))
    ap.add_argument("--fp16-out", type=Path, default=Path("runs/deeplab/deeplabv3plus_fp16.onnx"))
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--parity-images", type=int, default=8)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    data_dir = args.data_dir or Path(get_settings().data_dir)
    model = load_checkpoint(args.checkpoint)
    export(model, args.out)
    to_fp16(args.out, args.fp16_out)
    inputs = val_inputs(data_dir, args.parity_images)
    report = {
        "fp32": {"file": str(args.out), "bytes": args.out.stat().st_size, **parity(model, args.out, inputs)},
        "fp16": {"file": str(args.fp16_out), "bytes": args.fp16_out.stat().st_size, **parity(model, args.fp16_out, inputs)},
        "inputs": [list(x.shape) for x in inputs],
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()

"""RVM's decoder in int8 on x86 CPUs with AVX2: the cut graph's recurrent decoder's 3x3 convolutions
quantised, per output channel, with activation scales from a calibration of ours.

On a 2-core Xeon with AVX-512 VNNI the cut graph at 320x180 takes 39 ms a frame on one thread; with
the decoder's 13 3x3 convolutions in int8 it takes 31 (-22 %), and mean DAVIS IoU moves from 0.7328
to 0.7324 (bench/pipeline.py).  Quantising the 1x1 convolutions after them too (the output
projection, the guided filter's) was slower and cost 0.002; the encoder as well (every
non-depthwise convolution) gains nothing more and moves single clips by up to 0.09 (the recurrent
state carries the error forward), per tensor instead of per channel likewise.  Without VNNI, AVX2
multiplies uint8 by int8 in pairs into 16-bit sums (``vpmaddubsw``): on a 2-core EPYC with AVX2 only
it took the network from 59 to 47 ms a frame on one thread, whole jobs 12-18 % less time, and DAVIS
IoU 0.7317 (float 0.7328).  Those 16-bit sums can saturate; weights quantised to 7 bits, which
cannot, gave the same mattes (mean |d alpha| 0.001 from the float graph either way), so the 8-bit
weights stay.  So ``rvm_int8`` is on by default wherever the CPU has AVX2 (``auto``); elsewhere
(older x86, ARM) the float graph runs, since no gain was measured there.

RVM's weights are GPL-3.0 and the quantised graph is derived from them, so it is not committed: it
is generated from the cut graph into ``engine_cache_dir`` on first use (about a second).  What is
committed is ours: ``weights/rvm_int8_scales.json``, the scale and zero point of each quantised
activation, measured by ``export/rvm_int8_calibrate.py`` on frames of the shared videos (desk,
walking-audio, talking-head; not the DAVIS clips the IoU above is measured on).  Generation runs
ONNX Runtime's static quantiser with those as ``TensorQuantOverrides`` (its own calibration pass sees
one blank frame and is overridden everywhere), then checks that every quantised activation got its
committed scale; anything else (no ``onnx`` package, another runtime's quantiser, another graph)
raises, and RVM runs the float cut graph with a warning.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from service.inference.rvm_lowres import cpu_flags

log = logging.getLogger(__name__)

SCALES = Path(__file__).resolve().parent / "weights" / "rvm_int8_scales.json"
#: the opset the quantised graph needs (per-channel DequantizeLinear); the cut graph is opset 12
OPSET = 13


def has_int8_kernels() -> bool:
    """Whether ONNX Runtime has wide int8 kernels on this CPU: AVX2 (``vpmaddubsw``), which every
    CPU with VNNI (AVX-512 VNNI or AVX-VNNI: int8 dot products in one instruction) also has."""
    return bool(cpu_flags() & {"avx2", "avx512_vnni", "avx_vnni"})


def int8_wanted(choice: str) -> bool:
    """``rvm_int8``: ``on``, ``off``, or ``auto`` (on where the CPU has AVX2)."""
    return choice == "on" or (choice == "auto" and has_int8_kernels())


def decoder_convs(model: Any) -> list[str]:
    """Names of the 3x3 non-depthwise convolutions from RVM's first recurrent block on (the recurrent
    blocks' gates and candidates, the upsampling blocks' and the output block's), in graph order.
    The 1x1 ones after them (the output projection and the guided filter's low-resolution part, on
    a few channels) stay in float: quantised they only cost time and accuracy."""
    names, decoder = [], False
    for node in model.graph.node:
        decoder = decoder or any(name in ("r4i", "r3i", "r2i", "r1i") for name in node.input)
        groups = next((a.i for a in node.attribute if a.name == "group"), 1)
        kernel = next((list(a.ints) for a in node.attribute if a.name == "kernel_shape"), [])
        if decoder and node.op_type == "Conv" and groups == 1 and kernel == [3, 3]:
            names.append(node.name)
    if not names:
        raise ValueError("no recurrent decoder found in the graph")
    return names


def quantize(
    cut: Path, target: Path, scales: dict[str, dict[str, float]] | None = None,
    feeds: list[dict[str, np.ndarray]] | None = None,
) -> dict[str, tuple[float, int]]:
    """Write ``cut`` with its decoder in int8 (QDQ, per output channel) to ``target``; return the
    scale and zero point of every quantised activation.  Either ``scales`` (the committed ones: they
    decide, and every quantised activation must have one) or ``feeds`` (frames with their recurrent
    states to calibrate on: ``export/rvm_int8_calibrate.py``)."""
    import onnx
    from onnx import numpy_helper, version_converter
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    model = onnx.load(str(cut))
    convs = decoder_convs(model)
    if feeds is None:  # the committed scales decide; the calibration pass only has to run
        shapes = {i.name: [d.dim_value or 1 for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
        shapes["src_sm"] = [1, 3, 64, 64]
        feeds = [{name: np.zeros(shape, np.float32) for name, shape in shapes.items()}]

    class Frames(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(feeds or [])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    overrides = {
        name: [{"scale": np.array(v["scale"], np.float32), "zero_point": np.array(v["zero_point"], np.uint8)}]
        for name, v in (scales or {}).items()
    }
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:  # renamed into place: concurrent workers see all or none
        source = Path(tmp) / "opset13.onnx"
        onnx.save(version_converter.convert_version(model, OPSET), str(source))
        out = Path(tmp) / "int8.onnx"
        quantize_static(
            str(source), str(out), Frames(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["Conv"],
            nodes_to_quantize=convs, calibrate_method=CalibrationMethod.MinMax,
            extra_options={"TensorQuantOverrides": overrides} if overrides else {},
        )
        quantized = onnx.load(str(out))
        init = {t.name: t for t in quantized.graph.initializer}
        got: dict[str, tuple[float, int]] = {}
        for node in quantized.graph.node:
            if node.op_type == "QuantizeLinear":
                scale = numpy_helper.to_array(init[node.input[1]])
                zero = numpy_helper.to_array(init[node.input[2]])
                # a graph output the quantiser renames (coef_a): keyed by the cut graph's own name
                got[node.input[0].removesuffix("_QuantizeLinear_Input")] = (float(scale), int(zero))
        if scales is not None:
            missing = sorted(set(got) - set(scales))
            if missing:
                raise ValueError(f"activations quantised without a committed scale: {missing[:5]}")
            ignored = [name for name, (scale, zero) in got.items()
                       if zero != scales[name]["zero_point"] or not np.isclose(scale, scales[name]["scale"], rtol=1e-6)]
            if ignored:  # a quantiser that calibrated on the blank frame instead
                raise ValueError(f"the quantiser did not take the committed scales of {ignored[:5]}")
        out.replace(target)
    return got


def int8_path(cut: Path) -> Path:
    """The int8 form of the cut graph ``cut``, made once beside it from the committed scales."""
    from service.inference.rvm_export import file_digest

    target = cut.with_name(f"{cut.stem}-int8-{file_digest(SCALES)}.onnx")
    if target.is_file():
        return target
    quantize(cut, target, json.loads(SCALES.read_text())["activations"])  # written whole or not at all (a rename)
    log.info("RVM's decoder quantised to int8: %s", target)
    return target


__all__ = ["SCALES", "decoder_convs", "has_int8_kernels", "int8_path", "int8_wanted", "quantize"]

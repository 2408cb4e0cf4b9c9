"""The device side of inference: which device a worker has, its sessions, and the small graphs that
keep frames on it.

A worker probes once (``probe_device``) whether onnxruntime offers the CUDA provider and logs what
it found.  With CUDA, sessions run with IO binding and every tensor between decode and encode stays
in device memory: the decoded YUV planes are turned into RVM's input by a tiny ONNX graph
(``yuv_to_src``), RVM's outputs and recurrent states stay on the device, and a second tiny graph
(``blend``) composites and converts back to the encoder's I420.  Only the finished I420 frame comes
back to the host, for the encoder.  Without CUDA, the same graphs and the same IO-binding code run on
the CPU provider (tested here); the numpy compositor stays the fallback of the ordinary pipeline.

TensorRT builds at fp16 (settings ``fp16``) with its engines and timing cache on disk
(``trt_cache_dir``); RVM goes to TensorRT only in its fixed-ratio form (``rvm_export``).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.config import Settings
from service.media.hwdecode import share_primary_context

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
TRT = "TensorrtExecutionProvider"
CPU = "CPUExecutionProvider"
OPSET = 17

#: RGB -> Y'CbCr, limited range (Y' 16..235, Cb/Cr 16..240), per matrix: rows Y, Cb, Cr.
MATRICES = {
    "bt601": (0.299, 0.114),
    "bt709": (0.2126, 0.0722),
    "bt2020": (0.2627, 0.0593),
}


def matrix_for(colorspace: int) -> str:
    """The matrix that turns a video's Y'CbCr into RGB, by its AVColorSpace (``VideoInfo.colorspace``):
    BT.709, BT.2020, else BT.601 as FFmpeg's own conversion takes an unnamed one."""
    return {1: "bt709", 9: "bt2020", 10: "bt2020"}.get(colorspace, "bt601")


def rgb_to_ycbcr(matrix: str) -> tuple[np.ndarray, np.ndarray]:
    """(3×3 matrix, offsets) taking RGB in 0..255 to limited-range Y'CbCr in 0..255."""
    kr, kb = MATRICES[matrix]
    kg = 1.0 - kr - kb
    full = np.array(
        [[kr, kg, kb],
         [-kr / (2 * (1 - kb)), -kg / (2 * (1 - kb)), 0.5],
         [0.5, -kg / (2 * (1 - kr)), -kb / (2 * (1 - kr))]], np.float64)
    scale = np.array([[219.0 / 255.0], [224.0 / 255.0], [224.0 / 255.0]])
    return (full * scale).astype(np.float32), np.array([16.0, 128.0, 128.0], np.float32)


@dataclass
class Device:
    """Where tensors live: ``cuda`` (device ``index``) or ``cpu``; the providers sessions ask for."""

    kind: str  # "cuda" or "cpu"
    index: int = 0
    providers: list[str] = field(default_factory=lambda: [CPU])

    @property
    def on_gpu(self) -> bool:
        return self.kind == "cuda"

    @property
    def tensorrt(self) -> bool:
        return TRT in self.providers


_probe_lock = threading.Lock()
_probed: dict[tuple[str, ...], Device] = {}


def probe_device(settings: Settings) -> Device:
    """The device this process runs its models on, probed once per provider list and logged: CUDA
    when the installed onnxruntime offers it and a session really gets it (the available list
    claims CUDA even when its libraries fail to load), else the CPU."""
    key = tuple(settings.providers)
    with _probe_lock:
        if key not in _probed:
            _probed[key] = _probe(settings)
        return _probed[key]


def _probe(settings: Settings) -> Device:
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = [p for p in settings.providers if p in available]
    if CUDA not in wanted:
        log.info("device: CPU (onnxruntime %s offers %s)", ort.__version__, available)
        return Device("cpu", providers=[CPU])
    prepare_cuda(settings.gpu_device)
    try:
        session = ort.InferenceSession(
            identity_graph().SerializeToString(), providers=[(CUDA, {"device_id": settings.gpu_device})]
        )
        got = session.get_providers()
    except Exception as exc:  # noqa: BLE001 - any failure means no usable CUDA
        log.warning("device: CUDA offered but unusable (%s); running on the CPU", exc)
        return Device("cpu", providers=[CPU])
    if CUDA not in got:
        log.warning("device: CUDA offered but a session got %s; running on the CPU", got)
        return Device("cpu", providers=[CPU])
    providers = [CUDA, CPU]
    if TRT in wanted:
        if _tensorrt_loads(settings):
            providers.insert(0, TRT)
        else:  # onnxruntime-gpu lists TensorRT whether or not its libraries (libnvinfer) are installed
            log.info("device: TensorRT offered but a session did not get it (its libraries?); CUDA without it")
    log.info("device: cuda:%d, providers %s (onnxruntime %s)", settings.gpu_device, providers, ort.__version__)
    return Device("cuda", settings.gpu_device, providers)


_prepared: set[int] = set()
_preloaded = threading.Event()
_prepare_lock = threading.Lock()


def prepare_cuda(device_index: int) -> None:
    """What a process does once before its first CUDA session on ``device_index``: load CUDA and
    cuDNN from the nvidia-* wheels where onnxruntime-gpu's ``[cuda,cudnn]`` extras installed them
    (the GPU worker image has no other CUDA), and give CUDA's primary context the flags NVDEC's
    frames need (``hwdecode.share_primary_context``) before a session makes it active."""
    with _prepare_lock:
        if device_index in _prepared:
            return
        _prepared.add(device_index)
        import onnxruntime as ort

        if not _preloaded.is_set() and hasattr(ort, "preload_dlls"):  # once a process
            _preloaded.set()
            try:  # onnxruntime-gpu >= 1.21
                ort.preload_dlls()
            except Exception as exc:  # noqa: BLE001 - the system's libraries may still do
                log.info("device: preload_dlls failed (%s)", exc)
        share_primary_context(device_index)


def _tensorrt_loads(settings: Settings) -> bool:
    """Whether a session really gets the TensorRT provider: onnxruntime logs and drops a provider
    whose libraries do not load, so the session's own list is the answer."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(identity_graph().SerializeToString(), providers=[
            (TRT, {"device_id": settings.gpu_device}), (CUDA, {"device_id": settings.gpu_device})])
        return TRT in session.get_providers()
    except Exception as exc:  # noqa: BLE001 - any failure means no TensorRT
        log.info("device: TensorRT unusable (%s)", str(exc)[:200])
        return False


def provider_options(device: Device, settings: Settings, *, tensorrt: bool) -> list[Any]:
    """The providers with their options for one session (TensorRT only when ``tensorrt``)."""
    if CUDA in device.providers or TRT in device.providers:
        prepare_cuda(device.index)
    out: list[Any] = []
    for name in device.providers:
        if name == TRT:
            if not tensorrt:
                continue
            cache = str(trt_cache_dir(settings))
            out.append((TRT, {
                "device_id": device.index,
                "trt_fp16_enable": "True" if settings.fp16 else "False",
                "trt_engine_cache_enable": "True",
                "trt_engine_cache_path": cache,
                "trt_timing_cache_enable": "True",
                "trt_timing_cache_path": cache,
                "trt_max_workspace_size": str(4 * 1024**3),
                "trt_builder_optimization_level": "3",
            }))
        elif name == CUDA:
            # cuDNN's exhaustive algorithm search (the default) pays once per shape: shapes are fixed here
            out.append((CUDA, {"device_id": device.index}))
        else:
            out.append(name)
    return out


def trt_cache_dir(settings: Settings) -> Path:
    path = Path(settings.engine_cache_dir) / "tensorrt"
    path.mkdir(parents=True, exist_ok=True)
    return path


def device_session(model: Any, device: Device, settings: Settings, *, tensorrt: bool = False) -> Any:
    """An ``onnxruntime.InferenceSession`` on ``device`` for ``model`` (a path or serialised bytes);
    the providers it really got are logged."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if not device.on_gpu:
        if settings.intra_op_threads:
            opts.intra_op_num_threads = settings.intra_op_threads
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if settings.onnx_spinning else "0")
    source = str(model) if isinstance(model, Path) else model
    session = ort.InferenceSession(source, sess_options=opts,
                                   providers=provider_options(device, settings, tensorrt=tensorrt))
    name = model.name if isinstance(model, Path) else "graph"
    log.info("device session %s on %s: %s", name, device.kind, session.get_providers())
    return session


# --- the small graphs ---------------------------------------------------------------------------


def identity_graph() -> Any:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # readable by onnxruntime >= 1.14
    return model


class _G:
    """A few helpers around ``onnx.helper`` for writing small graphs by hand."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._n = 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def const(self, value: Any, dtype: Any = np.int64) -> str:
        from onnx import numpy_helper

        name = self.name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], **attrs: Any) -> str:
        from onnx import helper

        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def crop(self, plane: str, width: int) -> str:
        """``plane[:, :width]`` (rows keep their pitch until here)."""
        return self.op("Slice", [plane, self.const([0]), self.const([width]), self.const([1])])

    def model(self, inputs: list[Any], outputs: list[Any], out_names: dict[str, str], name: str) -> Any:
        from onnx import helper

        for final, inner in out_names.items():
            self.nodes.append(helper.make_node("Identity", [inner], [final]))
        graph = helper.make_graph(self.nodes, name, inputs, outputs, initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = 8  # readable by onnxruntime >= 1.14
        return model


def yuv_to_src(layout: str, height: int, width: int, matrix: str = "bt601") -> Any:
    """A graph from a decoded 4:2:0 frame to RVM's ``src`` (1, 3, H, W) float RGB in [0, 1].

    ``layout`` ``i420``: inputs ``y`` (H, pitch), ``u`` and ``v`` (H/2, pitch) uint8, the planes of a
    software decoder's yuv420p frame as they lie in memory; ``nv12``: ``y`` and ``uv`` (H/2, pitch)
    with Cb and Cr interleaved, as NVDEC gives them.  Rows are cropped to the width inside the graph, so
    pitched device memory binds without a copy.  Chroma is repeated 2×2, Y'CbCr limited range."""
    from onnx import TensorProto, helper

    if height % 2 or width % 2:
        raise ValueError("4:2:0 frames need an even width and height")
    g = _G()
    u8 = TensorProto.UINT8
    names = ["y", "u", "v"] if layout == "i420" else ["y", "uv"]
    inputs = [helper.make_tensor_value_info(n, u8, [height if n == "y" else height // 2, f"pitch_{n}"])
              for n in names]
    y = g.op("Cast", [g.crop("y", width)], to=TensorProto.FLOAT)
    hh, hw = height // 2, width // 2
    if layout == "i420":
        cb = g.op("Cast", [g.crop("u", hw)], to=TensorProto.FLOAT)
        cr = g.op("Cast", [g.crop("v", hw)], to=TensorProto.FLOAT)
        chroma = g.op("Concat", [g.op("Unsqueeze", [cb, g.const([0])]), g.op("Unsqueeze", [cr, g.const([0])])],
                      axis=0)  # (2, H/2, W/2)
    elif layout == "nv12":
        uv = g.op("Reshape", [g.crop("uv", width), g.const([hh, hw, 2])])
        chroma = g.op("Transpose", [g.op("Cast", [uv], to=TensorProto.FLOAT)], perm=[2, 0, 1])
    else:
        raise ValueError(f"unknown layout {layout!r}")
    # 2×2 repeat: (2, H/2, 1, W/2, 1) -> expand -> (2, H, W)
    up = g.op("Reshape", [chroma, g.const([2, hh, 1, hw, 1])])
    up = g.op("Expand", [up, g.const([2, hh, 2, hw, 2])])
    up = g.op("Reshape", [up, g.const([2, height, width])])
    ycc = g.op("Concat", [g.op("Unsqueeze", [y, g.const([0])]), up], axis=0)  # (3, H, W)
    m, off = rgb_to_ycbcr(matrix)
    inv = np.linalg.inv(m.astype(np.float64))
    # rgb/255 = inv · (ycc − off) / 255, as a 1×1 convolution (weights (3, 3, 1, 1))
    w = (inv / 255.0).astype(np.float32).reshape(3, 3, 1, 1)
    b = (-(inv @ off.astype(np.float64)) / 255.0).astype(np.float32)
    x = g.op("Unsqueeze", [ycc, g.const([0])])
    rgb = g.op("Conv", [x, g.const(w, np.float32), g.const(b, np.float32)])
    src = g.op("Clip", [rgb, g.const(0.0, np.float32), g.const(1.0, np.float32)])
    out = helper.make_tensor_value_info("src", TensorProto.FLOAT, [1, 3, height, width])
    return g.model(inputs, [out], {"src": src}, f"{layout}_to_src")


def blend(height: int, width: int, output: str = "i420", matrix: str = "bt601") -> Any:
    """A graph compositing RVM's outputs on a background: inputs ``fgr`` (1, 3, H, W) and ``pha``
    (1, 1, H, W) float in [0, 1], ``bg`` (H, W, 3) uint8 RGB; ``out = pha·fgr + (1 − pha)·bg`` in
    0..255, rounded.  ``output`` ``rgb``: ``frame`` (H, W, 3) uint8 (the numpy compositor's result);
    ``i420``: ``frame`` (H·3/2, W) uint8, the planes of a yuv420p frame one after another (chroma the
    2×2 mean, limited range), ready for the encoder with no conversion on the host."""
    from onnx import TensorProto, helper

    g = _G()
    f32 = TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info("fgr", f32, [1, 3, height, width]),
        helper.make_tensor_value_info("pha", f32, [1, 1, height, width]),
        helper.make_tensor_value_info("bg", TensorProto.UINT8, [height, width, 3]),
    ]
    bg = g.op("Transpose", [g.op("Cast", ["bg"], to=f32)], perm=[2, 0, 1])
    bg = g.op("Unsqueeze", [bg, g.const([0])])  # (1, 3, H, W) 0..255
    fg = g.op("Mul", ["fgr", g.const(255.0, np.float32)])
    # bg + pha·(fg − bg)
    mixed = g.op("Add", [bg, g.op("Mul", ["pha", g.op("Sub", [fg, bg])])])
    if output == "rgb":
        rgb = g.op("Transpose", [g.op("Squeeze", [mixed, g.const([0])])], perm=[1, 2, 0])
        frame = _to_u8(g, rgb)
        out = helper.make_tensor_value_info("frame", TensorProto.UINT8, [height, width, 3])
        return g.model(inputs, [out], {"frame": frame}, "blend_rgb")
    if output != "i420":
        raise ValueError(f"unknown output {output!r}")
    if height % 2 or width % 2:
        raise ValueError("4:2:0 frames need an even width and height")
    m, off = rgb_to_ycbcr(matrix)
    luma = g.op("Conv", [mixed, g.const(m[:1].reshape(1, 3, 1, 1), np.float32), g.const(off[:1], np.float32)])
    pooled = g.op("AveragePool", [mixed], kernel_shape=[2, 2], strides=[2, 2])
    chroma = g.op("Conv", [pooled, g.const(m[1:].reshape(2, 3, 1, 1), np.float32), g.const(off[1:], np.float32)])
    flat = g.op("Concat", [g.op("Reshape", [luma, g.const([-1])]), g.op("Reshape", [chroma, g.const([-1])])], axis=0)
    frame = g.op("Reshape", [_to_u8(g, flat), g.const([height * 3 // 2, width])])
    out = helper.make_tensor_value_info("frame", TensorProto.UINT8, [height * 3 // 2, width])
    return g.model(inputs, [out], {"frame": frame}, "blend_i420")


def matte(height: int, width: int) -> Any:
    """A graph from RVM's ``pha`` (1, 1, H, W) float to the matte output's I420 frame (H·3/2, W)
    uint8: the alpha rounded to 8 bits as grey (Y' = 16 + 219·a/255, limited range), chroma neutral."""
    from onnx import TensorProto, helper

    if height % 2 or width % 2:
        raise ValueError("4:2:0 frames need an even width and height")
    g = _G()
    inputs = [helper.make_tensor_value_info("pha", TensorProto.FLOAT, [1, 1, height, width])]
    a8 = g.op("Cast", [_to_u8(g, g.op("Mul", ["pha", g.const(255.0, np.float32)]))], to=TensorProto.FLOAT)
    luma = g.op("Add", [g.op("Mul", [a8, g.const(219.0 / 255.0, np.float32)]), g.const(16.0, np.float32)])
    luma = g.op("Cast", [_to_u8(g, g.op("Reshape", [luma, g.const([height, width])]))], to=TensorProto.UINT8)
    chroma = g.const(np.full((height // 2, width), 128, np.uint8), np.uint8)  # Cb then Cr, W/2 each a row pair
    frame = g.op("Concat", [luma, chroma], axis=0)
    out = helper.make_tensor_value_info("frame", TensorProto.UINT8, [height * 3 // 2, width])
    return g.model(inputs, [out], {"frame": frame}, "matte_i420")


def _to_u8(g: _G, x: str) -> str:
    from onnx import TensorProto

    rounded = g.op("Floor", [g.op("Add", [x, g.const(0.5, np.float32)])])
    clipped = g.op("Clip", [rounded, g.const(0.0, np.float32), g.const(255.0, np.float32)])
    return g.op("Cast", [clipped], to=TensorProto.UINT8)

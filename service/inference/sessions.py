"""How an ONNX Runtime session is made: in one place, for every model.

Providers come from an ordered preference list (settings) intersected with what the installed
onnxruntime offers; the providers the session really got are read back and logged, because the
available list lies when CUDA or TensorRT libraries are missing at load time.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from service.config import Settings, get_settings

log = logging.getLogger(__name__)


class Session(Protocol):
    """The part of ``onnxruntime.InferenceSession`` the models use (a test may hand in its own)."""

    def run(self, output_names: Sequence[str] | None, input_feed: dict[str, Any]) -> list[Any]: ...

    def get_inputs(self) -> list[Any]: ...

    def get_outputs(self) -> list[Any]: ...

    def get_providers(self) -> list[str]: ...


def choose_providers(preferred: Sequence[str], available: Sequence[str]) -> list[str]:
    """The preferred providers that are installed, in preference order; CPU always last resort."""
    chosen = [p for p in preferred if p in available]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def gpu_options(providers: list[str], settings: Settings) -> list[Any]:
    """``providers`` with the options the GPU ones take (device, TensorRT engine cache, fp16)."""
    if not any(p in providers for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider")):
        return list(providers)
    from service.inference.gpu import Device, provider_options

    return provider_options(Device("cuda", settings.gpu_device, list(providers)), settings, tensorrt=True)


def _dynamic_ratio(path: Path) -> bool:
    """Whether the ONNX file takes RVM's ``downsample_ratio`` as an input (a parse of the file, once per session)."""
    try:
        import onnx

        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # noqa: BLE001 - no onnx package, or not a file onnx reads: let onnxruntime say
        return False
    return any(i.name == "downsample_ratio" for i in graph.input)


def create_session(path: Path, settings: Settings | None = None) -> Session:
    """An inference session for the ONNX file at ``path`` with the configured providers/threads."""
    import onnxruntime as ort

    settings = settings or get_settings()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if settings.intra_op_threads:
        opts.intra_op_num_threads = settings.intra_op_threads
    opts.inter_op_num_threads = settings.inter_op_threads
    # Spinning threads hold both cores of a small machine while the pipeline's decode and encode
    # threads wait for them; yielding costs a little latency per op and buys overall throughput.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if settings.onnx_spinning else "0")
    opts.log_severity_level = 3
    providers = choose_providers(settings.providers, ort.get_available_providers())
    if "TensorrtExecutionProvider" in providers and _dynamic_ratio(path):
        # RVM's published graph: TensorRT fails on its ratio input when it builds at the first run
        # (RVM issues #219, #202); the device path runs RVM's fixed-ratio variant in TensorRT instead
        providers = [p for p in providers if p != "TensorrtExecutionProvider"]
    try:
        # TensorRT with its engine cache and fp16, CUDA on the configured device (service.inference.gpu)
        session = ort.InferenceSession(str(path), sess_options=opts, providers=gpu_options(providers, settings))
    except Exception as exc:  # noqa: BLE001 - a TensorRT build that fails (RVM's dynamic ratio) falls back
        if "TensorrtExecutionProvider" not in providers:
            raise
        log.warning("onnx session %s: TensorRT failed (%s); without it", path.name, str(exc)[:300])
        providers = [p for p in providers if p != "TensorrtExecutionProvider"]
        session = ort.InferenceSession(str(path), sess_options=opts, providers=gpu_options(providers, settings))
    got = session.get_providers()
    log.info("onnx session %s: asked %s, got %s", path.name, providers, got)
    if providers[0] not in got:
        log.warning("onnx session %s fell back from %s to %s", path.name, providers[0], got[0])
    return session

"""The matting-model contract every model family implements.

A model is made once per process (``load()`` is lazy and lock-guarded) and is stateless across
jobs: per-job memory (RVM's recurrent state) lives in the ``state`` object the caller passes back in.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.array_pool import Empty
from service.config import Settings, get_settings
from service.inference.sessions import Session, create_session


@dataclass
class Matte:
    """Model output for a batch of N frames of H×W."""

    alpha: np.ndarray  # float32 (N, H, W) in [0, 1]
    foreground: np.ndarray | None = None  # uint8 (N, H, W, 3) RGB, where the model predicts one


class MattingModel:
    """Template: subclasses write ``_weights()``, ``_predict()`` and optionally ``new_state()``."""

    name: str = ""
    # Whether the guided-filter edge correction (service.inference.refine) runs after this model when
    # neither the job nor the settings say: on where it pays for its cost (bench/eval_segmentation.py).
    refine_by_default: bool = True

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or get_settings()
        self._session: Session | None = None
        self._lock = threading.Lock()

    # -- public ------------------------------------------------------------------------------
    def load(self) -> Session:
        """Build the ONNX session once; safe to call from several threads."""
        if self._session is None:
            with self._lock:
                if self._session is None:
                    self._session = create_session(self._session_file(), self.settings)
        return self._session

    @property
    def weights_path(self) -> Path:
        """The ONNX file this model runs (benchmarks open their own sessions on it)."""
        return self._weights()

    @property
    def providers(self) -> list[str]:
        return self.load().get_providers()

    @property
    def on_cpu(self) -> bool:
        """Whether this model runs on the CPU provider, without loading it to find out: a session not
        made yet is judged by the providers the settings prefer (one whose GPU provider then fails
        to start falls back to the CPU, which only a loaded model shows)."""
        if self._session is not None:
            return self._session.get_providers()[0] == "CPUExecutionProvider"
        return cpu_first(self.settings.providers)

    def new_state(self) -> Any:
        """Per-job state (``None`` for models without memory)."""
        return None

    def predict(self, frames: np.ndarray, state: Any = None, *, empty: Empty = np.empty) -> tuple[Matte, Any]:
        """``frames``: uint8 (N, H, W, 3) RGB.  Returns the matte at frame size and the next state;
        its full-size arrays are made by ``empty`` (a job's ``ArrayPool``)."""
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 (N, H, W, 3), got {frames.dtype} {frames.shape}")
        self.load()
        return self._predict(frames, state, empty)

    __call__ = predict

    # -- for subclasses -----------------------------------------------------------------------
    def _weights(self) -> Path:
        raise NotImplementedError

    def _predict(self, frames: np.ndarray, state: Any, empty: Empty) -> tuple[Matte, Any]:
        raise NotImplementedError

    def _session_file(self) -> Path:
        """The ONNX file the session runs: the weights, or a variant derived from them."""
        return self._weights()

    @property
    def session(self) -> Session:
        return self.load()


def cpu_first(preferred: list[str]) -> bool:
    """Whether sessions made with these preferences run on the CPU provider."""
    import onnxruntime as ort

    from service.inference.sessions import choose_providers

    return choose_providers(preferred, ort.get_available_providers())[0] == "CPUExecutionProvider"

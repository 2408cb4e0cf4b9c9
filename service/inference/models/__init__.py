"""One explicit factory: a model name maps to its class; an unknown name raises."""

from __future__ import annotations

import threading
from enum import StrEnum

from service.config import Settings, get_settings
from service.errors import UnknownModel
from service.inference.models.base import Matte, MattingModel


class ModelName(StrEnum):
    RVM = "rvm"
    DEEPLABV3PLUS = "deeplabv3plus"


def model_class(name: str) -> type[MattingModel]:
    try:
        key = ModelName(name)
    except ValueError:
        known = ", ".join(m.value for m in ModelName)
        raise UnknownModel(f"unknown model {name!r}; choose one of: {known}") from None
    if key is ModelName.RVM:
        from service.inference.models.rvm import RVM

        return RVM
    from service.inference.models.deeplab import DeepLabV3Plus

    return DeepLabV3Plus


def create_model(name: str, settings: Settings | None = None) -> MattingModel:
    return model_class(name)(settings)


_cache: dict[tuple[str, int | None], MattingModel] = {}
_cache_lock = threading.Lock()


def get_model(
    name: str, settings: Settings | None = None, threads: int | None = None, *, load: bool = True
) -> MattingModel:
    """The process-wide instance of a model, loaded once (workers and the CLI share it); with
    ``threads``, the instance whose session uses that many intra-op threads a call (the parts of
    ``service.segments`` call it side by side).  ``load=False``: its session is made on first use
    (a job run in parts never uses the default one)."""
    key = model_class(name)  # raises UnknownModel first
    with _cache_lock:
        model = _cache.get((name, threads))
        if model is None:
            if threads is not None:
                settings = (settings or get_settings()).model_copy(update={"intra_op_threads": threads})
            model = _cache[(name, threads)] = key(settings)
    if load:
        model.load()
    return model


__all__ = ["Matte", "MattingModel", "ModelName", "create_model", "get_model", "model_class"]

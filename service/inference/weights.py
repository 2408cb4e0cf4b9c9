"""Where model weights are found: a folder from settings first, then the file a package ships.

Nothing is ever downloaded.  A missing file raises ``ModelNotFound`` with the fix in its message.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from service.config import Settings
from service.errors import ModelNotFound

PACKAGED = resources.files("service.inference") / "weights"


def locate(filename: str, settings: Settings, *, package: str | None = None, fix: str = "") -> Path:
    """Path of ``filename``: ``settings.model_dir`` / ours under ``service/inference/weights`` / ``package``."""
    candidates: list[Path] = []
    if settings.model_dir is not None:
        candidates.append(Path(settings.model_dir) / filename)
    candidates.append(Path(str(PACKAGED / filename)))
    if package is not None:
        try:
            candidates.append(Path(str(resources.files(package) / filename)))
        except ModuleNotFoundError:
            pass
    for path in candidates:
        if path.is_file():
            return path
    where = ", ".join(str(p) for p in candidates)
    raise ModelNotFound(f"model file {filename} not found (looked in: {where}). {fix}".strip())

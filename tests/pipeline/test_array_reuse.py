"""A job's full-size arrays (the batch of frames and a background made for it, the matte, the
foreground, the output and the compositor's work array) come from its ``ArrayPool`` and are used
again batch after batch, and the video it writes is the same, byte for byte, as a job that makes
every array afresh: no array is overwritten while a queue or a stage still holds it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import data_path

from service import pipeline
from service.array_pool import ArrayPool
from service.config import get_settings
from service.pipeline import ReplaceOptions, replace_background

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from chunkclip import build_clip  # noqa: E402


class _CountingPool(ArrayPool):
    pools: list[_CountingPool] = []

    def __init__(self, max_bytes: int) -> None:
        super().__init__(max_bytes)
        self.asked = 0
        _CountingPool.pools.append(self)

    def empty(self, shape: tuple[int, ...], dtype: Any = np.uint8) -> np.ndarray:
        self.asked += 1
        return super().empty(shape, dtype)


@pytest.mark.parametrize("fmt,options,parts,background", [
    ("mp4", {}, 1, "backgrounds/bg_1.jpg"),
    ("mov", {}, 1, None),
    ("mp4", {"model": "deeplabv3plus", "composite": "poisson"}, 1, "backgrounds/bg_1.jpg"),
    ("mp4", {"harmonize": 0.7}, 1, "blur"),
    ("mp4", {"people": "largest", "edge_refine": True}, 1, "videos/walking-sideways.mp4"),  # the selected alpha
    ("mp4", {}, 2, "videos/desk.mp4"),  # side by side (service.segments), a pool each
])
def test_a_job_reuses_its_arrays_and_writes_the_same_video(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, options: dict[str, Any], parts: int,
    background: str | None,
) -> None:
    seconds = 2 if parts == 1 else 5  # two parts of 640-wide frames need 112 frames
    # people=largest needs a person on the first frame: desk.mp4 has one, walking-sideways.mp4 not yet
    source = "desk.mp4" if "people" in options else "walking-sideways.mp4"
    clip = build_clip(data_path("videos", source), tmp_path / "clip.mp4", seconds, 640, audio=False)
    settings = get_settings().model_copy(update={"segments": parts, "batch_size": 2, "queue_depth": 2})
    job = ReplaceOptions(output_format=fmt, **options)  # type: ignore[arg-type]
    if background is not None and "/" in background:
        background = str(data_path(*background.split("/")))

    monkeypatch.setattr(pipeline, "ArrayPool", lambda max_bytes: _CountingPool(0))  # makes every array afresh
    replace_background(clip, background, tmp_path / f"fresh.{fmt}", job, settings=settings)
    monkeypatch.setattr(pipeline, "ArrayPool", _CountingPool)
    _CountingPool.pools.clear()
    result = replace_background(clip, background, tmp_path / f"reused.{fmt}", job, settings=settings)

    assert len(_CountingPool.pools) == parts
    assert result.frames >= 40 * parts
    pools = _CountingPool.pools
    assert sum(p.asked for p in pools) >= 3 * (result.frames // 2)  # at least frames, matte and output for each batch
    assert all(p.made <= p.asked // 3 for p in pools)
    assert (tmp_path / f"reused.{fmt}").read_bytes() == (tmp_path / f"fresh.{fmt}").read_bytes()

"""Backgrounds made into a job's reused arrays (``frames(..., empty=pool.empty)``): a looping
background video and a blur give the same pictures as when every array is made afresh, batch after
batch, while earlier batches are still held (as the pipeline's queues hold them)."""

from __future__ import annotations

from collections import deque
from pathlib import Path

import av
import numpy as np
from conftest import data_path

from service.array_pool import ArrayPool
from service.media.background import BlurBackground, cover, open_background

WIDTH, HEIGHT = 200, 150  # the output: another aspect than the background's, so cover crops


def _short_background(path: Path, frames: int = 12, fps: int = 8) -> Path:
    """``frames`` frames of a real video at 320x180, ``fps`` a second (1.5 s: a job loops it)."""
    with av.open(str(data_path("videos", "desk.mp4"))) as src, av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 320, 180, "yuv420p"
        for n, frame in enumerate(src.decode(video=0)):
            if n == 4 * frames:
                break
            if n % 4 == 0:  # frames apart in time, so each differs from the last
                out.mux(stream.encode(frame.reformat(width=320, height=180, format="yuv420p")))
        out.mux(stream.encode(None))
    return path


def test_a_looping_background_video_in_reused_arrays(tmp_path: Path) -> None:
    path = _short_background(tmp_path / "bg.mp4")
    with av.open(str(path)) as c:
        decoded = [(float(f.time), f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
    source = open_background(str(path), WIDTH, HEIGHT)
    pool = ArrayPool(max_bytes=1 << 30)
    held: deque[np.ndarray] = deque(maxlen=3)  # the batches the queues and stages still hold
    try:
        times = [k / 25 for k in range(100)]  # 4 s of a 25 frame/s video: the background loops twice
        batches = [times[i : i + 4] for i in range(0, len(times), 4)]
        got = []
        for batch in batches:
            back = source.frames(np.zeros((len(batch), HEIGHT, WIDTH, 3), np.uint8), batch, pool.empty)
            held.append(back)
            got.append(back.copy())
        duration = source.duration
    finally:
        source.close()
    assert pool.made < len(batches)  # the batches' arrays were reused
    for batch, back in zip(batches, got, strict=True):
        for t, picture in zip(batch, back, strict=True):
            shown = max(i for i, (start, _) in enumerate(decoded) if start <= t % duration)
            assert np.array_equal(picture, cover(decoded[shown][1], WIDTH, HEIGHT)), t


def test_a_blur_in_reused_arrays() -> None:
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, (2, HEIGHT, WIDTH, 3), np.uint8) for _ in range(4)]
    blur, pool = BlurBackground(WIDTH, HEIGHT), ArrayPool(max_bytes=1 << 30)
    held: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=2)  # (pooled, made afresh)
    for batch in frames:
        held.append((blur.frames(batch, [0.0, 0.04], pool.empty), blur.frames(batch, [0.0, 0.04])))
        assert all(np.array_equal(back, fresh) for back, fresh in held)
    assert pool.made < len(frames)

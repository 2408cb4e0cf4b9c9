"""One video in parts side by side on the CPU (``service.segments``): the parts cover every frame
once, a part's seek lands where decoding from the start would, and the joined output has the one-part
run's frames, timestamps and audio, its matte equal before the seam and close after it."""

from __future__ import annotations

import logging
import sys
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import data_path
from videoutil import assert_parts_join_to_one_part

from service.config import get_settings
from service.errors import Canceled
from service.media import chunks
from service.media.chunks import chunk_pts
from service.media.decode import iter_frames
from service.media.probe import probe_video
from service.pipeline import BATCH_PIXELS, ReplaceOptions, frames_per_batch, replace_background
from service.segments import (
    MIN_FRAMES,
    MIN_FRAMES_SMALL,
    part_count,
    plan_segments,
    settings_per_part,
    try_segments,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from chunkclip import build_clip  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 s of a talking head at 15 frames/s (300 frames), a keyframe every 25, B-frames, AAC audio."""
    d = tmp_path_factory.mktemp("segments")
    return build_clip(data_path("videos", "talking-head.mp4"), d / "clip.mp4", 20, 128, gop=25, fps=15)


def test_part_count_follows_cores_and_length() -> None:
    auto = get_settings().model_copy(update={"segments": 0, "intra_op_threads": 0, "segment_max_pixels": 2_000_000})
    small, hd, full_hd = 640 * 360, 1280 * 720, 1920 * 1080
    assert part_count(auto, 1000, small, cores=2) == (2, 1)
    assert part_count(auto, 1000, small, cores=8) == (4, 2)
    assert part_count(auto, 1000, small, cores=1) == (1, 1)
    assert part_count(auto, 2 * MIN_FRAMES_SMALL - 1, small, cores=8) == (1, 8)  # too short for two parts
    assert part_count(auto, 2 * MIN_FRAMES_SMALL, small, cores=2) == (2, 1)  # small frames: short parts pay
    assert part_count(auto, 2 * MIN_FRAMES - 1, hd, cores=2) == (1, 2)  # larger ones need longer parts
    assert part_count(auto, 2 * MIN_FRAMES, hd, cores=2) == (2, 1)
    assert part_count(auto, 1000, hd, cores=8) == (2, 4)  # two 720p parts fit the pixel budget, not three
    assert part_count(auto, 1000, full_hd, cores=2) == (1, 2)  # 1080p: one part (memory)
    assert part_count(auto.model_copy(update={"segments": 1}), 1000, small, cores=8) == (1, 8)
    assert part_count(auto.model_copy(update={"segments": 3}), 1000, small, cores=2) == (3, 1)


def test_the_parts_batches_and_queues_together_hold_what_one_pipeline_may() -> None:
    """At most ``BATCH_PIXELS`` (a frame a part at least) and ``queue_memory_mb`` over all the parts.
    Each part's stages hold a batch while they work on it, so a part's batches are smaller: a 720p
    job with every option in two parts peaked at 0.94 GB with batches of four frames, 0.75-0.77 with two."""
    base = get_settings().model_copy(update={"batch_size": 4, "queue_memory_mb": 128})
    for width, height in [(640, 360), (1280, 720), (1920, 1080)]:
        pixels = width * height
        for parts in (2, 3, 4):
            each = settings_per_part(base, parts, 1, pixels)
            assert parts * frames_per_batch(each, pixels) * pixels <= max(BATCH_PIXELS, parts * pixels)
            assert parts * each.queue_memory_mb <= base.queue_memory_mb
            assert each.intra_op_threads == 1
    assert settings_per_part(base, 2, 1, 1280 * 720).batch_size == 2
    assert settings_per_part(base, 2, 1, 640 * 360).batch_size == 4  # small frames keep their batches


@pytest.mark.parametrize("parts", [2, 3])
def test_parts_cover_every_frame_once_and_seek_where_decoding_does(clip: Path, parts: int) -> None:
    info = probe_video(clip)
    order = chunk_pts(clip)
    windows = plan_segments(info, parts, 8)
    assert windows is not None and len(windows) == parts
    assert windows[0].start_pts == order[0] and windows[0].seek_dts is None and windows[-1].end_pts is None
    for a, b in zip(windows, windows[1:], strict=False):
        assert a.end_pts == b.start_pts
    sizes = [sum(1 for p in order if w.start_pts <= p and (w.end_pts is None or p < w.end_pts)) for w in windows]
    work = [sizes[0]] + [s + 8 for s in sizes[1:]]  # model frames: the later parts' warm-up too
    assert sum(sizes) == len(order) and max(work) - min(work) <= 1, (sizes, work)
    whole = {f.pts: f.image for f in iter_frames(info, 1)}
    for w in windows[1:]:
        assert w.model_from_pts == order[order.index(w.start_pts) - 8]
        assert w.seek_dts is not None and w.seek_dts > order[0]  # a real seek, not a decode from the start
        seen = [f for f in iter_frames(info, 1, seek_dts=w.seek_dts)]
        assert seen[0].pts <= w.model_from_pts
        for f in seen:
            assert np.array_equal(f.image, whole[f.pts])
        assert [f.pts for f in seen] == [p for p in order if p >= seen[0].pts]


def test_parts_join_to_the_one_part_run(
    tmp_path: Path, clip: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    one = get_settings().model_copy(update={"segments": 1})
    two = get_settings().model_copy(update={"segments": 2})
    matte = ReplaceOptions(output_format="matte")
    replace_background(clip, None, tmp_path / "one.mp4", matte, settings=one)
    seen: list[tuple[int, int]] = []
    opencv: list[int] = []  # OpenCV's threads a call while the parts run: each part's share of the cores
    opencv_before = cv2.getNumThreads()

    def progress(done: int, total: int) -> None:
        seen.append((done, total))
        opencv.append(cv2.getNumThreads())

    joins: list[chunks.JoinResult] = []  # what the join read from the parts' files
    real_join = chunks.join_chunks

    def join(*args: object, **kwargs: object) -> chunks.JoinResult:
        joins.append(real_join(*args, **kwargs))  # type: ignore[arg-type]
        return joins[-1]

    monkeypatch.setattr(chunks, "join_chunks", join)
    with caplog.at_level(logging.INFO, logger="service.segments"):
        r = replace_background(clip, None, tmp_path / "two.mp4", matte, settings=two, progress=progress)
    assert "2 parts" in caplog.text
    n = len(chunk_pts(clip))
    info = probe_video(clip)
    # each part ends with its own last frame, not stretched to the whole track's length
    assert [j.end_pts - j.first_pts for j in joins] == [info.track_ticks]
    assert set(opencv) == {part_count(two, n, info.width * info.height)[1]}
    assert cv2.getNumThreads() == opencv_before
    assert r.frames == n and seen[-1] == (n, n) and all(a[0] <= b[0] for a, b in zip(seen, seen[1:], strict=False))
    assert_parts_join_to_one_part(clip, tmp_path / "one.mp4", tmp_path / "two.mp4")
    assert [p.name for p in tmp_path.iterdir()] and sorted(p.name for p in tmp_path.iterdir()) == ["one.mp4", "two.mp4"]


def test_a_cancel_stops_every_part_and_leaves_no_file(
    tmp_path: Path, clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import service.inference.models as models

    monkeypatch.setattr(models, "_cache", {})  # this process's models, made afresh for this job
    calls = 0

    def cancel() -> bool:
        nonlocal calls
        calls += 1
        return calls > 6

    two = get_settings().model_copy(update={"segments": 2})
    with pytest.raises(Canceled):
        replace_background(clip, "#204060", tmp_path / "out.mp4", settings=two, cancel=cancel)
    assert list(tmp_path.iterdir()) == []
    # the parts ran on their own session; the default one was never made
    loaded = {key for key, model in models._cache.items() if model._session is not None}
    assert ("rvm", None) in models._cache and loaded and ("rvm", None) not in loaded, loaded


def test_what_is_not_cut(tmp_path: Path, clip: Path) -> None:
    from service.inference.models import get_model

    two = get_settings().model_copy(update={"segments": 2})
    model = get_model("rvm", two)
    info = probe_video(clip)
    # a Matroska input: its muxer picks its own time base, so it runs in one part
    assert plan_segments(probe_video(data_path("videos", "asl", "bird.mkv")), 2, 8) is None
    # a job choosing people follows them from the first frame: one part
    keep = ReplaceOptions(keep_points=[(80, 60)])
    assert try_segments(info, "#000000", tmp_path / "x.mp4", keep, model, two, None, None, None) is None
    assert list(tmp_path.iterdir()) == []


def test_a_webm_made_in_parts_is_as_long_as_its_input(tmp_path: Path, clip: Path) -> None:
    """WebM parts count in milliseconds, the input in its own ticks: the join gave the last frame
    the input's track length in milliseconds, and a 4 s clip's WebM said it lasted over a minute."""
    import av

    two = get_settings().model_copy(update={"segments": 2})
    info = probe_video(clip)
    assert info.time_base != Fraction(1, 1000)
    replace_background(clip, None, tmp_path / "two.webm", ReplaceOptions(output_format="webm"), settings=two)
    with av.open(str(tmp_path / "two.webm")) as c:
        assert c.duration is not None
        assert c.duration / 1e6 == pytest.approx(info.duration_s, abs=0.05)

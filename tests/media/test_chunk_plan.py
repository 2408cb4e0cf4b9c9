"""Cutting at keyframes by packet copy (issue 16), without the model: where the cuts fall, what each
chunk's file holds, and the inputs that are not cut."""

from __future__ import annotations

import sys
from pathlib import Path

import av
import pytest
from conftest import data_path

from service.media.chunks import ChunkPlan, chunk_pts, plan_chunks, split_video
from service.media.probe import probe_video

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from chunkclip import build_clip  # noqa: E402


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("plan")
    return build_clip(data_path("videos", "talking-head.mp4"), d / "clip.mp4", 10, 96, gop=7, fps=10)


def _packets(path: Path) -> list[tuple[int, int, bytes]]:
    with av.open(str(path)) as c:
        return [(int(p.pts), int(p.dts), bytes(p)) for p in c.demux(video=0) if p.size]


def test_cuts_fall_on_keyframes_and_cover_every_frame_once(clip: Path, tmp_path: Path) -> None:
    info = probe_video(clip)
    plan = plan_chunks(info, 3.0, 5)
    assert plan is not None and plan == ChunkPlan.from_json(plan.to_json())
    order = chunk_pts(clip)
    keys = {p for p, _, _ in _packets(clip)[::7]}  # a keyframe every 7 frames
    spans = plan.chunks
    # about 3 s each (the next keyframe at or after each multiple), the short tail joined to the last
    assert [order.index(c.start_pts) for c in spans] == [0, 35, 70]
    assert all(c.start_pts in keys for c in spans)
    assert sum(c.frames for c in spans) == len(order) == 100
    assert [c.end_pts for c in spans] == [spans[1].start_pts, spans[2].start_pts, None]
    assert spans[0].warmup == 0 and all(c.warmup == 5 for c in spans[1:])
    assert spans[1].model_from_pts == order[30]
    src = _packets(clip)
    for c, part in zip(spans, split_video(info, plan, tmp_path), strict=True):
        got = _packets(part)
        # packet copy: the same bytes and timestamps, from the keyframe before the warm-up
        assert got == src[c.first_packet : c.end_packet]
        assert got[0][0] in keys and got[0][0] <= c.model_from_pts
        shown = sorted(p for p, _, _ in got)
        assert set(order[order.index(c.start_pts) :][: c.frames]) <= set(shown)
        with av.open(str(part)) as f:
            assert not f.streams.audio  # the join muxes the input's audio once


def test_a_video_not_longer_than_one_chunk_is_not_cut(clip: Path) -> None:
    info = probe_video(clip)
    assert plan_chunks(info, 10.0, 8) is None
    assert plan_chunks(info, 0, 8) is None


def test_a_warm_up_decodes_from_a_clean_keyframe(clip: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A keyframe that a packet before it in decode order displays after (frame 29 decoded before
    keyframe 28) cannot start a decode without losing that frame: the warm-up of the chunk at frame
    35 starts from keyframe 21 instead."""
    import service.media.chunks as chunks

    info = probe_video(clip)
    tick = chunk_pts(clip)[1] - chunk_pts(clip)[0]
    packets = [(i * tick, None, i % 7 == 0, True) for i in range(100)]
    packets[28], packets[29] = packets[29], packets[28]  # decode order: 27, 29, 28 (key), 30
    monkeypatch.setattr(chunks, "video_packets", lambda _path: packets)
    plan = plan_chunks(info, 3.0, 5)
    assert plan is not None
    second = plan.chunks[1]
    assert second.start_pts == 35 * tick and second.model_from_pts == 30 * tick
    assert packets[second.first_packet][0] == 21 * tick

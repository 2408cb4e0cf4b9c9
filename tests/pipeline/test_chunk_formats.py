"""Chunks cut, processed and joined in one process (issue 16; the workers' tasks do the same steps
through storage): every output format and option gives what the sequential run gives — the same
timestamps, the same audio, the same alpha, and a background video that continues across seams."""

from __future__ import annotations

import sys
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import data_path
from videoutil import alpha_channel, audio_packets, frames_rgb, subtitle_cues, with_subtitles

from service.media.chunks import NotChunkable, chunk_info, chunk_pts, join_chunks, plan_chunks, split_video
from service.media.probe import probe_video
from service.pipeline import ReplaceOptions, Window, replace_background

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from chunkclip import build_clip  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("chunkfmt")
    clip = build_clip(data_path("videos", "talking-head.mp4"), d / "clip.mp4", 6, 128, gop=5, fps=10)
    bg = build_clip(data_path("videos", "walking-sideways.mp4"), d / "bg.mp4", 4, 128, gop=10, fps=10, audio=False)
    return clip, bg


def _chunked(src: Path, background: str | None, out: Path, options: ReplaceOptions) -> int:
    info = probe_video(src)
    plan = plan_chunks(info, 1.5, 8)
    assert plan is not None
    parts = split_video(info, plan, out.parent / f"{out.stem}-in")
    encoded = []
    for span, part in zip(plan.chunks, parts, strict=True):
        o = out.parent / f"{out.stem}-{span.index}{out.suffix}"
        window = Window(chunk_info(info, part), span.model_from_pts, span.start_pts, span.end_pts)
        r = replace_background(part, background, o, options, window=window)
        assert r.frames == span.frames
        encoded.append(o)
    join_chunks(encoded, info, options.output_format, out, src)
    return len(plan.chunks)


@pytest.mark.parametrize(
    ("fmt", "composite", "harmonize", "background"),
    [("webm", "alpha", 0.0, None), ("mov", "alpha", 0.0, None), ("mp4", "poisson", 0.5, "video")],
)
def test_chunks_join_to_the_sequential_output(
    tmp_path: Path, clips: tuple[Path, Path], fmt: str, composite: str, harmonize: float, background: str | None
) -> None:
    src, bg_video = clips
    bg = str(bg_video) if background == "video" else None
    options = ReplaceOptions(output_format=fmt, composite=composite, harmonize=harmonize)
    ext = {"webm": ".webm", "mov": ".mov"}.get(fmt, ".mp4")
    seq, joined = tmp_path / f"seq{ext}", tmp_path / f"joined{ext}"
    replace_background(src, bg, seq, options)
    assert _chunked(src, bg, joined, options) == 4
    assert chunk_pts(joined) == chunk_pts(seq)
    if fmt != "webm":  # WebM keeps milliseconds
        assert chunk_pts(seq) == chunk_pts(src)
    assert audio_packets(joined) == audio_packets(seq) and len(audio_packets(seq)) > 200
    if fmt in ("webm", "mov"):
        a, b = alpha_channel(joined) > 0.5, alpha_channel(seq) > 0.5
        assert b.mean() > 0.2
        iou = (a & b).sum((1, 2)) / np.maximum((a | b).sum((1, 2)), 1)
        assert iou.mean() >= 0.98 and iou.min() >= 0.95, (iou.mean(), iou.min())
    else:
        x, y = frames_rgb(joined), frames_rgb(seq)
        assert len(x) == len(y) == 60
        diff = [float(np.abs(x[i].astype(int) - y[i].astype(int)).mean()) for i in range(60)]
        # the seams (frames 15, 30, 45) look as in the sequential run: the background video (4 s,
        # looped) went on at each chunk's own time
        assert max(diff) < 4.0, diff


def test_an_input_whose_container_cannot_keep_its_timestamps_is_not_cut(tmp_path: Path) -> None:
    src = sorted(data_path("videos", "asl").glob("*.mkv"))[0]  # Matroska: its muxer picks its own time base
    with pytest.raises(NotChunkable):
        plan_chunks(probe_video(src), 0.5, 8)


def test_the_join_carries_the_subtitles(tmp_path: Path, clips: tuple[Path, Path]) -> None:
    """The join muxes the input's subtitles once, as the sequential writer does (a cue across a
    seam whole), where the input has no sound too; and its timecode and chapters."""
    srt = "1\n00:00:00,200 --> 00:00:00,900\nHello\n\n2\n00:00:01,000 --> 00:00:01,800\nAcross a seam\n"
    src = with_subtitles(clips[0], tmp_path / "subtitled.mp4", [("srt", "eng", srt)], audio=False,
                         timecode="10:00:00:00", chapters=["One", "Two"])
    options = ReplaceOptions(output_format="greenscreen")
    seq, joined = tmp_path / "seq.mp4", tmp_path / "joined.mp4"
    replace_background(src, None, seq, options)
    assert _chunked(src, None, joined, options) == 4
    assert subtitle_cues(joined) == subtitle_cues(seq) == [[(0.2, 0.9, "Hello"), (1.0, 1.8, "Across a seam")]]
    assert probe_video(joined).timecode == probe_video(seq).timecode == "10:00:00:0"  # FFmpeg's form at 10 fps
    with av.open(str(joined)) as j, av.open(str(seq)) as s:
        assert j.chapters() == s.chapters() and [c["metadata"]["title"] for c in s.chapters()] == ["One", "Two"]

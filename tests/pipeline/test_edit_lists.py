"""MP4 edit lists that leave frames out (a phone's recording trimmed at either end, or an encoder's
pre-roll): the frames left out are decoded, for those that refer to them, but never shown, so
they are not counted, timed or written, whole or in chunks."""

from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from videoutil import read_back

from service.media.chunks import chunk_info, join_chunks, plan_chunks, split_video
from service.media.probe import probe_video
from service.pipeline import ReplaceOptions, Window, replace_background

pytestmark = pytest.mark.slow

FRAMES, LEAD, TAIL = 30, 3, 2  # 30 coded at 10 frames/s; the edit shows all but 3 at the start and 2 at the end


@pytest.fixture(scope="module")
def trimmed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 frames, the first 3 before time 0 (FFmpeg's MP4 muxer writes an edit list starting at
    0, after them), and the edit made 0.2 s shorter than the rest (the last 2 left out too)."""
    path = tmp_path_factory.mktemp("editlist") / "trimmed.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"bf": "0", "g": "5"}  # a keyframe every half second: chunks can start there
        packets = []
        for i in range(FRAMES):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 20 + 7 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 10)
            packets += stream.encode(frame)
        packets += stream.encode()
        for packet in packets:
            packet.pts -= LEAD * int(1 / (10 * packet.time_base))
            packet.dts -= LEAD * int(1 / (10 * packet.time_base))
            out.mux(packet)
    data = bytearray(path.read_bytes())
    at = data.find(b"elst")
    assert data[at + 4] == 0 and struct.unpack_from(">I", data, at + 8)[0] == 1  # version 0, one edit
    (length,) = struct.unpack_from(">I", data, at + 12)  # in the movie's time scale, 1000 a second
    struct.pack_into(">I", data, at + 12, length - TAIL * 100)
    path.write_bytes(bytes(data))
    with av.open(str(path)) as c:
        shown = [not p.is_discard for p in c.demux(c.streams.video[0]) if p.size]
    assert shown == [False] * LEAD + [True] * (FRAMES - LEAD - TAIL) + [False] * TAIL
    return path


def test_frames_an_edit_list_leaves_out_are_not_counted_or_written(trimmed: Path, tmp_path: Path) -> None:
    """They were counted (the progress total, the frame limit) and the first of them was taken
    for the track's start, which cut the output's last frame short."""
    info = probe_video(trimmed)
    assert (info.frames, info.first_pts, info.fps) == (FRAMES - LEAD - TAIL, 0, 10)
    out = tmp_path / "out.mp4"
    result = replace_background(trimmed, "#00b140", out, ReplaceOptions())
    back = read_back(out)
    assert result.frames == back.frames == FRAMES - LEAD - TAIL
    assert back.duration_s == pytest.approx((FRAMES - LEAD - TAIL) / 10, abs=1e-3)


def test_chunks_of_a_trimmed_video_write_the_frames_they_planned(trimmed: Path, tmp_path: Path) -> None:
    """The chunk workers check each chunk wrote the frames it was planned to: the first chunk's plan
    counted the frames left out at the start (2 written, 3 planned: the job failed after its
    retries), and the last chunk's own file showed those left out at the end."""
    info = probe_video(trimmed)
    plan = plan_chunks(info, 1.0, 2)
    assert plan is not None and len(plan.chunks) >= 2
    assert sum(c.frames for c in plan.chunks) == FRAMES - LEAD - TAIL
    parts = split_video(info, plan, tmp_path / "in")
    encoded = []
    for span, part in zip(plan.chunks, parts, strict=True):
        window = Window(chunk_info(info, part), span.model_from_pts, span.start_pts, span.end_pts)
        out = tmp_path / f"chunk-{span.index}.mp4"
        assert replace_background(part, "#00b140", out, ReplaceOptions(), window=window).frames == span.frames
        encoded.append(out)
    joined = join_chunks(encoded, info, "mp4", tmp_path / "joined.mp4", None)
    assert joined.frames == FRAMES - LEAD - TAIL

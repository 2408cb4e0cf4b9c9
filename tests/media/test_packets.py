"""Packets are read on where a demuxer answers "call again" (``service.media.packets``): an SGI movie
with sound, whose demuxer says so as its first stream runs out, came in as a corrupt video."""

from __future__ import annotations

import struct
from pathlib import Path

import av
import numpy as np
import pytest
from videoutil import read_back

from service.media.inspect import inspect_video
from service.media.packets import read_packets
from service.pipeline import ReplaceOptions, replace_background

FRAMES, WIDTH, HEIGHT, FPS = 20, 64, 48, 15
RATE, SAMPLES = 8000, 533  # 16-bit mono PCM, about one frame's worth a packet


def sgi_movie(path: Path) -> Path:
    """A version-2 SGI movie (the layout FFmpeg's ``mv`` demuxer reads): its header (frame rate, a
    sound flag, raw ARGB pictures, signed 16-bit sound), then an index of (offset, sound bytes,
    picture bytes) per frame, then each frame's sound followed by its picture (a bar growing from
    the left)."""
    head = b"MOVI" + struct.pack(">H", 2) + bytes(10) + struct.pack(">dHH", float(FPS), 1, 0)
    head += struct.pack(">IIII", FRAMES, 2, WIDTH, HEIGHT) + bytes(12)  # 2: raw ARGB
    head += struct.pack(">IIII", RATE, 2, 401, 1) + bytes(8)  # 2 bytes a sample, 401: signed, mono
    head += bytes(0x80 + 0x100 + 0x80)  # title, comment, reserved
    offset = len(head) + 20 * FRAMES
    index, data = b"", b""
    for k in range(FRAMES):
        argb = np.zeros((HEIGHT, WIDTH, 4), np.uint8)
        argb[..., 0] = 255
        argb[..., 1:] = 30
        argb[:, : (k + 1) * WIDTH // FRAMES, 1:] = 220
        sound = (np.sin(np.arange(SAMPLES) * 0.3) * 8000).astype(">i2").tobytes()
        picture = argb.tobytes()
        index += struct.pack(">III", offset, len(sound), len(picture)) + bytes(8)
        data += sound + picture
        offset += len(sound) + len(picture)
    path.write_bytes(head + index + data)
    return path


def test_packets_are_read_past_a_demuxer_asking_to_be_called_again(tmp_path: Path) -> None:
    movie = sgi_movie(tmp_path / "bar.mv")
    with av.open(str(movie)) as c, pytest.raises(av.error.BlockingIOError):
        list(c.demux())  # PyAV stops at the first EAGAIN: the sound has run out, the pictures not
    with av.open(str(movie)) as c:
        got = [(p.stream.type, p.pts) for p in read_packets(c) if p.size]
    assert sorted(kind for kind, _ in got) == ["audio"] * FRAMES + ["video"] * FRAMES
    assert [pts for kind, pts in got if kind == "video"] == list(range(FRAMES))


def test_an_sgi_movie_with_sound_comes_out_whole(tmp_path: Path) -> None:
    movie = sgi_movie(tmp_path / "bar.mv")
    info = inspect_video(movie)
    assert (info.frames, info.coded_width, info.coded_height, info.fps) == (FRAMES, WIDTH, HEIGHT, FPS)
    out = tmp_path / "out.mp4"
    replace_background(movie, "#00ff00", out, ReplaceOptions(output_format="greenscreen"))
    back = read_back(out)
    assert back.frames == FRAMES and abs(back.duration_s - FRAMES / FPS) < 1e-3
    assert np.allclose(back.pts_s, [k / FPS for k in range(FRAMES)], atol=1e-3)
    with av.open(str(out)) as c:  # all the sound, in AAC (MP4 takes no big-endian PCM): whole frames of 1024
        samples = sum(f.samples for f in c.decode(c.streams.audio[0]))
    assert FRAMES * SAMPLES <= samples < FRAMES * SAMPLES + 1024

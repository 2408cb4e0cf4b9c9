"""Inputs whose clock does not start at 0: an HLS or DASH segment cut from the middle of a stream,
an MPEG-TS whose 33-bit clock wraps round.  The output starts at 0 whatever the input's clock
said, as FFmpeg's own command line makes it, with the sound as far from the pictures as it was.
They kept the input's times: MP4's edit list then hid every frame before 0 (the wrapped TS came
out with no picture at all) and put an empty stretch before a segment that started late."""

from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from videoutil import read_back, rising_grey, tone

from service.media.probe import probe_video
from service.pipeline import ReplaceOptions, replace_background

pytestmark = pytest.mark.slow

FRAMES, RATE, SOUND_LATE = 20, 10, 0.3  # the sound starts 0.3 s after the first frame


def _ts(path: Path, start: int) -> Path:
    """An MPEG-TS of 20 frames at 10 a second and a tone from 0.3 s in, its clock (90 kHz) at
    ``start`` at the first frame, wrapping round at 2**33 as a TS clock does."""
    with av.open(str(path), "w", format="mpegts") as out:
        video = out.add_stream("libx264", rate=RATE)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = out.add_stream("aac", rate=48000)
        audio.layout = "mono"
        packets = rising_grey(video, FRAMES, RATE)
        packets += tone(audio, FRAMES / RATE - SOUND_LATE, SOUND_LATE)
        for packet in sorted(packets, key=lambda p: float(p.dts * p.time_base)):
            shift = round(start * Fraction(1, 90000) / packet.time_base)
            packet.pts, packet.dts = packet.pts + shift, packet.dts + shift
            out.mux(packet)
    return path


@pytest.mark.parametrize("start", [140 * 90000, (1 << 33) - 45000], ids=["late", "wrapping"])
def test_the_output_starts_at_0(tmp_path: Path, start: int) -> None:
    src = _ts(tmp_path / "in.ts", start)
    info = probe_video(src)
    assert info.frames == FRAMES
    out = tmp_path / "out.mp4"
    assert replace_background(src, "#00b140", out, ReplaceOptions()).frames == FRAMES
    back = read_back(out)
    assert back.frames == FRAMES
    assert back.pts_s[0] == pytest.approx(0, abs=1e-3)
    assert back.duration_s == pytest.approx(FRAMES / RATE, abs=0.02)
    with av.open(str(out)) as c:
        sound = c.streams.audio[0]
        first = next(float(p.pts * p.time_base) for p in c.demux(sound) if p.pts is not None)
        assert c.duration is not None and c.duration / 1e6 == pytest.approx(FRAMES / RATE, abs=0.1)
    assert first == pytest.approx(SOUND_LATE, abs=0.05)  # less the AAC encoders' priming, 1024 samples each


def test_a_fragmented_segment_from_the_middle_of_a_stream(tmp_path: Path) -> None:
    """A fragmented MP4 (DASH, HLS fMP4, a live recording) cut from a stream 10 s in: FFmpeg gives
    its length as where it ends (the last frame was stretched over the 10 s before it), or as the
    whole stream's, from its ``mdhd`` (the file was refused as too long: 3900 s for 8)."""
    src = tmp_path / "segment.mp4"
    with av.open(str(src), "w", options={"movflags": "frag_keyframe+empty_moov+default_base_moof"}) as out:
        video = out.add_stream("libx264", rate=RATE)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        video.options = {"g": "5"}
        for i in range(FRAMES):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 20 + 9 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = 100 + i, Fraction(1, RATE)  # 10 s in
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
    # the whole stream's length in the track's media header (``mdhd``), as a packager writes it
    data = bytearray(src.read_bytes())
    at = data.index(b"mdhd") + 4
    assert data[at] == 0  # version 0: creation, modification, time scale, duration (32 bits each)
    (scale,) = struct.unpack_from(">I", data, at + 12)
    struct.pack_into(">I", data, at + 16, 3900 * scale)
    src.write_bytes(bytes(data))
    with av.open(str(src)) as c:
        declared = float(c.streams.video[0].duration * c.streams.video[0].time_base)
    assert declared > 600  # FFmpeg's figure: the stream's, past the length limit
    info = probe_video(src)
    assert (info.frames, info.track_ticks) == (FRAMES, None)
    assert info.duration_s == pytest.approx(FRAMES / RATE, abs=1e-3)
    out = tmp_path / "out.mp4"
    assert replace_background(src, "#00b140", out, ReplaceOptions()).frames == FRAMES
    back = read_back(out)
    assert back.frames == FRAMES and back.pts_s[0] == pytest.approx(0, abs=1e-3)
    assert back.duration_s == pytest.approx(FRAMES / RATE, abs=0.02)



def test_a_variable_rate_clip_ends_where_its_track_does(tmp_path: Path) -> None:
    """Frames shown for very different times (a screen recording, a phone that drops frames),
    reordered in the output by its B-frames: the last packet in decode order is not the last shown,
    and its length was counted from its decode time; the output ended 1.1 s early (mediabunny's
    cursed-vfr.mp4: 7.6 s of 8.7)."""
    times = [0.0, 1.1, 1.15, 1.2, 1.6, 1.65, 1.7, 2.9, 2.95, 3.0, 3.05, 4.5]  # the last shown 1.5 s: 6 s in all
    src = tmp_path / "vfr.mp4"
    with av.open(str(src), "w") as out:
        video = out.add_stream("libx264", rate=RATE)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        video.codec_context.time_base = Fraction(1, 1000)
        video.options = {"bf": "0"}  # in the input, decode order is display order
        packets = []
        for i, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 20 + 9 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
            packets += video.encode(frame)
        packets += video.encode()
        for packet, after in zip(packets, [*packets[1:], None], strict=True):
            packet.duration = (after.pts if after else 6000) - packet.pts
            out.mux(packet)
    with av.open(str(src)) as c:
        assert float(c.streams.video[0].duration * c.streams.video[0].time_base) == pytest.approx(6.0, abs=0.01)
    out = tmp_path / "out.mp4"
    replace_background(src, "#00b140", out, ReplaceOptions())
    with av.open(str(out)) as c:
        packets = [p for p in c.demux(video=0) if p.size]
        assert max(p.pts for p in packets) != packets[-1].pts  # the output's last in decode order is not the last shown
        assert float(c.streams.video[0].duration * c.streams.video[0].time_base) == pytest.approx(6.0, abs=0.01)
        assert c.duration is not None and c.duration / 1e6 == pytest.approx(6.0, abs=0.01)


def _data_element_only(text: bytes) -> bytes:
    """An AAC frame (raw, as the muxer takes it) holding only a data stream element: faac writes its
    name and version so in the first frame of each stream, and the decoder gives no sound for it."""
    bits = "100" + "0000" + "0" + f"{len(text):08b}" + "".join(f"{b:08b}" for b in text) + "111"  # DSE, END
    bits += "0" * (-len(bits) % 8)
    return int(bits, 2).to_bytes(len(bits) // 8, "big")


def _onset_s(path: Path) -> float:
    """When the tone starts, in seconds after the first picture: its first loud sample."""
    with av.open(str(path)) as c:
        picture = float(next(c.decode(video=0)).time or 0)
    with av.open(str(path)) as c:
        for frame in c.decode(audio=0):
            loud = np.flatnonzero(np.abs(frame.to_ndarray()[0]) > 0.3)
            if loud.size:
                return float(frame.time or 0) + loud[0] / frame.sample_rate - picture
    raise AssertionError("no sound")


def test_sound_after_a_frame_that_gives_none_keeps_its_place(tmp_path: Path) -> None:
    """In MPEG-TS a PES packet holds several AAC frames and only its first is timed; FFmpeg times the
    others from the sample rate, which it does not know when nothing is decoded while probing.
    Where that first frame gives no sound (faac's: only its name), the sound that follows was
    counted from 0 and played a frame (21 ms at 48 kHz) early against the pictures."""
    src = tmp_path / "faac.ts"
    with av.open(str(src), "w", format="mpegts", container_options={"max_delay": "700000"}) as out:
        video = out.add_stream("libx264", rate=RATE)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = out.add_stream("aac", rate=48000)
        audio.layout = "mono"
        sound = tone(audio, FRAMES / RATE - SOUND_LATE, SOUND_LATE)
        named = av.Packet(_data_element_only(b"libfaac 1.28"))
        named.pts = named.dts = sound[0].pts - 1024
        named.time_base, named.duration, named.stream = sound[0].time_base, 1024, audio
        for packet in sorted(rising_grey(video, FRAMES, RATE) + [named, *sound],
                             key=lambda p: float(p.dts * p.time_base)):
            out.mux(packet)
    with av.open(str(src), container_options={"codec_whitelist": "none"}) as c:  # as the service opens it
        timed = [p.pts is not None for p in c.demux(c.streams.audio[0]) if p.size]
        assert timed[:2] == [True, False]  # the PES packets hold several frames
    out = tmp_path / "out.mp4"
    replace_background(src, "#00b140", out, ReplaceOptions())
    assert _onset_s(src) == pytest.approx(SOUND_LATE, abs=0.002)
    assert _onset_s(out) == pytest.approx(_onset_s(src), abs=0.002)

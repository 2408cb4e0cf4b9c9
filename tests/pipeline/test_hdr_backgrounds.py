"""An HDR video's background is HDR too: a colour, a picture or an SDR video is brought into the
video's colour space (BT.2408: SDR white at HDR's reference white) before it is composited, and an
HDR background video into an SDR video's.  Before, the sRGB values went into a frame tagged HLG or
PQ in BT.2020, and players showed them oversaturated, SDR white at the display's peak."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from conftest import data_path

from service.media.background import open_background
from service.media.colour_space import HLG, PQ, ColourSpace, in_space
from service.pipeline import replace_background

SIZE = (272, 480)  # talking-head, scaled: its top-left corner is background
HLG_2020, PQ_2020, UNTAGGED = ColourSpace(9, HLG), ColourSpace(9, PQ), ColourSpace(2, 2)


def _tagged(src: Path, dst: Path, space: ColourSpace, frames: int = 10) -> Path:
    """``frames`` of ``src`` at ``SIZE`` in 10-bit H.264 tagged as ``space`` (BT.2020's matrix):
    the code values are the SDR clip's, only the tags say HDR, as a phone's HDR clip reads."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height = SIZE
        stream.pix_fmt = "yuv420p10le"
        ctx = stream.codec_context  # the encoder writes its own tags into the stream, not the frames'
        ctx.colorspace, ctx.color_primaries, ctx.color_trc = 9, space.primaries, space.trc
        for k, frame in enumerate(inp.decode(video=0)):
            if k >= frames:
                break
            f = frame.reformat(width=SIZE[0], height=SIZE[1], format="yuv420p10le", dst_colorspace=9)
            f.pts, f.colorspace, f.color_primaries, f.color_trc = k, 9, space.primaries, space.trc
            out.mux(stream.encode(f))
        out.mux(stream.encode(None))
    return dst


def _first_frame(path: Path) -> tuple[np.ndarray, ColourSpace]:
    with av.open(str(path)) as c:
        frame = next(c.decode(video=0))
        return frame.to_ndarray(format="rgb24"), ColourSpace(int(frame.color_primaries), int(frame.color_trc))


def _corner(image: np.ndarray) -> np.ndarray:
    return image[:8, :8].reshape(-1, 3).mean(axis=0)  # type: ignore[no-any-return]


@pytest.mark.parametrize("space", [HLG_2020, PQ_2020], ids=["hlg", "pq"])
def test_a_colour_behind_an_hdr_video_is_that_colour_in_hdr(tmp_path: Path, space: ColourSpace) -> None:
    video = _tagged(data_path("videos", "talking-head.mp4"), tmp_path / "hdr.mp4", space)
    out = tmp_path / "out.mp4"
    replace_background(video, "#336699", out)
    image, tags = _first_frame(out)
    assert tags == space  # the output is still HDR, as its input
    want = in_space(np.array([[[0x33, 0x66, 0x99]]], np.uint8), ColourSpace(1, 13), space)[0, 0]
    assert np.abs(_corner(image) - want).max() < 4, (_corner(image), want)
    assert np.abs(_corner(image) - [0x33, 0x66, 0x99]).max() > 12  # not the sRGB values as they stood


def test_a_picture_and_an_sdr_video_behind_an_hdr_video(tmp_path: Path) -> None:
    for space, background in ((PQ_2020, data_path("backgrounds", "bg_1.jpg")),
                              (HLG_2020, data_path("videos", "asl", "yes.mkv"))):
        video = _tagged(data_path("videos", "talking-head.mp4"), tmp_path / "hdr.mp4", space)
        out = tmp_path / "out.mp4"
        replace_background(video, str(background), out)
        image, _ = _first_frame(out)
        # the background as an SDR video would show it (its own space asked for: nothing converted)
        as_sdr = open_background(str(background), *SIZE)
        plain = as_sdr.frames(np.zeros((1, SIZE[1], SIZE[0], 3), np.uint8), [0.0])[0]
        as_sdr.close()
        want = _corner(in_space(np.ascontiguousarray(plain), ColourSpace(1, 13), space))
        assert np.abs(_corner(image) - want).max() < 4, (background.name, _corner(image), want)
        assert np.abs(_corner(image) - _corner(plain)).max() > 8, background.name


def test_an_hdr_background_video_behind_an_sdr_video(tmp_path: Path) -> None:
    background = _tagged(data_path("videos", "asl", "yes.mkv"), tmp_path / "bg-hlg.mp4", HLG_2020)
    out = tmp_path / "out.mp4"
    replace_background(data_path("videos", "talking-head.mp4"), str(background), out)
    image, tags = _first_frame(out)
    assert tags == UNTAGGED
    source = open_background(str(background), 1080, 1920, space=HLG_2020)  # its own code values
    plain = source.frames(np.zeros((1, 1920, 1080, 3), np.uint8), [0.0])[0]
    source.close()
    want = _corner(in_space(np.ascontiguousarray(plain), HLG_2020, UNTAGGED))
    assert np.abs(_corner(image) - want).max() < 4, (_corner(image), want)
    assert np.abs(_corner(image) - _corner(plain)).max() > 8

"""deeplabv3plus through the full pipeline (decode → matte → edge refinement → encode)."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
from conftest import data_path
from videoutil import frames_rgb, mask_frames, read_back

from service.config import get_settings
from service.pipeline import ReplaceOptions, replace_background

FRAMES = 12


def _head(src: Path, dst: Path, n: int) -> None:
    """The first ``n`` frames of ``src`` as a small H.264 clip."""
    cap = cv2.VideoCapture(str(src))
    with av.open(str(dst), "w") as out:
        s = out.add_stream("libx264", rate=24)
        for i in range(n):
            ok, f = cap.read()
            assert ok
            if i == 0:
                s.width, s.height, s.pix_fmt = f.shape[1], f.shape[0], "yuv420p"
            frame = av.VideoFrame.from_ndarray(cv2.cvtColor(f, cv2.COLOR_BGR2RGB), format="rgb24")
            frame.pts = i
            for p in s.encode(frame):
                out.mux(p)
        for p in s.encode(None):
            out.mux(p)
    cap.release()


def test_matte_through_pipeline(tmp_path: Path) -> None:
    src = tmp_path / "lucia-head.mp4"
    _head(data_path("videos_gt", "lucia.mp4"), src, FRAMES)
    gt = mask_frames(data_path("videos_gt", "lucia_mask.mp4"))[:FRAMES]
    settings = get_settings().model_copy(update={"providers": ["CPUExecutionProvider"]})
    out = tmp_path / "matte.mp4"
    options = ReplaceOptions.parse(model="deeplabv3plus", output_format="matte", edge_refine=True)
    result = replace_background(src, None, out, options, settings=settings)
    assert result.frames == FRAMES == read_back(out).frames
    mattes = frames_rgb(out, {0, FRAMES // 2, FRAMES - 1})
    for i, rgb in mattes.items():
        pred = rgb.mean(axis=2) > 127
        iou = (pred & gt[i]).sum() / (pred | gt[i]).sum()
        assert iou > 0.6, (i, iou)

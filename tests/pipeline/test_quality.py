"""Matting quality on DAVIS clips with per-frame ground truth, and compositing fidelity."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import data_path
from videoutil import alpha_channel, frames_rgb, mask_frames

from service.pipeline import ReplaceOptions, replace_background

CLIPS = ["lucia", "hike", "parkour", "breakdance-flare"]
COLOUR = (40, 200, 90)


def _erode(mask: np.ndarray, px: int) -> np.ndarray:
    kernel = np.ones((2 * px + 1, 2 * px + 1), np.uint8)
    return cv2.erode(mask.astype(np.uint8), kernel).astype(bool)


@pytest.mark.slow
@pytest.mark.parametrize("clip", CLIPS)
def test_matte_iou_and_composite_fidelity(clip: str, tmp_path: Path) -> None:
    src = data_path("videos_gt", f"{clip}.mp4")
    gt = mask_frames(data_path("videos_gt", f"{clip}_mask.mp4"))

    matte = tmp_path / "matte.mp4"
    replace_background(src, None, matte, ReplaceOptions(output_format="matte"))
    alpha = alpha_channel(matte)[:, : gt.shape[1], : gt.shape[2]]
    assert alpha.shape == gt.shape
    pred = alpha > 0.5
    inter = (pred & gt).sum(axis=(1, 2))
    union = (pred | gt).sum(axis=(1, 2))
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    assert iou.mean() >= 0.85, f"{clip}: mean IoU {iou.mean():.3f}"

    out = tmp_path / "out.mp4"
    replace_background(src, "#{:02x}{:02x}{:02x}".format(*COLOUR), out)
    idx = set(range(0, len(gt), max(1, len(gt) // 8)))
    got = frames_rgb(out, idx)
    inp = frames_rgb(src, idx)
    bg_err, fg_err = [], []
    for i in idx:
        g = got[i][: gt.shape[1], : gt.shape[2]].astype(np.float32)
        background = _erode(~gt[i], 6)
        inside = _erode(gt[i], 6)
        bg_err.append(np.abs(g[background] - COLOUR).mean())
        if inside.sum() > 200:
            fg_err.append(np.abs(g[inside] - inp[i][inside].astype(np.float32)).mean())
    assert np.mean(bg_err) <= 8, f"{clip}: background MAE {np.mean(bg_err):.2f}"
    assert np.mean(fg_err) <= 8, f"{clip}: person MAE {np.mean(fg_err):.2f}"

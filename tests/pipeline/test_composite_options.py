"""The poisson compositor and harmonisation run through the full pipeline on a real clip."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import data_path
from videoutil import frames_rgb, mask_frames, read_back

from service.errors import BackdropError
from service.pipeline import ReplaceOptions, replace_background


def _person_mean(path: Path, masks: np.ndarray, idx: set[int]) -> np.ndarray:
    frames = frames_rgb(path, idx)
    inside = [frames[i][: masks.shape[1], : masks.shape[2]][masks[i]] for i in idx]
    return np.concatenate(inside).astype(np.float32).mean(0)


@pytest.mark.slow
def test_poisson_and_harmonize_through_the_pipeline(tmp_path: Path) -> None:
    src = data_path("videos_gt", "lucia.mp4")
    bg = str(data_path("backgrounds", "plasma_EveningGlow_2560x1600.jpg"))
    masks = mask_frames(data_path("videos_gt", "lucia_mask.mp4"))
    idx = {0, 20, 40}
    kernel = np.ones((13, 13), np.uint8)  # well inside the person: 6 px away from the seam
    eroded = np.stack([cv2.erode(m.astype(np.uint8), kernel).astype(bool) for m in masks])

    plain, poisson, harmonized = tmp_path / "alpha.mp4", tmp_path / "poisson.mp4", tmp_path / "harm.mp4"
    replace_background(src, bg, plain, ReplaceOptions(composite="alpha"))
    replace_background(src, bg, poisson, ReplaceOptions(composite="poisson"))
    replace_background(src, bg, harmonized, ReplaceOptions(composite="alpha", harmonize=1.0))
    for out in (poisson, harmonized):
        assert read_back(out).frames == read_back(src).frames

    base = _person_mean(plain, eroded, idx)
    # The poisson compositor keeps the person's own colours: its mean colour stays within a few
    # levels of plain alpha blending (seamlessClone would pull it toward the glowing backdrop).
    assert np.abs(_person_mean(poisson, eroded, idx) - base).max() < 6
    # Harmonisation moves the person's colours toward the new scene: a visible, bounded change.
    shift = np.abs(_person_mean(harmonized, eroded, idx) - base).max()
    assert 0.5 < shift < 80


def test_harmonize_needs_a_scene(tmp_path: Path) -> None:
    with pytest.raises(BackdropError) as err:
        replace_background(data_path("videos", "asl", "bird.mkv"), None, tmp_path / "o.webm",
                           ReplaceOptions(output_format="webm", harmonize=0.5))
    assert err.value.code == "incompatible_options"

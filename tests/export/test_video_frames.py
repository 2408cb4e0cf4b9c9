"""Video frames for the DeepLab training (export/video_frames.py) on real shared clips with the real
RVM teacher, and the augmentations added for them (small pasted people, motion blur)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import data_path

from export import video_frames
from export.splits import part_of


def test_pick_is_proportional_with_a_floor():
    idx = video_frames.pick([1000, 100, 10], 110, 8)
    assert [len(i) for i in idx] == [99, 10, 8]  # 110 × 1000/1110, 110 × 100/1110, the floor
    assert idx[0][0] == 0 and idx[0][-1] == 999 and (np.diff(idx[0]) > 0).all()


def test_shared_videos_leave_out_odd_and_rotated():
    videos = video_frames.shared_videos(data_path("videos"))
    names = [v.name for v in videos]
    assert "desk.mp4" in names and "one-by-one-person-detection.mp4" in names and "bird.mkv" in names
    assert "rotated-tag-90.mp4" not in names and all(v.parent.name != "odd" for v in videos)


def test_frames_with_teacher_and_select_davis_only(tmp_path):
    data = data_path("videos").parent
    clip = data_path("videos", "asl", "milk.mkv")
    n_clip = sum(1 for _ in video_frames.frames_of(clip, 128))
    got = video_frames.load_video_frames(data, tmp_path, n_frames=6, long_side=128, davis_stride=15,
                                         min_per_clip=6, videos=[clip])
    cache = tmp_path / "asl-milk-rvm-128.npz"
    assert cache.exists()
    with np.load(cache) as z:
        alphas = z["alpha"]
    assert alphas.shape[0] == n_clip  # the teacher ran over every frame, in order, not only the picked ones
    shared = [i for i, n in enumerate(got.names) if n.startswith("vid-asl-milk-")]
    assert len(shared) == 6
    for i in shared:
        img, mask, teacher = got.imgs[i], got.masks[i], got.teacher[i]
        assert img.dtype == np.uint8 and max(img.shape[:2]) == 128 and mask.shape == teacher.shape == img.shape[:2]
        assert set(np.unique(mask)) <= {0, 255}
        assert ((teacher >= 128) == (mask == 255)).all()
        assert 0.02 < (mask > 0).mean() < 0.9  # a signer is found in the frame
    davis = {n.split("-", 1)[1].rsplit("-", 1)[0] for n in got.names if n.startswith("davis-")}
    all_clips = [p.stem for p in data_path("videos_gt").glob("*.mp4") if not p.stem.endswith("_mask")]
    assert davis == set(part_of(all_clips, "select"))
    assert not davis & set(part_of(all_clips, "holdout"))
    for i, n in enumerate(got.names):
        if n.startswith("davis-"):
            assert np.array_equal(got.masks[i], got.teacher[i]) and got.masks[i].any()
    # a second call reads the teacher's cache and gives the same frames
    again = video_frames.load_video_frames(data, tmp_path, n_frames=6, long_side=128, davis=False,
                                           min_per_clip=6, videos=[clip])
    assert again.names == [got.names[i] for i in shared]
    assert all(np.array_equal(a, got.teacher[i]) for a, i in zip(again.teacher, shared, strict=True))


def test_small_paste_shrinks_the_person_and_its_targets():
    torch = pytest.importorskip("torch")  # noqa: F841 - train_deeplab imports torch
    from export import train_deeplab

    rng = np.random.default_rng(0)
    h, w = 120, 160
    img = np.full((h, w, 3), 200, np.uint8)
    gt = np.zeros((h, w), np.uint8)
    gt[20:100, 40:120] = 255
    teacher = np.full((h, w), 255, np.uint8)
    bg = np.zeros((200, 200, 3), np.uint8)
    for _ in range(10):
        out, m = train_deeplab.paste_small(img, np.dstack([gt, teacher]), bg, rng, 0.5)
        assert out.shape == img.shape and m.shape == (h, w, 2)
        area = (m[..., 0] > 127).sum()
        assert 0.2 * (gt > 0).sum() < area < 0.3 * (gt > 0).sum()  # a quarter of the area
        near = cv2.dilate((m[..., 0] > 0).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        assert (out[~near] == 0).all()  # off the person (and its 3×3 feather): the (black) background photo
        assert (m[..., 1][m[..., 0] == 0] <= 70).all()  # and the teacher's target is background there
        inside = cv2.erode((m[..., 0] == 255).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        assert inside.sum() > 0.15 * (gt > 0).sum() and (out[inside] == 200).all()  # the person, shrunk


def test_motion_blur_spreads_a_dot_along_a_line():
    pytest.importorskip("torch")
    from export import train_deeplab

    img = np.zeros((31, 31, 3), np.uint8)
    img[15, 15] = 255
    for seed in range(5):
        out = train_deeplab.motion_blur(img.astype(np.float32), np.random.default_rng(seed))
        lit = out[..., 0] > 1e-3
        assert lit.sum() >= 3  # smeared over at least 3 px
        assert float(out[..., 0].sum()) == pytest.approx(255.0, rel=0.02)  # the light is kept
        ys, xs = np.nonzero(lit)
        # along one line through the dot: a thin cloud (its second-largest spread is small)
        cov = np.cov(np.stack([ys, xs]).astype(float))
        assert np.linalg.eigvalsh(cov)[0] < 0.6

"""The pack a GPU machine trains from reads, through train_deeplab's own loaders, as the shared data
does: the same select halves, the same training masks, the teacher's alphas whole, nothing held out."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest
from conftest import data_path

pytest.importorskip("torch")  # train_deeplab imports torch

from export import pack_training_data  # noqa: E402
from export.splits import part_of  # noqa: E402
from export.train_deeplab import load_split  # noqa: E402


def _clips(folder) -> list[str]:
    return [p.stem for p in folder.glob("*.mp4") if not p.stem.endswith("_mask")]


def test_pack_reads_like_the_shared_data(tmp_path):
    data = data_path("portraits").parent
    long_side = 400
    train = load_split(data / "portraits" / "train", long_side)
    # a teacher cache as train_deeplab writes it (values made up; only their path through the pack is tested)
    runs = tmp_path / "run"
    (runs / "video-teacher").mkdir(parents=True)
    alphas = {f"a{i}": (np.arange(im.shape[0] * im.shape[1]) % 251).astype(np.uint8).reshape(im.shape[:2])
              for i, im in enumerate(train[0])}
    np.savez(runs / f"teacher-rvm-{long_side}.npz", **alphas)
    np.savez_compressed(runs / "video-teacher" / f"desk-rvm-{long_side}.npz", alpha=np.zeros((2, 3, 4), np.uint8))

    out = tmp_path / "pack"
    pieces = pack_training_data.split(pack_training_data.pack(data, runs, out, long_side), 16)
    assert len(pieces) > 1 and all(p.stat().st_size <= 16 * 2**20 for p in pieces)
    joined = tmp_path / "joined.tar"
    joined.write_bytes(b"".join(p.read_bytes() for p in pieces))
    there = tmp_path / "there"
    with tarfile.open(joined) as tar:
        tar.extractall(there, filter="data")
    packed = there / "data"

    # val: the select half, byte for byte; the held-out half only as empty names
    val, packed_val = data / "portraits" / "val", packed / "portraits" / "val"
    names = [p.stem for p in (val / "images").glob("*.jpg")]
    assert part_of((p.stem for p in (packed_val / "images").glob("*.jpg")), "select") == part_of(names, "select")
    for name in part_of(names, "select"):
        assert (packed_val / "images" / f"{name}.jpg").read_bytes() == (val / "images" / f"{name}.jpg").read_bytes()
    for name in part_of(names, "holdout"):
        assert (packed_val / "images" / f"{name}.jpg").stat().st_size == 0
        assert not (packed_val / "masks" / f"{name}.png").exists()
    assert load_split(packed_val, 0, 0, "select")[2] == load_split(val, 0, 0, "select")[2]

    # train: the same names, sizes and masks as load_split gives on the shared data; images within JPEG's loss
    again = load_split(packed / "portraits" / "train", long_side)
    assert again[2] == train[2]
    for a, b in zip(again[1], train[1], strict=True):
        assert np.array_equal(a, b)
    diff = [np.abs(a.astype(np.int16) - b).mean() for a, b in zip(again[0], train[0], strict=True)]
    assert np.mean(diff) < 3.0 and max(diff) < 8.0  # JPEG quality 88: ~2 levels, more on fine texture

    # clips: select whole, holdout empty; the videos trained on are there
    gt, packed_gt = data / "videos_gt", packed / "videos_gt"
    assert part_of(_clips(packed_gt), "select") == part_of(_clips(gt), "select")
    for name in part_of(_clips(gt), "holdout"):
        assert (packed_gt / f"{name}.mp4").stat().st_size == 0
        assert not (packed_gt / f"{name}_mask.mp4").exists()
    assert (packed / "videos" / "desk.mp4").read_bytes() == (data / "videos" / "desk.mp4").read_bytes()
    assert not (packed / "videos" / "odd").exists()

    # the teacher's alphas, whole
    with np.load(there / "caches" / f"teacher-rvm-{long_side}.npz") as z:
        assert sorted(z.files) == sorted(alphas) and all(np.array_equal(z[k], alphas[k]) for k in alphas)
    assert (there / "caches" / "video-teacher" / f"desk-rvm-{long_side}.npz").exists()


def test_pack_refuses_a_teacher_cache_of_other_images(tmp_path):
    runs = tmp_path / "run"
    runs.mkdir()
    np.savez(runs / "teacher-rvm-400.npz", a0=np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="does not match"):
        pack_training_data.pack(data_path("portraits").parent, runs, tmp_path / "pack", 400)

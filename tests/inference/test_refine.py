"""EdgeRefiner on real portraits: a hard mask stays, a blurred one gets closer to the truth,
temporal smoothing damps flicker without ghosting a moving person."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import data_path

from service.inference.refine import EdgeRefiner

NAMES = 8


def _pairs():
    folder = data_path("portraits", "val")
    paths = sorted((folder / "images").glob("*.jpg"))
    out = []
    for p in paths[:: len(paths) // NAMES][:NAMES]:
        img = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
        gt = (cv2.imread(str(folder / "masks" / f"{p.stem}.png"), cv2.IMREAD_GRAYSCALE) > 127).astype(np.float32)
        out.append((img, gt))
    return out


@pytest.fixture(scope="module")
def pairs():
    return _pairs()


def _band(gt: np.ndarray, r: int = 6) -> np.ndarray:
    k = np.ones((2 * r + 1, 2 * r + 1), np.uint8)
    g = gt.astype(np.uint8)
    return (cv2.dilate(g, k) - cv2.erode(g, k)) > 0


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_hard_mask_stays(pairs):
    for img, gt in pairs:
        out = EdgeRefiner()(img[None], gt[None])[0]
        assert out.dtype == np.float32 and out.shape == gt.shape
        assert np.abs(out - gt).max() < 1e-3


def test_blurred_mask_improves(pairs):
    before, after, iou_before, iou_after = [], [], [], []
    for img, gt in pairs:
        blurred = cv2.GaussianBlur(gt, (0, 0), 4)
        out = EdgeRefiner()(img[None], blurred[None])[0]
        band = _band(gt)
        before.append(np.abs(blurred - gt)[band].mean())
        after.append(np.abs(out - gt)[band].mean())
        iou_before.append(_iou(blurred > 0.5, gt > 0.5))
        iou_after.append(_iou(out > 0.5, gt > 0.5))
    assert np.mean(after) < 0.8 * np.mean(before), (np.mean(before), np.mean(after))
    assert np.mean(iou_after) > np.mean(iou_before) - 0.01


def test_temporal_smoothing_reduces_flicker(pairs):
    img, gt = pairs[0]
    rng = np.random.default_rng(0)
    n = 8
    frames = np.repeat(img[None], n, axis=0)
    soft = cv2.GaussianBlur(gt, (0, 0), 2)
    # a flickering segmenter: the edge moves by a pixel or two, plus noise, from frame to frame
    alphas = np.stack(
        [np.clip(np.roll(soft, int(rng.integers(-2, 3)), axis=1) + rng.normal(0, 0.05, gt.shape), 0, 1) for _ in range(n)]
    ).astype(np.float32)
    out = EdgeRefiner()(frames, alphas)
    flicker_in = np.abs(np.diff(alphas, axis=0)).mean()
    flicker_out = np.abs(np.diff(out, axis=0)).mean()
    assert flicker_out < 0.7 * flicker_in, (flicker_in, flicker_out)


def test_moving_person_no_ghost(pairs):
    img, gt = pairs[1]
    refiner = EdgeRefiner()
    shift = 0
    for _ in range(6):  # the whole picture (person included) moves 12 px per frame
        shift += 12
        frame = np.roll(img, shift, axis=1)
        mask = np.roll(gt, shift, axis=1)
        out = refiner(frame[None], mask[None])[0]
    assert _iou(out > 0.5, mask > 0.5) > 0.98
    refiner.reset()
    assert refiner(img[None], gt[None])[0].shape == gt.shape


def test_refines_into_the_callers_array(pairs):
    """``out=alpha`` (the pipeline's call) gives what a new array gives, batch after batch: the
    previous output the temporal step leans on is the refiner's own copy, not the caller's array,
    which the caller goes on to reuse."""
    img, gt = pairs[2]
    frames = np.stack([np.roll(img, 4 * i, axis=1) for i in range(3)])
    soft = np.stack([cv2.GaussianBlur(np.roll(gt, 4 * i, axis=1), (0, 0), 3) for i in range(3)])
    fresh, in_place = EdgeRefiner(), EdgeRefiner()
    for batch in (slice(0, 2), slice(2, 3)):
        want = fresh(frames[batch], soft[batch])
        given = soft[batch].copy()
        got = in_place(frames[batch], given, out=given)
        assert got is given and np.array_equal(got, want)
        given[:] = 0.0
    with pytest.raises(ValueError):
        EdgeRefiner()(frames, soft, out=np.empty(soft.shape, np.float64))


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        EdgeRefiner()(np.zeros((1, 4, 4, 3), np.float32), np.zeros((1, 4, 4), np.float32))
    with pytest.raises(ValueError):
        EdgeRefiner()(np.zeros((1, 4, 4, 3), np.uint8), np.zeros((1, 5, 4), np.float32))


def test_full_resolution_work_goes_a_strip_at_a_time(pairs) -> None:
    """A 1080p frame refined: the result is the same as upsampling whole maps would give (the
    strips sample as cv2.resize does), and no full-size float work array is made on the way
    (whole-frame maps took 12 frame-sized float planes at the peak; now the output, the kept previous
    output and the masks of unsure pixels)."""
    import tracemalloc

    from service.inference.strips import resized_rows

    img, gt = pairs[0]
    frame = cv2.resize(img, (1920, 1080), interpolation=cv2.INTER_LINEAR)[None]
    soft = cv2.GaussianBlur(cv2.resize(gt, (1920, 1080), interpolation=cv2.INTER_LINEAR), (0, 0), 6)[None]
    refiner = EdgeRefiner()
    refiner(frame, soft)  # the previous output, for the temporal step
    tracemalloc.start()
    try:
        refiner(frame, soft)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5 * 1080 * 1920 * 4, f"{peak / 2**20:.0f} MB"

    small = np.random.default_rng(1).random((61, 107, 3)).astype(np.float32)
    whole = cv2.resize(small, (1920, 1080), interpolation=cv2.INTER_LINEAR)
    rows = np.concatenate([resized_rows(small, 1920, 1080, y, min(1080, y + 64)) for y in range(0, 1080, 64)])
    assert np.abs(rows - whole).max() < 1e-3
    same = np.empty((10, 107, 3), np.float32)
    assert resized_rows(small, 107, 61, 5, 15, dst=same) is same and np.array_equal(same, small[5:15])


def test_work_arrays_stay_in_the_heap_between_frames(pairs) -> None:
    """With the pipeline's malloc settings (``pipeline._return_freed_frames``) a 1080p frame is
    refined without new pages from the kernel once the heap has grown: the refiner's work arrays
    are under the 1 MB mmap threshold, and with glibc's 128 KB trim threshold each one freed at
    the top of the heap went back to the kernel and came back zeroed (1,700-2,200 page faults a
    frame here; 3,600 in a job with every option)."""
    import resource

    from service.pipeline import _return_freed_frames

    _return_freed_frames()
    img, gt = pairs[1]
    frames = np.stack([cv2.resize(np.roll(img, 8 * i, axis=1), (1920, 1080)) for i in range(2)])
    soft = np.stack([cv2.GaussianBlur(cv2.resize(np.roll(gt, 8 * i, axis=1), (1920, 1080)), (0, 0), 6)
                     for i in range(2)])
    refiner, out = EdgeRefiner(), np.empty(soft.shape, np.float32)
    for _ in range(3):
        refiner(frames, soft, out=out)
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    for _ in range(10):
        refiner(frames, soft, out=out)
    per_frame = (resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before) / 20
    assert per_frame < 300, f"{per_frame:.0f} page faults a frame"

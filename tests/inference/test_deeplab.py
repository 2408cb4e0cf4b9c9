"""The committed deeplabv3plus model: val mIoU regression guard and a real video batch."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import data_path
from pydantic import ValidationError

from service.config import Settings, get_settings
from service.inference.models import create_model
from service.inference.models.deeplab import DeepLabV3Plus, working_size

SUBSET = 40  # val images, evenly spread over the (sorted) folder
GUARD = 0.92  # regression guard (issue 4 set 0.88; stage 9 as served by default — flip average, sizes 256+384 — has 0.935 here; model card)


@pytest.fixture(scope="module")
def model() -> DeepLabV3Plus:
    settings = get_settings().model_copy(update={"providers": ["CPUExecutionProvider"], "intra_op_threads": 2})
    m = create_model("deeplabv3plus", settings)
    assert isinstance(m, DeepLabV3Plus)
    return m


def test_working_size():
    assert working_size(480, 854, 320) == (180, 320)
    assert working_size(1920, 1080, 256) == (256, 144)


def _val_miou(model) -> float:
    folder = data_path("portraits", "val")
    paths = sorted((folder / "images").glob("*.jpg"))
    paths = paths[:: len(paths) // SUBSET][:SUBSET]
    counts = np.zeros(4, np.int64)
    for p in paths:
        img = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
        gt = cv2.imread(str(folder / "masks" / f"{p.stem}.png"), cv2.IMREAD_GRAYSCALE) > 127
        matte, state = model.predict(img[None])
        assert state is None and matte.foreground is None
        assert matte.alpha.shape == (1, *gt.shape) and matte.alpha.dtype == np.float32
        pred = matte.alpha[0] > 0.5
        counts += [(pred & gt).sum(), (pred | gt).sum(), (~pred & ~gt).sum(), (~pred | ~gt).sum()]
    return float((counts[0] / counts[1] + counts[2] / counts[3]) / 2)


@pytest.fixture(scope="module")
def val_miou(model) -> float:
    return _val_miou(model)


def test_val_miou(val_miou):
    assert val_miou >= GUARD, f"val mIoU {val_miou:.4f} on {SUBSET} images"


def test_flip_average_makes_the_prediction_mirror_symmetric(model):
    """With the flip average the model's answer for a mirrored frame is the mirrored answer (exactly,
    when the working size needs no padding: 240×320 here); a single pass is not."""
    img = cv2.cvtColor(cv2.imread(str(sorted((data_path("portraits", "val") / "images").glob("*.jpg"))[0])), cv2.COLOR_BGR2RGB)
    img = cv2.resize(img, (320, 240), interpolation=cv2.INTER_AREA)
    frames = np.stack([img, img[:, ::-1]])
    one_size = {"deeplab_long_sides": [320]}
    flipping = create_model("deeplabv3plus", model.settings.model_copy(update=one_size))
    averaged = flipping.predict(frames)[0].alpha
    np.testing.assert_allclose(averaged[1], averaged[0][:, ::-1], atol=1e-5)
    single = create_model("deeplabv3plus", model.settings.model_copy(update={**one_size, "deeplab_flip_average": False}))
    plain = single.predict(frames)[0].alpha
    assert np.abs(plain[1] - plain[0][:, ::-1]).max() > 0.05
    assert np.abs(plain[0] - averaged[0]).max() > 0.01


def test_multi_scale_averages_the_logits_of_each_working_size(model):
    """With several working sizes the alpha is the sigmoid of their mean logits, the smaller sizes'
    resized to the largest one's grid, then resized to the frame; it is neither size alone."""
    img = cv2.cvtColor(cv2.imread(str(sorted((data_path("portraits", "val") / "images").glob("*.jpg"))[1])), cv2.COLOR_BGR2RGB)
    frames = img[None]
    multi = create_model("deeplabv3plus", model.settings.model_copy(update={"deeplab_long_sides": [256, 320]}))
    alpha = multi.predict(frames)[0].alpha[0]
    big, small = multi.logits(frames, 320)[0], multi.logits(frames, 256)[0]
    assert max(big.shape) == 320 and max(small.shape) == 256
    mean = 0.5 * (big + cv2.resize(small, big.shape[::-1], interpolation=cv2.INTER_LINEAR))
    expected = cv2.resize(1.0 / (1.0 + np.exp(-mean)), img.shape[1::-1], interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(alpha, expected, atol=1e-5)
    for side in (256, 320):
        alone = create_model("deeplabv3plus", model.settings.model_copy(update={"deeplab_long_sides": [side]}))
        assert np.abs(alone.predict(frames)[0].alpha[0] - alpha).max() > 0.01


def test_long_sides_setting():
    assert Settings(deeplab_long_sides="256, 320").deeplab_long_sides == [256, 320]
    assert Settings(deeplab_long_sides="[288]").deeplab_long_sides == [288]
    for bad in ("", "8", "256,100000", "big"):
        with pytest.raises(ValidationError):
            Settings(deeplab_long_sides=bad)


def test_video_batch(model):
    cap = cv2.VideoCapture(str(data_path("videos_gt", "lucia.mp4")))
    capm = cv2.VideoCapture(str(data_path("videos_gt", "lucia_mask.mp4")))
    frames, gts = [], []
    for _ in range(4):
        ok, f = cap.read()
        okm, m = capm.read()
        assert ok and okm
        frames.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
        gts.append(cv2.cvtColor(m, cv2.COLOR_BGR2GRAY) > 127)
    cap.release()
    capm.release()
    batch = np.stack(frames)
    matte, _ = model(batch)
    assert matte.alpha.shape == batch.shape[:3]
    assert 0.0 <= matte.alpha.min() and matte.alpha.max() <= 1.0
    for a, g in zip(matte.alpha > 0.5, gts, strict=True):
        assert (a & g).sum() / (a | g).sum() > 0.6


def _lucia(n: int) -> np.ndarray:
    cap = cv2.VideoCapture(str(data_path("videos_gt", "lucia.mp4")))
    frames = []
    for _ in range(n):
        ok, f = cap.read()
        assert ok
        frames.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
    cap.release()
    return np.stack(frames)


def test_temporal_smoothing_carries_the_previous_frame_per_job(model):
    """With a job's state the probability maps are an exponential moving average over the frames, in
    order, across batches; a fresh state (another job) or no state has no memory; a frame of another
    size starts afresh."""
    frames = _lucia(3)
    smoothing = create_model("deeplabv3plus", model.settings.model_copy(update={"deeplab_long_sides": [256]}))
    smoothing.temporal = 0.3
    raw = smoothing.probabilities(frames)
    expected = raw.copy()
    for i in range(1, 3):
        expected[i] = 0.7 * raw[i] + 0.3 * expected[i - 1]
    state = smoothing.new_state()
    first, state = smoothing.predict(frames[:1], state)
    rest, state = smoothing.predict(frames[1:], state)  # the next batch of the same job
    h, w = frames.shape[1:3]
    for i, alpha in enumerate([first.alpha[0], *rest.alpha]):
        np.testing.assert_allclose(alpha, cv2.resize(expected[i], (w, h), interpolation=cv2.INTER_LINEAR).clip(0, 1), atol=1e-5)
    assert np.abs(expected[2] - raw[2]).max() > 0.05  # the smoothing did something
    alone, _ = smoothing.predict(frames[2:], smoothing.new_state())  # another job: no memory
    np.testing.assert_allclose(alone.alpha[0], cv2.resize(raw[2], (w, h), interpolation=cv2.INTER_LINEAR).clip(0, 1), atol=1e-5)
    none, state_none = smoothing.predict(frames[2:])
    assert state_none is None
    np.testing.assert_allclose(none.alpha[0], alone.alpha[0], atol=1e-6)
    small = np.ascontiguousarray(cv2.resize(frames[2], (w // 2, h // 3), interpolation=cv2.INTER_AREA))[None]
    resized, _ = smoothing.predict(small, state)  # another working grid: the old map is dropped
    fresh, _ = smoothing.predict(small, smoothing.new_state())
    np.testing.assert_allclose(resized.alpha, fresh.alpha, atol=1e-6)


def test_temporal_smoothing_is_served_by_default(model):
    assert model.temporal == model.settings.deeplab_temporal == 0.3
    assert create_model("deeplabv3plus", model.settings.model_copy(update={"deeplab_temporal": 0.0})).temporal == 0.0

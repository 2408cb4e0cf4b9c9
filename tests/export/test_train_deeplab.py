"""The DeepLab training script on a few real portraits: a resumed run is the run it continues, the
ONNX warm start begins where the export left off, and the teacher's alpha moves with the image."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import data_path

torch = pytest.importorskip("torch")

from export import train_deeplab  # noqa: E402
from export.deeplab import DeepLabV3Plus  # noqa: E402
from export.export_onnx import export  # noqa: E402

SMALL = ["--limit", "6", "--batch", "3", "--crop", "64", "--scale-min", "64", "--scale-max", "96",
         "--width", "0.35", "--aspp", "16", "--val-long-side", "64", "--val-every", "1", "--threads", "1"]


def _args(tmp, *extra: str) -> list[str]:
    return ["--data-dir", str(data_path("portraits").parent), "--out", str(tmp), *SMALL, *extra]


def _weights(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def test_resumed_run_equals_straight_run(tmp_path):
    straight = train_deeplab.main(_args(tmp_path / "a", "--epochs", "2"))
    train_deeplab.main(_args(tmp_path / "b", "--epochs", "2", "--stop-after", "1"))
    resumed = train_deeplab.main(_args(tmp_path / "b", "--epochs", "2", "--resume"))
    assert [h["epoch"] for h in resumed["history"]] == [0, 1]
    a, b = _weights(tmp_path / "a" / "last.pt"), _weights(tmp_path / "b" / "last.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k
    assert straight["history"][-1]["loss"] == pytest.approx(resumed["history"][-1]["loss"], abs=1e-6)
    assert (tmp_path / "a" / "config.json").exists() and (tmp_path / "a" / "best.pt").exists()


def test_batches_do_not_depend_on_the_process_that_makes_them(tmp_path):
    """Batches made by two worker processes train the very weights that batches made in the training
    process do: each batch's draws come from its own generator."""
    inline = train_deeplab.main(_args(tmp_path / "inline", "--epochs", "2", "--workers", "0"))
    pooled = train_deeplab.main(_args(tmp_path / "pooled", "--epochs", "2", "--workers", "2"))
    a, b = _weights(tmp_path / "inline" / "last.pt"), _weights(tmp_path / "pooled" / "last.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert inline["history"][-1]["loss"] == pooled["history"][-1]["loss"]


def test_time_budget_fits_the_schedule_and_ends_the_run(tmp_path):
    out = train_deeplab.main(_args(tmp_path / "run", "--epochs", "1000", "--time-budget-s", "4",
                                   "--val-every", "4", "--val-every-late", "2"))
    log = (tmp_path / "run" / "train.log").read_text()
    assert "the run is fitted to" in log
    last = out["history"][-1]
    assert 3 <= last["epoch"] + 1 < 1000
    assert "miou" in last  # the last epoch is validated, and last.pt holds it
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=False)["epoch"] == last["epoch"]


def test_fit_epochs_counts_the_validations():
    # 10 s an epoch and nothing else: 100 s hold 10 epochs
    assert train_deeplab.fit_epochs(100, 3, 10.0, 0.0, 1, 1) == 10
    # validated every epoch at 10 s each: half as many
    assert train_deeplab.fit_epochs(100, 3, 10.0, 10.0, 1, 1) == 5
    # validations only in the last quarter (every 10^6 epochs before): 3 + x epochs, 0.25·(3 + x) of them
    # validated; 200 = 10x + 10·0.25·(3 + x) → x = 15.4
    assert train_deeplab.fit_epochs(200, 3, 10.0, 10.0, 10**6, 1) == 15
    assert train_deeplab.fit_epochs(0, 3, 10.0, 10.0, 1, 1) == 1  # at least one more


def test_warm_start_from_onnx_keeps_the_exported_model(tmp_path):
    torch.manual_seed(3)
    model = DeepLabV3Plus(width=0.35, aspp_channels=16)
    path = export(model, tmp_path / "init.onnx", size=(64, 64))
    ref = train_deeplab.evaluate(model, *train_deeplab.load_split(data_path("portraits", "val"), 0, 6, "select")[:2], 64)
    out = train_deeplab.main(_args(tmp_path / "run", "--epochs", "1", "--init-onnx", str(path)))
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"initialised from {path}" in log
    assert out["initial"]["miou"] == pytest.approx(ref["miou"], abs=1e-3)


def test_start_from_movenets_backbone(tmp_path):
    """--init-backbone: MoveNet's 51 backbone convolutions, TensorFlow's padding recorded in the
    checkpoint's config (so the export pads as trained), the backbone at its share of the LR."""
    from export.movenet_backbone import DEFAULT_PATH

    args = [a for a in _args(tmp_path / "run", "--epochs", "1") if a not in ("0.35",)]
    args[args.index("--width") + 1:args.index("--width") + 1] = ["1.5"]
    out = train_deeplab.main([*args, "--init-backbone", str(DEFAULT_PATH), "--backbone-lr", "0.1"])
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"backbone: 51 convolutions from {DEFAULT_PATH}" in log
    ck = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=False)
    assert ck["config"] == {"width": 1.5, "aspp_channels": 16, "low_channels": 48, "same_pad": True}
    assert sorted({g["lr_share"] for g in ck["opt"]["param_groups"]}) == [0.1, 1.0]
    assert "miou" in out["history"][-1]


def test_teacher_channel_follows_the_image_and_the_paste():
    rng = np.random.default_rng(0)
    h, w = 80, 60
    img = np.full((h, w, 3), 200, np.uint8)
    gt = np.zeros((h, w), np.uint8)
    gt[20:60, 15:45] = 255
    teacher = np.full((h, w), 255, np.uint8)  # the teacher calls everything person
    bg = np.zeros((120, 120, 3), np.uint8)
    for _ in range(20):
        x, y = train_deeplab.augment(img, np.dstack([gt, teacher]), [bg], rng, 48, 1.0, (64, 96))
        assert y.shape == (48, 48, 2) and x.shape == (48, 48, 3)
        # always pasted: where the ground truth is background, the background photo (black) shows,
        # and the teacher's target there is background too
        off = y[..., 0] == 0
        assert off.any()
        assert (y[..., 1][off] <= 70).all()  # ≤ 64 one pixel off the mask (its 3×3 feather)
        inside = cv2.erode((y[..., 0] == 255).astype(np.uint8), np.ones((5, 5), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0
        assert inside.any()
        assert (y[..., 1][inside] >= 250).all()  # the person keeps the teacher's alpha


def test_distillation_term():
    logits = torch.zeros(1, 1, 4, 4)
    gt = torch.ones(1, 1, 4, 4)
    soft = torch.zeros(1, 1, 4, 4)
    target = torch.cat([gt, soft], 1)
    plain = train_deeplab.loss_fn(logits, gt)
    assert train_deeplab.loss_fn(logits, target, 0.0) == pytest.approx(float(plain))
    with_kd = train_deeplab.loss_fn(logits, target, 0.5)
    assert float(with_kd) == pytest.approx(float(plain) + 0.5 * float(np.log(2)), rel=1e-5)


def test_colour_jitter_on_the_batch():
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.uniform(0.25, 0.75, (3, 3, 8, 8)).astype(np.float32))
    same = train_deeplab.colour_jitter(x, torch.tensor([[1.0, 1.0, 1.0, 0.0]] * 3))
    assert torch.allclose(same, x, atol=1e-5)
    brighter = train_deeplab.colour_jitter(x, torch.tensor([[1.2, 1.0, 1.0, 0.0]] * 3))
    assert torch.allclose(brighter, x * 1.2, atol=1e-5)
    grey = train_deeplab.colour_jitter(x, torch.tensor([[1.0, 1.0, 0.0, 0.0]] * 3))
    assert torch.allclose(grey[:, 0], grey[:, 1], atol=1e-5) and torch.allclose(grey[:, 1], grey[:, 2], atol=1e-5)
    # a hue turn changes the colours but keeps each pixel's luma (no clipping at these values)
    turned = train_deeplab.colour_jitter(x, torch.tensor([[1.0, 1.0, 1.0, 0.2]] * 3))
    luma = torch.tensor(train_deeplab.LUMA).view(1, 3, 1, 1)
    assert (turned - x).abs().max() > 0.01
    assert torch.allclose((turned * luma).sum(1), (x * luma).sum(1), atol=2e-3)
    # each image its own parameters
    mixed = train_deeplab.colour_jitter(x, torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.2, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]]))
    assert torch.allclose(mixed[0], same[0]) and torch.allclose(mixed[1], brighter[1]) and torch.allclose(mixed[2], grey[2])


def test_pasted_background_is_the_resized_crop():
    """The one-warp paste shows the window of the background that resizing it by s and cropping would."""
    bg = cv2.GaussianBlur(np.random.default_rng(2).integers(0, 256, (90, 120, 3), dtype=np.uint8), (0, 0), 2)
    img = np.zeros((50, 40, 3), np.uint8)
    alpha = np.zeros((50, 40), np.float32)  # all background
    for seed in range(5):
        rng = np.random.default_rng(seed)
        out = train_deeplab.paste_on_background(img, alpha, bg, rng)
        rng = np.random.default_rng(seed)  # the same draws, the slow way
        s = max(50 / 90, 40 / 120) * rng.uniform(1.0, 1.6)
        big = cv2.resize(bg, (int(np.ceil(120 * s)), int(np.ceil(90 * s))), interpolation=cv2.INTER_LINEAR)
        y, x = int(rng.integers(0, big.shape[0] - 50 + 1)), int(rng.integers(0, big.shape[1] - 40 + 1))
        want = big[y : y + 50, x : x + 40]
        if rng.random() < 0.5:
            want = want[:, ::-1]
        diff = np.abs(out.astype(np.int16) - want)
        assert diff.mean() < 0.3 and diff.max() <= 2, seed  # fixed-point rounding apart


def test_fewer_images_than_a_batch_train_one_short_batch(tmp_path):
    out = train_deeplab.main(_args(tmp_path / "run", "--epochs", "1", "--batch", "8"))  # --limit 6
    assert len(out["history"]) == 1 and np.isfinite(out["history"][0]["loss"])


def test_weight_average_is_the_epochs_mean_and_resumes(tmp_path):
    """--swa-from 0: swa.pt holds the mean of the weights at the end of each epoch (batch norms
    measured afresh), and a run stopped and resumed averages the very same weights."""
    out = train_deeplab.main(_args(tmp_path / "a", "--epochs", "2", "--swa-from", "0"))
    train_deeplab.main(_args(tmp_path / "b", "--epochs", "2", "--swa-from", "0", "--stop-after", "1"))
    first = _weights(tmp_path / "b" / "last.pt")  # the weights after epoch 0 of the same schedule
    # each invocation ends with the average so far
    assert torch.load(tmp_path / "b" / "swa.pt", weights_only=False)["val"]["swa_n"] == 1
    train_deeplab.main(_args(tmp_path / "b", "--epochs", "2", "--swa-from", "0", "--resume"))
    second, avg = _weights(tmp_path / "a" / "last.pt"), _weights(tmp_path / "a" / "swa.pt")
    assert out["swa"]["swa_n"] == 2 and "miou" in out["swa"]
    params = dict(DeepLabV3Plus(width=0.35, aspp_channels=16).named_parameters())
    for k in params:
        assert torch.allclose(avg[k], (first[k] + second[k]) / 2, atol=1e-6), k
    stats = [k for k in avg if k.endswith("running_mean")]
    # re-measured: neither the last weights' statistics nor the untrained ones the average was made with
    assert stats and all(not torch.allclose(avg[k], second[k]) and avg[k].abs().sum() > 0 for k in stats)
    resumed = _weights(tmp_path / "b" / "swa.pt")
    for k in avg:
        assert torch.allclose(avg[k].float(), resumed[k].float(), atol=1e-6), k


def test_start_from_a_checkpoint_at_a_constant_lr(tmp_path):
    """--init-checkpoint takes a finished run's network (its config over --width/--aspp) and starts
    where it ended; --swa-lr holds the LR from --swa-from on."""
    train_deeplab.main(_args(tmp_path / "a", "--epochs", "1"))
    best = torch.load(tmp_path / "a" / "best.pt", map_location="cpu", weights_only=False)
    args = _args(tmp_path / "b", "--epochs", "3", "--init-checkpoint", str(tmp_path / "a" / "best.pt"),
                 "--swa-from", "1", "--swa-lr", "1e-4")
    args[args.index("--aspp") + 1] = "32"  # ignored: the checkpoint's network
    out = train_deeplab.main(args)
    assert out["initial"]["miou"] == pytest.approx(best["val"]["miou"], abs=1e-9)
    assert [h["lr"] for h in out["history"]][1:] == [1e-4, 1e-4]
    assert out["history"][0]["lr"] != 1e-4 and out["swa"]["swa_n"] == 2
    assert torch.load(tmp_path / "b" / "swa.pt", weights_only=False)["config"] == best["config"]
    with pytest.raises(SystemExit):
        train_deeplab.parse_args(["--init-checkpoint", "x.pt", "--init-onnx", "y.onnx"])

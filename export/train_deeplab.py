"""Train the DeepLabv3+ / MobileNetV2 person segmenter from scratch, on a CPU or a CUDA GPU.

Data: ``portraits/train`` only for training, the ``select`` half of ``portraits/val`` only for
checkpoint selection (its ``holdout`` half, ``export/splits.py``, is never looked at here)
(``BACKDROP_DATA_DIR`` or ``--data-dir``).  Augmentations: people pasted onto ``backgrounds/``
photos through their (slightly feathered) masks, horizontal flips, random scale + crop, colour jitter.
Loss: BCE + soft dice.  AdamW + one-cycle LR.  Images are decoded and resized once, into memory.

With ``--video-frames N`` (issue 18) the portraits are mixed with ~N frames of the shared videos
(target: the teacher's alpha, RVM run over each whole clip in order) and the frames of the ``select``
DAVIS clips (their ground truth) from ``export/video_frames.py``; ``--video-weight`` is the share of
each epoch's draws that are video frames (an epoch stays as many draws as there are portraits).
``--small-p`` shrinks a pasted person onto the background (small people), ``--motion-blur-p`` blurs
the image along a random line.  ``--val-clips-stride`` also logs the person IoU on the select clips
(not for selection when they are trained on).

Reproducible: every random draw comes from ``--seed`` (per-epoch and per-batch generators, so a
resumed run draws the same batches, whichever ``--workers`` make them); the full config is logged to
``OUT/config.json``.  Resumable: ``OUT/last.pt`` is written every epoch (or every ``--save-every-s``),
``--resume`` continues from it; ``OUT/best.pt`` keeps the best val mIoU.

Weight averaging (SWA, Izmailov et al. 2018): with ``--swa-from E`` the weights at the end of each
epoch from E on are averaged (``torch.optim.swa_utils.AveragedModel``; the average travels in
``last.pt``), at a constant ``--swa-lr`` from E on when given; at the end of each invocation the average's
batch norms are measured afresh on training batches (``update_bn``), it is validated and written to
``OUT/swa.pt`` (as ``best.pt``, for ``export/export_onnx.py``).  An average of points along the
trajectory sits nearer the middle of a flat minimum than any one of them and so generalises better;
``--init-checkpoint`` starts such a phase from a finished run's ``best.pt`` or ``last.pt``.

On a GPU (``--device cuda --amp``) batches are made by ``--workers`` processes (augmentation is CPU
work: about 700 crops of 256 px a second per core; the colour jitter is then batched on the GPU) and
``--time-budget-s`` fits the LR schedule to the time a lent machine has;
``export/pack_training_data.py`` and ``export/train_on_gpu.sh`` carry the data there and run it (the
model card has the commands).

mIoU here: intersection and union of the thresholded (p > 0.5) prediction with the ground truth,
summed over all val pixels at the original image size, per class (person, background); the mean of
the two class IoUs.  The per-image variant (mean over images of the per-image mIoU) is logged too.

    .venv/bin/python -m export.train_deeplab --out runs/deeplab --epochs 60 --threads 2
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, update_bn

from export.deeplab import DeepLabV3Plus
from export.splits import part_of

log = logging.getLogger("train_deeplab")


# ------------------------------------------------------------------------------------------------
# data
def _resize_long(img: np.ndarray, long_side: int, interp: int = cv2.INTER_AREA) -> np.ndarray:
    h, w = img.shape[:2]
    s = long_side / max(h, w)
    if abs(s - 1.0) < 1e-6:
        return img
    return cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=interp)


def load_split(
    root: Path, long_side: int, limit: int = 0, part: str = "all"
) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """RGB uint8 images and uint8 (0/255) masks resized to ``long_side`` (0 = keep); ``part`` of
    them (``export/splits.py``: ``select`` for choices, ``holdout`` never)."""
    names = part_of((p.stem for p in (root / "images").glob("*.jpg")), part)
    if limit:
        names = names[:limit]
    imgs, masks = [], []
    for n in names:
        img = cv2.cvtColor(cv2.imread(str(root / "images" / f"{n}.jpg")), cv2.COLOR_BGR2RGB)
        m = cv2.imread(str(root / "masks" / f"{n}.png"), cv2.IMREAD_GRAYSCALE)
        if long_side:
            img = _resize_long(img, long_side)
            m = _resize_long(m, long_side, cv2.INTER_LINEAR)
        imgs.append(img)
        masks.append(m)
    return imgs, masks, names


def load_backgrounds(folder: Path, long_side: int) -> list[np.ndarray]:
    out = []
    for p in sorted(folder.glob("*.jpg")):
        img = cv2.imread(str(p))
        if img is not None:
            out.append(cv2.cvtColor(_resize_long(img, long_side), cv2.COLOR_BGR2RGB))
    return out


LUMA = (0.299, 0.587, 0.114)
HUE_MAX = math.radians(12.0)  # OpenCV's ±6 of 180 hue steps


def jitter_params(rng: np.random.Generator) -> tuple[float, float, float, float]:
    """One image's colour jitter: brightness and contrast factors, saturation (0: grey, 5 % of
    images) and a hue rotation in radians (half the images: none); ``colour_jitter`` applies them."""
    brightness, contrast = rng.uniform(0.7, 1.3), rng.uniform(0.7, 1.3)
    saturation = 0.0 if rng.random() < 0.05 else rng.uniform(0.7, 1.3)
    hue = rng.uniform(-HUE_MAX, HUE_MAX) if rng.random() < 0.5 else 0.0
    return brightness, contrast, saturation, hue


def colour_jitter(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Images (N, 3, H, W) in [0, 1] jittered by ``params`` (N, 4) from ``jitter_params``, on whatever
    device they are: brightness, contrast about the image's mean, saturation about its luma, and the
    hue turned about the grey axis (a rotation of YIQ's chroma plane, which keeps the luma), then
    clipped.  All four are linear in the colour, so each image gets one 3×3 matrix and one offset:
    x' = H·S·(c·b·x + (1 − c)·b·mean(x)), two passes over the batch.  Batched on the training device
    because per image on the CPU this was a quarter of a crop's cost."""
    p = params.to(x.device, torch.float32)
    b, c, s, hue = p[:, 0], p[:, 1], p[:, 2], p[:, 3]
    n = len(p)
    eye = torch.eye(3, device=x.device).expand(n, 3, 3)
    luma = torch.tensor(LUMA, device=x.device)
    sat = s.view(n, 1, 1) * eye + (1 - s).view(n, 1, 1) * luma.view(1, 1, 3).expand(n, 3, 3)
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], device=x.device)
    rot = torch.zeros(n, 3, 3, device=x.device)
    rot[:, 0, 0] = 1.0
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = torch.cos(hue), -torch.sin(hue), torch.sin(hue), torch.cos(hue)
    colour = torch.linalg.inv(to_yiq) @ rot @ to_yiq @ sat  # (N, 3, 3)
    mean = x.mean(dim=(1, 2, 3))
    offset = colour.sum(2) * ((1 - c) * b * mean).view(n, 1)  # colour applied to the grey (1 - c)·b·mean
    out = torch.einsum("nij,njhw->nihw", colour * (c * b).view(n, 1, 1), x) + offset.view(n, 3, 1, 1)
    return out.clamp_(0.0, 1.0)


def paste_alpha(mask: np.ndarray) -> np.ndarray:
    """The (H, W) float32 alpha a person is pasted through: the uint8 mask, slightly feathered."""
    return cv2.GaussianBlur(mask, (3, 3), 0).astype(np.float32) / 255.0


def paste_on_background(img: np.ndarray, alpha: np.ndarray, bg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``img`` over a random crop of ``bg`` through ``alpha`` ((H, W) float in [0, 1], see ``paste_alpha``).
    The background is scaled by ``s`` (1–1.6× the least that covers the image) and a window of the
    image's size taken at a random place: one warp makes just that window (the scale as
    ``cv2.resize`` maps pixel centres), and one blend, both in OpenCV."""
    h, w = img.shape[:2]
    bh, bw = bg.shape[:2]
    s = max(h / bh, w / bw) * rng.uniform(1.0, 1.6)
    sh, sw = math.ceil(bh * s), math.ceil(bw * s)  # the scaled size; per axis, its own exact scale
    y, x = int(rng.integers(0, sh - h + 1)), int(rng.integers(0, sw - w + 1))
    fx, fy = sw / bw, sh / bh
    m = np.array([[fx, 0, 0.5 * fx - 0.5 - x], [0, fy, 0.5 * fy - 0.5 - y]], np.float64)
    bg = cv2.warpAffine(bg, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    if rng.random() < 0.5:
        bg = cv2.flip(bg, 1)
    return cv2.blendLinear(np.ascontiguousarray(img), bg, alpha, 1.0 - alpha)


def paste_small(img: np.ndarray, mask: np.ndarray, bg: np.ndarray, rng: np.random.Generator,
                factor: float) -> tuple[np.ndarray, np.ndarray]:
    """The person of ``img`` (through its feathered ground truth, ``mask[..., 0]`` or ``mask``) shrunk
    by ``factor`` and pasted at a random place of a background crop of the image's size: small people.
    ``mask`` (ground truth, and the teacher's alpha if there is one) is shrunk and placed the same way,
    zero elsewhere."""
    h, w = img.shape[:2]
    sh, sw = max(1, round(h * factor)), max(1, round(w * factor))
    small = cv2.resize(img, (sw, sh), interpolation=cv2.INTER_AREA)
    small_mask = cv2.resize(mask, (sw, sh), interpolation=cv2.INTER_AREA)
    if small_mask.ndim == 2 and mask.ndim == 3:
        small_mask = small_mask[..., None]
    y, x = int(rng.integers(0, h - sh + 1)), int(rng.integers(0, w - sw + 1))
    canvas = np.zeros_like(img)
    canvas[y : y + sh, x : x + sw] = small
    placed = np.zeros_like(mask)
    placed[y : y + sh, x : x + sw] = small_mask
    gt = placed if placed.ndim == 2 else placed[..., 0]
    alpha = paste_alpha(gt)
    out = paste_on_background(canvas, alpha, bg, rng)
    if placed.ndim == 3:
        placed = np.dstack([gt, (placed[..., 1] * alpha).astype(np.uint8)])
    return out, placed


def motion_blur(img: np.ndarray, rng: np.random.Generator, max_len: int = 15) -> np.ndarray:
    """A linear motion blur of random length (3..max_len px) and direction."""
    n = int(rng.integers(3, max_len + 1))
    k = np.zeros((n, n), np.float32)
    k[n // 2, :] = 1.0
    rot = cv2.getRotationMatrix2D(((n - 1) / 2, (n - 1) / 2), float(rng.uniform(0, 180)), 1.0)
    k = cv2.warpAffine(k, rot, (n, n))
    k /= max(k.sum(), 1e-6)
    return cv2.filter2D(img, -1, k, borderType=cv2.BORDER_REFLECT)


def augment(img, mask, bgs, rng, crop: int, paste_p: float, scale: tuple[int, int], small_p: float = 0.0,
            small_range: tuple[float, float] = (0.3, 0.75), blur_p: float = 0.0):
    """``mask``: (H, W) ground truth, or (H, W, 2) ground truth + teacher alpha (moved together).
    ``small_p``: the chance that a pasted person is first shrunk by a factor in ``small_range``
    (``paste_small``); ``blur_p``: the chance of a motion blur of the image (the mask is kept)."""
    if bgs and rng.random() < paste_p:
        bg = bgs[int(rng.integers(len(bgs)))]
        if small_p and rng.random() < small_p:
            img, mask = paste_small(img, mask, bg, rng, float(rng.uniform(*small_range)))
        else:
            gt = mask if mask.ndim == 2 else mask[..., 0]
            alpha = paste_alpha(gt)
            img = paste_on_background(img, alpha, bg, rng)
            if mask.ndim == 3:  # the teacher saw the original background: off the person it is now wrong
                mask = np.dstack([gt, (mask[..., 1] * alpha).astype(np.uint8)])
    long_side = int(rng.integers(scale[0], scale[1] + 1))
    img = _resize_long(img, long_side, cv2.INTER_LINEAR)
    mask = _resize_long(mask, long_side, cv2.INTER_LINEAR)
    h, w = mask.shape[:2]
    ph, pw = max(0, crop - h), max(0, crop - w)
    if ph or pw:  # zero padding, as at inference
        top, left = int(rng.integers(0, ph + 1)), int(rng.integers(0, pw + 1))
        img = cv2.copyMakeBorder(img, top, ph - top, left, pw - left, cv2.BORDER_CONSTANT, value=0)
        mask = cv2.copyMakeBorder(mask, top, ph - top, left, pw - left, cv2.BORDER_CONSTANT, value=0)
        h, w = mask.shape[:2]
    y, x = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
    img, mask = img[y : y + crop, x : x + crop], mask[y : y + crop, x : x + crop]
    if rng.random() < 0.5:
        img, mask = img[:, ::-1], mask[:, ::-1]
    if blur_p and rng.random() < blur_p:
        img = motion_blur(np.ascontiguousarray(img), rng)
    return img, mask  # colour jitter: on the batch (colour_jitter)


def make_batch(data, idx, bgs, rng, args, teacher=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 images (N, C, C, 3) and targets (N, C, C, 1), or (N, C, C, 2) with the teacher's alpha
    as the second channel when ``teacher`` (one uint8 alpha per training image) is given, and each
    image's colour jitter (N, 4) (``jitter_params``).  ``as_float`` makes images and targets the
    network's [0, 1] floats and layout where they train (uint8 crosses process and device boundaries
    4× cheaper; the permute there gives the channels-last layout a GPU wants), ``colour_jitter`` then
    jitters the images."""
    imgs, masks = data[0], data[1]
    xs, ys, jitter = [], [], []
    for i in idx:
        m = masks[i] if teacher is None else np.dstack([masks[i], teacher[i]])
        x, y = augment(imgs[i], m, bgs, rng, args.crop, args.paste_p, (args.scale_min, args.scale_max),
                       getattr(args, "small_p", 0.0), blur_p=getattr(args, "motion_blur_p", 0.0))
        xs.append(x)
        ys.append(y if y.ndim == 3 else y[..., None])
        jitter.append(jitter_params(rng))
    return (torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys)),
            torch.tensor(jitter, dtype=torch.float32))


def as_float(t: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """A uint8 (N, H, W, C) batch from ``make_batch`` as float32 (N, C, H, W) in [0, 1] on ``device``
    (channels-last in memory)."""
    return t.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)


def training_images(x: torch.Tensor, jitter: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """``make_batch``'s images as the network trains on them: floats on ``device``, colour-jittered."""
    return colour_jitter(as_float(x, device), jitter)


class Batches(torch.utils.data.Dataset):
    """Training batch number ``step`` of the run (epoch ``step // steps``), the same whichever process
    makes it: the epoch's draw order comes from the generator ``[seed, epoch]`` and the batch's
    augmentations from ``[seed, epoch, b]``, so batches can be made in worker processes in any order,
    and a resumed run draws exactly the batches the uninterrupted one would have."""

    def __init__(self, train, bgs, args, teacher, weights, n: int, steps: int):
        self.train, self.bgs, self.args, self.teacher = train, bgs, args, teacher
        self.weights, self.n, self.steps = weights, n, steps
        self._epoch, self._order = -1, np.empty(0, np.int64)

    def order(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            rng = np.random.default_rng([self.args.seed, epoch])
            if self.weights is None:
                self._order = rng.permutation(self.n)
            else:  # oversampled prefixes: an epoch draws n images with replacement, by weight
                self._order = rng.choice(len(self.weights), size=self.n, replace=True, p=self.weights)
            self._epoch = epoch
        return self._order

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        epoch, b = divmod(int(step), self.steps)
        idx = self.order(epoch)[b * self.args.batch : (b + 1) * self.args.batch]
        rng = np.random.default_rng([self.args.seed, epoch, b])
        return make_batch(self.train, idx, self.bgs, rng, self.args, self.teacher)


def cached_teacher_alphas(cache: Path, imgs: list[np.ndarray]) -> list[np.ndarray] | None:
    """The alphas in ``cache`` (as ``teacher_alphas`` writes it), or None unless there is one of the
    size of each image in ``imgs``."""
    with np.load(cache) as z:
        out = [z[f"a{i}"] for i in range(len(z.files))]
    if len(out) == len(imgs) and all(a.shape == im.shape[:2] for a, im in zip(out, imgs, strict=True)):
        return out
    return None


def teacher_alphas(imgs: list[np.ndarray], cache: Path, model_name: str = "rvm") -> list[np.ndarray]:
    """The teacher model's alpha (uint8) for each training image, as the service computes it (one
    frame, fresh recurrent state); cached in ``cache`` because it costs minutes on a CPU."""
    if cache.exists():
        out = cached_teacher_alphas(cache, imgs)
        if out is not None:
            return out
        log.info("teacher cache %s does not match the training images: recomputing", cache)
    from service.inference.models import create_model

    teacher = create_model(model_name)
    teacher.load()
    t0 = time.time()
    out = []
    for img in imgs:
        matte, _ = teacher.predict(img[None], teacher.new_state())
        out.append(np.clip(matte.alpha[0] * 255.0 + 0.5, 0, 255).astype(np.uint8))
    np.savez(cache, **{f"a{i}": a for i, a in enumerate(out)})
    log.info("teacher %s: %d alphas in %.0fs, cached in %s", model_name, len(out), time.time() - t0, cache)
    return out


# ------------------------------------------------------------------------------------------------
# evaluation
def pad16(x: np.ndarray, multiple: int = 16) -> tuple[np.ndarray, int, int]:
    h, w = x.shape[:2]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = cv2.copyMakeBorder(x, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=0)
    return x, h, w


@torch.no_grad()
def predict_prob(model: torch.nn.Module, img: np.ndarray, long_side: int) -> np.ndarray:
    """Probability map at the image's size, the way the service runs the model."""
    h0, w0 = img.shape[:2]
    small = _resize_long(img, long_side, cv2.INTER_AREA if max(h0, w0) > long_side else cv2.INTER_LINEAR)
    padded, h, w = pad16(small)
    device = next(model.parameters()).device
    x = as_float(torch.from_numpy(padded)[None], device)
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False):  # sizes vary
        prob = torch.sigmoid(model(x).float())[0, 0, :h, :w].cpu().numpy()
    return cv2.resize(prob, (w0, h0), interpolation=cv2.INTER_LINEAR)


def iou_counts(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """[inter_person, union_person, inter_bg, union_bg] for boolean maps."""
    return np.array([(pred & gt).sum(), (pred | gt).sum(), (~pred & ~gt).sum(), (~pred | ~gt).sum()], np.int64)


def miou_from_counts(c: np.ndarray) -> tuple[float, float, float]:
    person = c[0] / max(c[1], 1)
    bg = c[2] / max(c[3], 1)
    return float((person + bg) / 2), float(person), float(bg)


def evaluate(model: torch.nn.Module, imgs, masks, long_side: int) -> dict:
    model.eval()
    total = np.zeros(4, np.int64)
    per_image = []
    for img, m in zip(imgs, masks, strict=True):
        pred = predict_prob(model, img, long_side) > 0.5
        c = iou_counts(pred, m > 127)
        total += c
        per_image.append(miou_from_counts(c)[0])
    miou, person, bg = miou_from_counts(total)
    return {"miou": miou, "iou_person": person, "iou_bg": bg, "miou_per_image": float(np.mean(per_image))}


def load_val_clips(gt_dir: Path, stride: int) -> list[tuple[str, list[np.ndarray], list[np.ndarray]]]:
    """Every ``stride``-th frame (RGB) and mask of each ``select`` DAVIS clip (never ``holdout``)."""
    from export.video_frames import frames_of

    out = []
    for name in part_of((p.stem for p in gt_dir.glob("*.mp4") if not p.stem.endswith("_mask")), "select"):
        frames = list(frames_of(gt_dir / f"{name}.mp4", 0))[::stride]
        masks = [m > 127 for m in list(frames_of(gt_dir / f"{name}_mask.mp4", 0, gray=True))[::stride]]
        out.append((name, frames, masks))
    return out


def evaluate_clips(model: torch.nn.Module, clips, long_side: int) -> float:
    """Mean over clips of the mean person IoU over their frames (one pass, no flip)."""
    model.eval()
    per_clip = []
    for _, frames, masks in clips:
        ious = []
        for f, m in zip(frames, masks, strict=True):
            pred = predict_prob(model, f, long_side) > 0.5
            ious.append((pred & m).sum() / max((pred | m).sum(), 1))
        per_clip.append(float(np.mean(ious)))
    return float(np.mean(per_clip))


# ------------------------------------------------------------------------------------------------
def loss_fn(logits: torch.Tensor, target: torch.Tensor, kd_weight: float = 0.0) -> torch.Tensor:
    """BCE + soft dice against the ground truth (channel 0 of ``target``); with a teacher's alpha in
    channel 1, plus ``kd_weight`` × BCE against that soft target (pixel-wise distillation)."""
    gt = target[:, :1]
    bce = F.binary_cross_entropy_with_logits(logits, gt)
    p = torch.sigmoid(logits)
    inter = (p * gt).sum(dim=(1, 2, 3))
    dice = 1 - (2 * inter + 1) / (p.sum(dim=(1, 2, 3)) + gt.sum(dim=(1, 2, 3)) + 1)
    loss = bce + dice.mean()
    if kd_weight and target.shape[1] > 1:
        loss = loss + kd_weight * F.binary_cross_entropy_with_logits(logits, target[:, 1:2])
    return loss


def sample_weights(names: list[str], spec: str) -> np.ndarray | None:
    """Per-image sampling probabilities from ``prefix=weight`` pairs (None: uniform, no replacement)."""
    if not spec:
        return None
    table = {k: float(v) for k, v in (item.split("=") for item in spec.split(","))}
    w = np.array([next((v for k, v in table.items() if name.startswith(k)), 1.0) for name in names], np.float64)
    return w / w.sum()


def one_cycle_lr(step: int, total: int, max_lr: float, warm: float = 0.08, div: float = 20, final_div: float = 200) -> float:
    """One-cycle LR (as torch's OneCycleLR, cosine both ways) as a pure function of the step, so a
    run resumed with a different ``--epochs`` continues on the stretched schedule."""
    start, end = max_lr / div, max_lr / div / final_div
    t = step / max(total, 1)
    if t < warm:
        lo, hi, f = start, max_lr, t / warm
    else:
        lo, hi, f = max_lr, end, min(1.0, (t - warm) / (1 - warm))
    return hi + (lo - hi) * (1 + math.cos(math.pi * f)) / 2


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=None, help="shared data folder (default: settings.data_dir)")
    ap.add_argument("--out", type=Path, default=Path("runs/deeplab"))
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--crop", type=int, default=224)
    ap.add_argument("--scale-min", type=int, default=200, help="least long side before cropping")
    ap.add_argument("--scale-max", type=int, default=400, help="largest long side before cropping")
    ap.add_argument("--paste-p", type=float, default=0.5, help="chance of pasting the person on a background")
    ap.add_argument("--oversample", default="", help="name-prefix weights, e.g. 'sup-=3,hs-=1.5' (default: uniform)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--weight-decay", type=float, default=1e-2)
    ap.add_argument("--width", type=float, default=0.5, help="MobileNetV2 width multiplier")
    ap.add_argument("--aspp", type=int, default=128, help="ASPP / decoder channels")
    ap.add_argument("--val-long-side", type=int, default=320, help="working size at validation, one pass without flip (checkpoint selection; the service's sizes: settings.deeplab_long_sides)")
    ap.add_argument("--val-every", type=int, default=2, help="validate every N epochs (every --val-every-late in the last 25%%)")
    ap.add_argument("--val-every-late", type=int, default=1, help="validate every N epochs in the last 25%%")
    ap.add_argument("--threads", type=int, default=2, help="torch's CPU threads")
    ap.add_argument("--device", default="cpu", help="where the network trains: cpu, cuda, cuda:1, ...")
    ap.add_argument("--workers", type=int, default=1,
                    help="processes that make batches ahead of the step (0: in the training process)")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast on a CUDA device (weights stay fp32)")
    ap.add_argument("--time-budget-s", type=float, default=0,
                    help="fit the run to this many seconds: --epochs is a first guess, refitted from the measured "
                         "epoch and validation times after three epochs and at each validation of the first "
                         "60%% (the LR schedule then spans the budget); the run ends at it in any case")
    ap.add_argument("--save-every-s", type=float, default=0,
                    help="write OUT/last.pt at most this often (0: every epoch; always after the last)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=0, help="use only N train/val images (smoke tests)")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    ap.add_argument("--init-onnx", type=Path, default=None,
                    help="start from the weights of this export (same --width/--aspp; see export/onnx_weights.py)")
    ap.add_argument("--init-checkpoint", type=Path, default=None,
                    help="start from the weights of an earlier run's best.pt / last.pt (its network config, "
                         "not --width/--aspp; a fresh optimiser)")
    ap.add_argument("--swa-from", type=int, default=-1,
                    help="average the weights at the end of each epoch from this one on, and write the "
                         "average (batch norms re-measured) to OUT/swa.pt after the last (-1: off)")
    ap.add_argument("--swa-lr", type=float, default=0.0,
                    help="constant LR from --swa-from on (0: the one-cycle schedule throughout)")
    ap.add_argument("--init-backbone", type=Path, default=None,
                    help="start the MobileNetV2 from MoveNet's (its ONNX file, service/inference/weights/"
                         "movenet_multipose.onnx; needs --width 1.5; export/movenet_backbone.py)")
    ap.add_argument("--backbone-lr", type=float, default=1.0,
                    help="the backbone's LR as a share of --lr (below 1 keeps an --init-backbone's features)")
    ap.add_argument("--stop-after", type=int, default=0,
                    help="end this invocation after N epochs (continue later with --resume)")
    ap.add_argument("--teacher", default="", help="distil from this model's alpha as well (e.g. rvm)")
    ap.add_argument("--kd-weight", type=float, default=0.5, help="weight of the teacher's BCE term")
    ap.add_argument("--video-frames", type=int, default=0,
                    help="train on ~N frames of the shared videos (the teacher's alpha as target, --teacher or rvm) "
                         "and the select DAVIS clips (their ground truth); export/video_frames.py")
    ap.add_argument("--video-weight", type=float, default=0.35,
                    help="share of each epoch's draws that are video frames (with --video-frames)")
    ap.add_argument("--davis-stride", type=int, default=1, help="every Nth frame of the select DAVIS clips")
    ap.add_argument("--small-p", type=float, default=0.0,
                    help="chance that a pasted person is shrunk to 0.3-0.75 of the image first (small people)")
    ap.add_argument("--motion-blur-p", type=float, default=0.0, help="chance of a linear motion blur")
    ap.add_argument("--val-clips-stride", type=int, default=0,
                    help="also report mean person IoU on every Nth frame of the select DAVIS clips (0: off; "
                         "these clips are trained on with --video-frames, so it is not used for selection)")
    args = ap.parse_args(argv)
    if args.init_checkpoint and (args.init_onnx or args.init_backbone):
        ap.error("--init-checkpoint starts from a whole network: not with --init-onnx or --init-backbone")
    if args.data_dir is None:  # the service's one data setting (needs its configuration packages)
        from service.config import get_settings

        args.data_dir = Path(get_settings().data_dir)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")  # the console, unless set up already
    log.setLevel(logging.INFO)
    file_log = logging.FileHandler(args.out / "train.log")  # every run's own log, whoever set up logging
    file_log.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(file_log)
    try:
        return fit(args)
    finally:
        log.removeHandler(file_log)
        file_log.close()


def fit(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(1)
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    config["torch"] = torch.__version__
    log.info("config %s", json.dumps(config, sort_keys=True))
    last = args.out / "last.pt"
    resuming = args.resume and last.exists()
    name = f"config.resume-{int(time.time())}.json" if resuming else "config.json"
    (args.out / name).write_text(json.dumps(config, indent=2, sort_keys=True))

    t0 = time.time()
    portraits = args.data_dir / "portraits"
    train = load_split(portraits / "train", args.scale_max, args.limit)
    teacher = teacher_alphas(train[0], args.out / f"teacher-{args.teacher}-{args.scale_max}.npz", args.teacher) if args.teacher else None
    # checkpoints are chosen on the select half of val; the holdout half is for reported figures only
    val_imgs, val_masks, _ = load_split(portraits / "val", 0, args.limit, "select")
    bgs = load_backgrounds(args.data_dir / "backgrounds", 640)
    log.info("loaded %d train, %d val, %d backgrounds in %.1fs", len(train[0]), len(val_imgs), len(bgs), time.time() - t0)
    n_portraits = len(train[0])
    weights = sample_weights(train[2], args.oversample)
    if args.video_frames:
        from export.video_frames import load_video_frames

        vf = load_video_frames(args.data_dir, args.out / "video-teacher", args.video_frames, args.scale_max,
                               args.teacher or "rvm", args.davis_stride)
        train = (train[0] + vf.imgs, train[1] + vf.masks, train[2] + vf.names)
        if teacher is not None:
            teacher = teacher + vf.teacher
        base = weights if weights is not None else np.full(n_portraits, 1.0 / n_portraits)
        weights = np.concatenate([base * (1 - args.video_weight), np.full(len(vf), args.video_weight / len(vf))])
    val_clips = load_val_clips(args.data_dir / "videos_gt", args.val_clips_stride) if args.val_clips_stride else []

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    start = torch.load(args.init_checkpoint, map_location="cpu", weights_only=False) if args.init_checkpoint else None
    if start is not None:
        model = DeepLabV3Plus(**start["config"])
    else:
        model = DeepLabV3Plus(args.width, args.aspp, same_pad=bool(args.init_backbone))
    model_config = dict(model.config)
    params = sum(p.numel() for p in model.parameters())
    log.info("model %s: %.2f M params, training on %s", model_config, params / 1e6, device)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True  # the training crops are all one size
    initial = None  # val metrics of the --init-onnx (--init-backbone, --init-checkpoint) starting point
    if start is not None and not resuming:
        model.load_state_dict(start["model"])
        initial = evaluate(model, val_imgs, val_masks, args.val_long_side)
        log.info("initialised from %s (epoch %s): %s", args.init_checkpoint, start.get("epoch"), json.dumps(initial))
    if (args.init_onnx or args.init_backbone) and not resuming:
        from export.onnx_weights import load_onnx_weights, recalibrate_batch_norms

        if args.init_onnx:
            load_onnx_weights(model, args.init_onnx)
        else:
            from export.movenet_backbone import load_movenet_backbone

            log.info("backbone: %d convolutions from %s", load_movenet_backbone(model, args.init_backbone),
                     args.init_backbone)
        recalibrate_batch_norms(model, calibration_images(train, bgs, args, device, 10**6, 8 * args.batch))
        initial = evaluate(model, val_imgs, val_masks, args.val_long_side)
        if val_clips:
            initial["clip_iou"] = evaluate_clips(model, val_clips, args.val_long_side)
        log.info("initialised from %s: %s", args.init_onnx or args.init_backbone, json.dumps(initial))
    opt = torch.optim.AdamW(param_groups(model, args.weight_decay, args.backbone_lr), lr=args.lr)
    n = n_portraits  # an epoch: as many draws as there are portraits (with replacement when weighted)
    steps = max(1, n // args.batch)  # fewer images than a batch (--limit): one short batch an epoch
    total_steps = args.epochs * steps
    start_epoch, best, history = 0, -1.0, []
    swa = AveragedModel(model) if args.swa_from >= 0 else None
    if resuming:
        ck = torch.load(last, map_location=device, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        if swa is not None and "swa" in ck:
            swa.load_state_dict(ck["swa"])
        start_epoch, best, history = ck["epoch"] + 1, ck["best"], ck["history"]
        if ck.get("total_steps", total_steps) != total_steps:
            log.info("epochs changed on resume: the LR schedule is stretched to %d epochs", args.epochs)
        log.info("resumed from %s at epoch %d (best %.4f)", last, start_epoch, best)

    batches = torch.utils.data.DataLoader(
        Batches(train, bgs, args, teacher, weights, n, steps), batch_size=None,
        sampler=itertools.count(start_epoch * steps), num_workers=args.workers,
        prefetch_factor=4 if args.workers else None, pin_memory=device.type == "cuda",
    )
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.amp and device.type == "cuda")
    def end_epoch() -> int:  # --epochs may be refitted to the time budget
        return min(args.epochs, start_epoch + args.stop_after) if args.stop_after else args.epochs

    deadline = time.time() + args.time_budget_s if args.time_budget_s else math.inf
    saved, epoch, it = 0.0, start_epoch, iter(batches)
    train_times: list[float] = []  # seconds, this invocation's epochs (training only) and validations
    val_times: list[float] = []
    while epoch < end_epoch():
        te = time.time()
        torch.manual_seed(args.seed * 1000 + epoch)
        model.train()
        total = torch.zeros((), device=device)
        for b in range(steps):
            lr = args.swa_lr if args.swa_lr and swa is not None and epoch >= args.swa_from else \
                one_cycle_lr(epoch * steps + b, total_steps, args.lr)
            for g in opt.param_groups:
                g["lr"] = lr * g.get("lr_share", 1.0)
            x, y, jitter = next(it)
            x, y = training_images(x, jitter, device), as_float(y, device)
            with autocast:
                logits = model(x)
            loss = loss_fn(logits.float(), y, args.kd_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
        rec = {"epoch": epoch, "loss": float(total) / steps, "lr": lr, "train_s": time.time() - te}
        if swa is not None and epoch >= args.swa_from:
            swa.update_parameters(model)
            rec["swa_n"] = int(swa.n_averaged)
        train_times.append(rec["train_s"])
        fit_now = bool(args.time_budget_s) and epoch == start_epoch + 2  # the first fit: validate to time it
        out_of_time = time.time() >= deadline
        final = epoch + 1 >= end_epoch() or out_of_time
        every = args.val_every_late if epoch >= int(args.epochs * 0.75) else args.val_every
        validate = (epoch + 1) % every == 0 or final or fit_now
        if validate:
            tv = time.time()
            rec.update(evaluate(model, val_imgs, val_masks, args.val_long_side))
            if val_clips:
                rec["clip_iou"] = evaluate_clips(model, val_clips, args.val_long_side)
            rec["val_s"] = time.time() - tv
            val_times.append(rec["val_s"])
            if rec["miou"] > best:
                best = rec["miou"]
                # whole: train_on_gpu.sh copies it out while the run goes on
                _save_whole({"model": _cpu(model.state_dict()), "config": model_config, "epoch": epoch, "val": rec},
                            args.out / "best.pt")
        # fit the schedule to the budget after three epochs, and again at each validation of the first
        # 60 % (the first epochs and the first validation carry start-up: medians, the first left out)
        if args.time_budget_s and not final and validate and epoch >= start_epoch + 2 and epoch < 0.6 * args.epochs:
            per_epoch = float(np.median(train_times[1:]))
            per_val = float(np.median(val_times[1:] or val_times))
            fitted = epoch + 1 + fit_epochs(deadline - time.time(), epoch + 1, per_epoch, per_val,
                                            args.val_every, args.val_every_late)
            if abs(fitted - args.epochs) > 0.01 * args.epochs:
                log.info("%.2fs an epoch, %.2fs a validation: the run is fitted to %d epochs in %.0fs",
                         per_epoch, per_val, fitted, args.time_budget_s)
                args.epochs, total_steps = fitted, fitted * steps
        history.append(rec)
        log.info("epoch %s", json.dumps(rec))
        if final or time.time() - saved >= args.save_every_s:
            _save_last(args.out, model, opt, total_steps, epoch, best, history, model_config, config,
                       swa.state_dict() if swa is not None else None)
            saved = time.time()
        if out_of_time:
            log.info("time budget of %.0fs reached after epoch %d", args.time_budget_s, epoch)
            break
        epoch += 1
    del it, batches
    result = {"best": best, "history": history, "initial": initial}
    if swa is not None and int(swa.n_averaged):
        images = calibration_images(train, bgs, args, device, 2 * 10**6, steps * args.batch)
        result["swa"] = _finish_average(swa, images, args, val_imgs, val_masks, model_config, history[-1]["epoch"])
    log.info("done: best val mIoU %.4f, %.1f min", best, (time.time() - t0) / 60)
    return result


def calibration_images(train, bgs, args, device, stream: int, n: int) -> Iterator[torch.Tensor]:
    """``n`` augmented training images in batches of ``args.batch``, from a generator of their own
    (``stream`` keeps it apart from the training's draws): what batch norms are measured on."""
    rng = np.random.default_rng([args.seed, stream])
    idx = rng.permutation(len(train[0]))[:n]
    for i in range(0, len(idx), args.batch):
        x, _, jitter = make_batch(train, idx[i : i + args.batch], bgs, rng, args)
        yield training_images(x, jitter, device)


def _finish_average(swa: AveragedModel, images: Iterator[torch.Tensor], args, val_imgs, val_masks,
                    model_config: dict, epoch: int) -> dict:
    """The averaged weights' batch norms measured on ``images`` (an epoch's worth of training images),
    validated, written to OUT/swa.pt; its validation record."""
    with torch.no_grad():
        update_bn(images, swa.module)
    rec = {"epoch": epoch, "swa_n": int(swa.n_averaged), **evaluate(swa.module, val_imgs, val_masks, args.val_long_side)}
    _save_whole({"model": _cpu(swa.module.state_dict()), "config": model_config, "epoch": epoch, "val": rec},
                args.out / "swa.pt")
    log.info("swa %s", json.dumps(rec))
    return rec


def param_groups(model: torch.nn.Module, weight_decay: float, backbone_lr: float) -> list[dict]:
    """AdamW's groups: weight decay on weights, not on biases and batch-norm scales; with a
    ``backbone_lr`` other than 1, the backbone's parameters apart, at that share of the LR
    (``lr_share``).  Two groups otherwise, as before, so older runs resume."""
    parts = [(1.0, list(model.named_parameters()))]
    if backbone_lr != 1.0:
        named = list(model.named_parameters())
        parts = [(backbone_lr, [(n, p) for n, p in named if n.startswith("backbone.")]),
                 (1.0, [(n, p) for n, p in named if not n.startswith("backbone.")])]
    groups = []
    for share, named in parts:
        groups += [{"params": [p for _, p in named if p.ndim > 1], "weight_decay": weight_decay, "lr_share": share},
                   {"params": [p for _, p in named if p.ndim <= 1], "weight_decay": 0.0, "lr_share": share}]
    return groups


def fit_epochs(seconds: float, done: int, per_epoch: float, per_val: float, val_every: int, val_every_late: int) -> int:
    """How many more epochs fit in ``seconds`` after ``done``, validations included: the run validates
    every ``val_every`` epochs, and every ``val_every_late`` in its last quarter (``fit``).  Solves
    seconds = x·per_epoch + per_val·((0.75·(done + x) − done) / val_every + 0.25·(done + x) / val_every_late)."""
    vals_per_epoch = 0.75 / val_every + 0.25 / val_every_late
    fixed = per_val * (0.25 * done / val_every_late - 0.25 * done / val_every)
    return max(1, int((seconds - fixed) / (per_epoch + per_val * vals_per_epoch)))


def _cpu(state: dict) -> dict:
    return {k: v.detach().cpu() for k, v in state.items()}


def _save_last(out: Path, model, opt, total_steps, epoch, best, history, model_config, config,
               swa: dict | None = None) -> None:
    """OUT/last.pt, everything a resume needs (the weight average too), written whole or not at all."""
    ck = {"model": _cpu(model.state_dict()), "opt": opt.state_dict(), "total_steps": total_steps,
          "epoch": epoch, "best": best, "history": history, "config": model_config, "args": config}
    if swa is not None:
        ck["swa"] = _cpu(swa)
    _save_whole(ck, out / "last.pt")


def _save_whole(obj: dict, path: Path) -> None:
    """``torch.save`` to ``path`` written whole or not at all (a temporary file, then a rename)."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


if __name__ == "__main__":
    main()

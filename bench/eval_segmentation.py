"""Segmentation quality of each model, with and without edge correction, as one table.

Per model (rvm, deeplabv3plus) × edge refinement (off / on):

* portraits (``--portraits``, default ``DATA/portraits/val``): **mIoU** — intersection and union of
  ``alpha > 0.5`` with the mask, summed over all pixels of the folder at the image's own size, per
  class (person, background), then the mean of the two; **BF** — boundary F-score with a 2-pixel
  tolerance band (precision: predicted boundary pixels within 2 px of a true one; recall the other
  way round; the F of the pooled counts over the folder).
* videos (``--videos-gt``, default ``DATA/videos_gt``; ``NAME.mp4`` + ``NAME_mask.mp4``): per clip,
  the mean over frames of the person IoU (``alpha > 0.5`` vs the mask); the models run on the clip
  in order (RVM's recurrent state, the refiner's temporal state carried across frames); and
  **flicker** — of the pixels whose true label does not change between two consecutive frames and
  that are predicted person on either, the share whose predicted label changes (0 = steady; pooled
  over the clips).

``--split`` (default ``holdout``) takes the half of the portraits and of the clips that no choice was
made on (``export/splits.py``); ``select`` is the half that training and settings may be chosen on.

    .venv/bin/python bench/eval_segmentation.py [--split holdout|select|all] [--portraits DIR]
        [--videos-gt DIR] [--limit N] [--max-frames N] [--models rvm,deeplabv3plus] [--json OUT]
    .venv/bin/python bench/eval_segmentation.py --speed   # deeplabv3plus fps (bench/deeplab_speed.py)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from export.splits import PARTS, part_of  # noqa: E402
from service.config import get_settings  # noqa: E402
from service.inference.models import create_model  # noqa: E402
from service.inference.refine import EdgeRefiner  # noqa: E402

_K3 = np.ones((3, 3), np.uint8)


def boundary(mask: np.ndarray) -> np.ndarray:
    m = mask.astype(np.uint8)
    return (m - cv2.erode(m, _K3, borderType=cv2.BORDER_CONSTANT, borderValue=0)) > 0


def boundary_counts(pred: np.ndarray, gt: np.ndarray, tol: int = 2) -> np.ndarray:
    """[pred boundary px near gt boundary, pred boundary px, gt boundary px near pred, gt boundary px]."""
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * tol + 1, 2 * tol + 1))
    pb, gb = boundary(pred), boundary(gt)
    gd = cv2.dilate(gb.astype(np.uint8), k) > 0
    pd = cv2.dilate(pb.astype(np.uint8), k) > 0
    return np.array([(pb & gd).sum(), pb.sum(), (gb & pd).sum(), gb.sum()], np.int64)


def bf_from_counts(c: np.ndarray) -> float:
    p = c[0] / max(c[1], 1)
    r = c[2] / max(c[3], 1)
    return float(2 * p * r / max(p + r, 1e-12))


def iou_counts(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    return np.array([(pred & gt).sum(), (pred | gt).sum(), (~pred & ~gt).sum(), (~pred | ~gt).sum()], np.int64)


def miou_from_counts(c: np.ndarray) -> float:
    return float((c[0] / max(c[1], 1) + c[2] / max(c[3], 1)) / 2)


def load_portraits(folder: Path, limit: int = 0, split: str = "all") -> list[tuple[np.ndarray, np.ndarray]]:
    stems = set(part_of((p.stem for p in (folder / "images").glob("*.jpg")), split))
    paths = sorted(p for p in (folder / "images").glob("*.jpg") if p.stem in stems)
    if limit:
        paths = paths[:: max(1, len(paths) // limit)][:limit]
    out = []
    for p in paths:
        img = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
        mask = cv2.imread(str(folder / "masks" / f"{p.stem}.png"), cv2.IMREAD_GRAYSCALE) > 127
        out.append((img, mask))
    return out


def read_clip(video: Path, masks: Path, max_frames: int = 0) -> tuple[np.ndarray, np.ndarray]:
    frames, gts = [], []
    cv, cm = cv2.VideoCapture(str(video)), cv2.VideoCapture(str(masks))
    while not max_frames or len(frames) < max_frames:
        ok1, f = cv.read()
        ok2, m = cm.read()
        if not (ok1 and ok2):
            break
        frames.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
        gts.append(cv2.cvtColor(m, cv2.COLOR_BGR2GRAY) > 127)
    cv.release()
    cm.release()
    return np.stack(frames), np.stack(gts)


def alpha_of(model, frames: np.ndarray, state, refiner: EdgeRefiner | None):
    matte, state = model.predict(frames, state)
    alpha = matte.alpha
    if refiner is not None:
        alpha = refiner(frames, alpha)
    return alpha, state


def eval_portraits(model, refine: bool, pairs) -> dict:
    ci, cb = np.zeros(4, np.int64), np.zeros(4, np.int64)
    for img, gt in pairs:
        alpha, _ = alpha_of(model, img[None], model.new_state(), EdgeRefiner() if refine else None)
        pred = alpha[0] > 0.5
        ci += iou_counts(pred, gt)
        cb += boundary_counts(pred, gt)
    return {"miou": miou_from_counts(ci), "bf": bf_from_counts(cb)}


def flicker_counts(pred: np.ndarray, gt: np.ndarray, prev_pred: np.ndarray, prev_gt: np.ndarray) -> np.ndarray:
    """[pixels whose prediction changed though the truth did not, pixels predicted person on either
    frame where the truth did not change]."""
    steady = gt == prev_gt
    return np.array([((pred != prev_pred) & steady).sum(), ((pred | prev_pred) & steady).sum()], np.int64)


def eval_clip(model, refine: bool, frames: np.ndarray, gts: np.ndarray, batch: int = 4) -> tuple[float, np.ndarray]:
    """(mean person IoU over the frames, flicker counts summed over consecutive pairs)."""
    state, refiner, ious = model.new_state(), (EdgeRefiner() if refine else None), []
    flicker = np.zeros(2, np.int64)
    prev: tuple[np.ndarray, np.ndarray] | None = None
    for i in range(0, len(frames), batch):
        alpha, state = alpha_of(model, frames[i : i + batch], state, refiner)
        for a, g in zip(alpha > 0.5, gts[i : i + batch], strict=True):
            ious.append((a & g).sum() / max((a | g).sum(), 1))
            if prev is not None:
                flicker += flicker_counts(a, g, *prev)
            prev = (a, g)
    return float(np.mean(ious)), flicker


def main(argv=None) -> dict:
    data = Path(get_settings().data_dir)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--portraits", type=Path, default=data / "portraits" / "val")
    ap.add_argument("--videos-gt", type=Path, default=data / "videos_gt")
    ap.add_argument("--models", default="rvm,deeplabv3plus")
    ap.add_argument("--split", choices=PARTS, default="holdout",
                    help="which half of the portraits and clips (export/splits.py); report on holdout only")
    ap.add_argument("--limit", type=int, default=0, help="portraits: use N images spread over the folder")
    ap.add_argument("--max-frames", type=int, default=0, help="videos: first N frames of each clip")
    ap.add_argument("--deeplab-temporal", type=float, default=None,
                    help="deeplabv3plus: weight of the previous frame's probability map (default: as served, "
                         "settings.deeplab_temporal; 0 = frames alone)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--speed", action="store_true", help="only measure deeplabv3plus fps (bench/deeplab_speed.py)")
    args = ap.parse_args(argv)
    if args.speed:
        from bench.deeplab_speed import main as speed

        return speed([])

    pairs = load_portraits(args.portraits, args.limit, args.split)
    clips = sorted(p for p in args.videos_gt.glob("*.mp4") if not p.stem.endswith("_mask"))
    chosen = set(part_of((c.stem for c in clips), args.split))
    clips = [c for c in clips if c.stem in chosen]
    clip_data = {c.stem: read_clip(c, c.with_name(f"{c.stem}_mask.mp4"), args.max_frames) for c in clips}
    rows = []
    for name in args.models.split(","):
        model = create_model(name)
        if name == "deeplabv3plus" and args.deeplab_temporal is not None:
            model.temporal = args.deeplab_temporal
        for refine in (False, True):
            t0 = time.time()
            row = {"model": name, "refine": refine, **eval_portraits(model, refine, pairs)}
            per_clip = {k: eval_clip(model, refine, f, g) for k, (f, g) in clip_data.items()}
            row["clips"] = {k: iou for k, (iou, _) in per_clip.items()}
            row["clip_mean"] = float(np.mean(list(row["clips"].values()))) if row["clips"] else float("nan")
            changed = sum((c for _, c in per_clip.values()), np.zeros(2, np.int64))
            row["flicker"] = float(changed[0] / max(changed[1], 1))
            row["seconds"] = time.time() - t0
            rows.append(row)
            print(f"# {name} refine={refine}: {row['seconds']:.0f}s", file=sys.stderr, flush=True)

    names = list(clip_data)
    head = ["model", "refine", "mIoU", "BF@2px"] + [n[:10] for n in names] + ["clips", "flicker"]
    first = f", first {args.max_frames} frames" if args.max_frames else ""
    print(f"split {args.split}: portraits: {args.portraits} ({len(pairs)} images); videos: {args.videos_gt} "
          f"({len(names)} clips{first}); clip = mean person IoU per frame; flicker = share of steady-truth mask "
          "pixels whose prediction changes between consecutive frames")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = [r["model"], "on" if r["refine"] else "off", f"{r['miou']:.4f}", f"{r['bf']:.4f}"]
        cells += [f"{r['clips'][n]:.3f}" for n in names] + [f"{r['clip_mean']:.4f}", f"{r['flicker'] * 100:.2f} %"]
        print("| " + " | ".join(cells) + " |")
    result = {"split": args.split, "portraits": str(args.portraits), "n_portraits": len(pairs),
              "videos_gt": str(args.videos_gt), "rows": rows}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

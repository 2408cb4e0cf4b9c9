"""Train the harmoniser (``export/harmonize_model.py``) on portraits/train only.

Each sample is a real photo whose person gets a random colour edit (``service.inference.colour``:
exposure, white balance, saturation, contrast, gamma); the net sees the edited composite and the
mask at 128×128 and learns the transform that brings the person back, with the untouched scene as
reference.  Loss: MSE on the person.  Reproducible (every batch comes from ``rng([seed, step])``),
resumable (``--out``/ckpt.pt, written every ``--ckpt-every`` steps), one thread.

    .venv/bin/python export/harmonize_train.py --out runs/harmonize
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "export"))

from harmonize_model import SIZE, HarmonizeNet, apply_params  # noqa: E402

from service.config import get_settings  # noqa: E402
from service.inference.colour import (  # noqa: E402
    apply_perturbation,
    heldout_perturbation,
    perturb_person,
    random_perturbation,
)


def load_split(split: str, cache_dir: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """All images and masks of a portraits split at SIZE×SIZE (INTER_AREA, as the runtime does)."""
    cache = cache_dir / f"{split}{SIZE}.npz"
    if cache.is_file():
        z = np.load(cache)
        return z["images"], z["masks"], list(z["names"])
    base = Path(get_settings().data_dir) / "portraits" / split
    names = sorted(p.stem for p in (base / "images").glob("*.jpg"))
    images = np.empty((len(names), SIZE, SIZE, 3), np.uint8)
    masks = np.empty((len(names), SIZE, SIZE), np.uint8)
    for i, name in enumerate(names):
        img = cv2.cvtColor(cv2.imread(str(base / "images" / f"{name}.jpg")), cv2.COLOR_BGR2RGB)
        m = cv2.imread(str(base / "masks" / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
        images[i] = cv2.resize(img, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
        masks[i] = cv2.resize(m, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(cache, images=images, masks=masks, names=np.array(names))
    return images, masks, names


def make_batch(images, masks, idx, perts, flips, scene=None):
    """(edited composite, mask, target), NCHW tensors.  ``scene``: optional edits of the whole photo
    (person and scene alike, so still a consistent photo) applied first: more scenes to learn from."""
    x = images[idx].astype(np.float32) / 255
    m = masks[idx].astype(np.float32) / 255
    x[flips] = x[flips, :, ::-1]
    m[flips] = m[flips, :, ::-1]
    if scene is not None:
        x = np.stack([apply_perturbation(x[i], scene[i]) for i in range(len(idx))])
    xp = np.stack([perturb_person(x[i], m[i], perts[i]) for i in range(len(idx))])
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return t(xp).permute(0, 3, 1, 2), t(m)[:, None], t(x).permute(0, 3, 1, 2)


def person_mse(pred, target, mask):
    return (((pred - target) ** 2) * mask).sum() / (3 * mask.sum() + 1e-3)


def evaluate(model, images, masks) -> dict[str, float]:
    """Held-out pairs at 128 px (the full-resolution evaluation is bench/harmonize.py)."""
    perts = [heldout_perturbation(i) for i in range(len(images))]
    xp, m, x = make_batch(images, masks, np.arange(len(images)), perts, np.zeros(len(images), bool))
    with torch.no_grad():
        out = apply_params(xp, model(xp, m))
    return {"none": float(person_mse(xp, x, m)) * 255**2, "ours": float(person_mse(out, x, m)) * 255**2}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "harmonize")
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ckpt-every", type=int, default=250)
    ap.add_argument("--scene-aug", type=float, default=0.0, help="range scale of whole-photo edits (0 = off)")
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--max-minutes", type=float, default=30.0, help="stop (and checkpoint) after this long")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    images, masks, _ = load_split("train", ROOT / "runs" / "cache")
    val_images, val_masks, _ = load_split("val", ROOT / "runs" / "cache")

    model = HarmonizeNet()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.05)
    ckpt = args.out / "ckpt.pt"
    step = 0
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        step = state["step"]
        print(f"resumed at step {step}", flush=True)

    def save() -> None:
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "step": step, "args": vars(args) | {"out": str(args.out)}}, tmp)
        tmp.replace(ckpt)

    t0 = time.monotonic()
    log = open(args.out / "log.jsonl", "a")
    running = 0.0
    while step < args.steps:
        rng = np.random.default_rng([args.seed, step])
        idx = rng.integers(0, len(images), args.batch)
        perts = [random_perturbation(rng) for _ in range(args.batch)]
        flips = rng.random(args.batch) < 0.5
        scene = [random_perturbation(rng, args.scene_aug) for _ in range(args.batch)] if args.scene_aug else None
        xp, m, x = make_batch(images, masks, idx, perts, flips, scene)
        loss = person_mse(apply_params(xp, model(xp, m)), x, m)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        running = 0.98 * running + 0.02 * loss.item() if step > 1 else loss.item()
        if step % args.ckpt_every == 0 or step == args.steps:
            save()
            ev = evaluate(model, val_images, val_masks)
            rec = {"step": step, "train_mse": running * 255**2, "val_mse_128": ev, "min": (time.monotonic() - t0) / 60}
            print(json.dumps(rec), flush=True)
            log.write(json.dumps(rec) + "\n")
            log.flush()
        if (time.monotonic() - t0) / 60 > args.max_minutes:
            save()
            print(f"time limit: stopped at step {step}; rerun to resume", flush=True)
            break
    torch.save(model.state_dict(), args.out / "model.pt")


if __name__ == "__main__":
    main()

"""Harmonisation on held-out pairs: none / Reinhard (Lab, person region) / ours (the ONNX net).

Pairs: every portraits/val image (sorted by name; never seen in training) with its person's colours
edited by ``heldout_perturbation(i)`` (fixed seed) at full resolution; the scene is untouched.  Each
method gets the edited photo and the mask and must bring the person back; MSE (8-bit units) and PSNR
on the person region (mask > 0.5), averaged over images.

    .venv/bin/python bench/harmonize.py [--limit N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.config import get_settings  # noqa: E402
from service.inference.colour import heldout_perturbation, perturb_person, reinhard_transfer  # noqa: E402
from service.inference.harmonize import Harmonizer  # noqa: E402


def heldout_pairs(limit: int | None = None, split: str = "val"):
    """Yield ``(name, original uint8, edited uint8, mask float)`` for the held-out set."""
    base = Path(get_settings().data_dir) / "portraits" / split
    names = sorted(p.stem for p in (base / "images").glob("*.jpg"))
    for i, name in enumerate(names[:limit] if limit else names):
        img = cv2.cvtColor(cv2.imread(str(base / "images" / f"{name}.jpg")), cv2.COLOR_BGR2RGB)
        mask = cv2.imread(str(base / "masks" / f"{name}.png"), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255
        edited = perturb_person(img.astype(np.float32) / 255, mask, heldout_perturbation(i))
        yield name, img, (edited * 255 + 0.5).clip(0, 255).astype(np.uint8), mask


def scores(out: np.ndarray, ref: np.ndarray, region: np.ndarray) -> tuple[float, float]:
    mse = float(((out[region].astype(np.float64) - ref[region]) ** 2).mean())
    return mse, 10 * np.log10(255**2 / max(mse, 1e-10))


def evaluate(limit: int | None = None) -> dict[str, tuple[float, float]]:
    harm = Harmonizer(1.0, smoothing=0.0)
    res: dict[str, list[tuple[float, float]]] = {"none": [], "reinhard": [], "ours": []}
    for _, img, edited, mask in heldout_pairs(limit):
        region = mask > 0.5
        if not region.any():
            continue
        rein = (reinhard_transfer(edited, region, edited, ~region) * 255 + 0.5).clip(0, 255).astype(np.uint8)
        harm.reset()
        ours = harm(edited, mask, edited)
        res["none"].append(scores(edited, img, region))
        res["reinhard"].append(scores(rein, img, region))
        res["ours"].append(scores(ours, img, region))
    return {k: tuple(np.mean(v, axis=0)) for k, v in res.items()}  # type: ignore[misc]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()
    t = time.perf_counter()
    res = evaluate(args.limit)
    print(f"held-out portraits/val pairs, person region ({time.perf_counter() - t:.0f} s)")
    print("| method | MSE (8-bit) | PSNR dB |\n| --- | ---: | ---: |")
    for k, (mse, psnr) in res.items():
        print(f"| {k} | {mse:.1f} | {psnr:.2f} |")


if __name__ == "__main__":
    main()

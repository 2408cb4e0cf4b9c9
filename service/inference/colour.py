"""Colour utilities shared by the compositors, the harmoniser, its training, the benches and tests.

* ``rgb_to_lab`` / ``lab_to_rgb``: sRGB (D65) ↔ CIE L*a*b*, numpy, float32.
* ``delta_e2000``: CIEDE2000 colour difference (Sharma, Wu & Dalal 2005), checked against their
  published test pairs in ``tests/inference/test_poisson.py``.
* ``reinhard_transfer``: Reinhard et al. (2001) colour statistics transfer in Lab, restricted to a
  region (the person) and matched to another region (the scene): the classical harmonisation baseline.
* ``random_perturbation`` / ``apply_perturbation``: the random colour edits (exposure, white balance,
  saturation, contrast, gamma) the harmoniser learns to undo; one implementation for training,
  evaluation and tests.
"""

from __future__ import annotations

import numpy as np

_M_RGB2XYZ = np.array(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]],
    dtype=np.float64,
)
_M_XYZ2RGB = np.linalg.inv(_M_RGB2XYZ)
_WHITE = _M_RGB2XYZ.sum(axis=1)  # D65 white of this matrix (Xn, Yn, Zn)
_EPS = 216 / 24389
_KAPPA = 24389 / 27


def _as_unit(rgb: np.ndarray) -> np.ndarray:
    if rgb.dtype == np.uint8:
        return rgb.astype(np.float32) / 255.0
    return rgb.astype(np.float32, copy=False)


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.04045, x / 12.92, ((np.maximum(x, 0.04045) + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.maximum(x, 0.0031308) ** (1 / 2.4) - 0.055)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (uint8, or float in [0, 1]) (..., 3) → L*a*b* float32 (..., 3)."""
    lin = srgb_to_linear(_as_unit(rgb))
    xyz = (lin @ _M_RGB2XYZ.T.astype(np.float32)) / _WHITE.astype(np.float32)
    f = np.where(xyz > _EPS, np.cbrt(np.maximum(xyz, _EPS)), (_KAPPA * xyz + 16) / 116)
    lab = np.empty_like(f)
    lab[..., 0] = 116 * f[..., 1] - 16
    lab[..., 1] = 500 * (f[..., 0] - f[..., 1])
    lab[..., 2] = 200 * (f[..., 1] - f[..., 2])
    return lab.astype(np.float32, copy=False)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """L*a*b* (..., 3) → sRGB float32 in [0, 1] (out-of-gamut values clipped)."""
    lab = lab.astype(np.float32, copy=False)
    fy = (lab[..., 0] + 16) / 116
    fx = fy + lab[..., 1] / 500
    fz = fy - lab[..., 2] / 200
    f = np.stack([fx, fy, fz], axis=-1)
    xyz = np.where(f**3 > _EPS, f**3, (116 * f - 16) / _KAPPA) * _WHITE.astype(np.float32)
    lin = xyz @ _M_XYZ2RGB.T.astype(np.float32)
    return linear_to_srgb(lin).astype(np.float32)


def delta_e2000(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIEDE2000 difference of two L*a*b* arrays (..., 3), kL = kC = kH = 1."""
    lab1 = lab1.astype(np.float64, copy=False)
    lab2 = lab2.astype(np.float64, copy=False)
    L1, a1, b1 = lab1[..., 0], lab1[..., 1], lab1[..., 2]
    L2, a2, b2 = lab2[..., 0], lab2[..., 1], lab2[..., 2]
    C1 = np.hypot(a1, b1)
    C2 = np.hypot(a2, b2)
    Cm7 = ((C1 + C2) / 2) ** 7
    G = 0.5 * (1 - np.sqrt(Cm7 / (Cm7 + 25.0**7)))
    a1p, a2p = (1 + G) * a1, (1 + G) * a2
    C1p, C2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.degrees(np.arctan2(b1, a1p)) % 360
    h2p = np.degrees(np.arctan2(b2, a2p)) % 360
    dLp = L2 - L1
    dCp = C2p - C1p
    prod = C1p * C2p
    dh = h2p - h1p
    dh = np.where(dh > 180, dh - 360, np.where(dh < -180, dh + 360, dh))
    dh = np.where(prod == 0, 0.0, dh)
    dHp = 2 * np.sqrt(prod) * np.sin(np.radians(dh) / 2)
    Lpm = (L1 + L2) / 2
    Cpm = (C1p + C2p) / 2
    hsum = h1p + h2p
    hpm = np.where(
        prod == 0,
        hsum,
        np.where(np.abs(h1p - h2p) <= 180, hsum / 2, np.where(hsum < 360, (hsum + 360) / 2, (hsum - 360) / 2)),
    )
    T = (
        1
        - 0.17 * np.cos(np.radians(hpm - 30))
        + 0.24 * np.cos(np.radians(2 * hpm))
        + 0.32 * np.cos(np.radians(3 * hpm + 6))
        - 0.20 * np.cos(np.radians(4 * hpm - 63))
    )
    dtheta = 30 * np.exp(-(((hpm - 275) / 25) ** 2))
    Cpm7 = Cpm**7
    Rc = 2 * np.sqrt(Cpm7 / (Cpm7 + 25.0**7))
    Sl = 1 + 0.015 * (Lpm - 50) ** 2 / np.sqrt(20 + (Lpm - 50) ** 2)
    Sc = 1 + 0.045 * Cpm
    Sh = 1 + 0.015 * Cpm * T
    Rt = -np.sin(np.radians(2 * dtheta)) * Rc
    tl, tc, th = dLp / Sl, dCp / Sc, dHp / Sh
    return np.sqrt(tl**2 + tc**2 + th**2 + Rt * tc * th)


def mean_delta_e(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> float:
    """Mean ΔE2000 between two sRGB images over a boolean region (nan when the region is empty)."""
    if not region.any():
        return float("nan")
    return float(delta_e2000(rgb_to_lab(a[region]), rgb_to_lab(b[region])).mean())


def reinhard_transfer(image: np.ndarray, region: np.ndarray, reference: np.ndarray, ref_region: np.ndarray) -> np.ndarray:
    """Reinhard colour transfer: the Lab mean/std of ``image[region]`` matched to those of
    ``reference[ref_region]``; pixels outside ``region`` are returned unchanged.  Float [0, 1] out."""
    img = _as_unit(image)
    out = img.copy()
    if not region.any() or not ref_region.any():
        return out
    lab = rgb_to_lab(img[region])
    ref = rgb_to_lab(_as_unit(reference)[ref_region])
    mu, sd = lab.mean(0), lab.std(0) + 1e-6
    mu_r, sd_r = ref.mean(0), ref.std(0) + 1e-6
    out[region] = lab_to_rgb((lab - mu) * (sd_r / sd) + mu_r)
    return out


# --- the colour edits the harmoniser learns to undo ----------------------------------------------
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def random_perturbation(rng: np.random.Generator, scale: float = 1.0) -> dict[str, np.ndarray | float]:
    """One random colour edit: exposure ±0.6 stop, white balance (red/blue gains ×e^±0.2, green
    tint ×e^±0.06), saturation ×0.6–1.4, contrast ×0.75–1.25 about mid-grey, gamma e^±0.35;
    ``scale`` shrinks every range (1 = the ranges above)."""
    exposure = 2.0 ** rng.uniform(-0.6 * scale, 0.6 * scale)
    wb = np.exp([rng.uniform(-0.2 * scale, 0.2 * scale), rng.uniform(-0.06 * scale, 0.06 * scale),
                 rng.uniform(-0.2 * scale, 0.2 * scale)])
    return {
        "gains": (exposure * wb).astype(np.float32),
        "saturation": float(rng.uniform(1 - 0.4 * scale, 1 + 0.4 * scale)),
        "contrast": float(rng.uniform(1 - 0.25 * scale, 1 + 0.25 * scale)),
        "gamma": float(np.exp(rng.uniform(-0.35 * scale, 0.35 * scale))),
    }


def apply_perturbation(x: np.ndarray, p: dict[str, np.ndarray | float]) -> np.ndarray:
    """Apply ``p`` to float RGB in [0, 1] (..., 3): gains → saturation → contrast → clip → gamma."""
    y: np.ndarray = x.astype(np.float32) * np.asarray(p["gains"], dtype=np.float32)
    lum = (y @ _LUMA)[..., None]
    y = lum + np.float32(p["saturation"]) * (y - lum)
    y = np.float32(0.5) + np.float32(p["contrast"]) * (y - np.float32(0.5))
    np.clip(y, 0.0, 1.0, out=y)
    return np.power(y, np.float32(p["gamma"]), dtype=np.float32)


def perturb_person(x: np.ndarray, mask: np.ndarray, p: dict[str, np.ndarray | float]) -> np.ndarray:
    """``x`` with ``p`` applied to the person only (``mask`` float in [0, 1], (..., H, W))."""
    m = mask.astype(np.float32)[..., None]
    return m * apply_perturbation(x, p) + (1 - m) * x.astype(np.float32)


HELDOUT_SEED = 20261128


def heldout_perturbation(index: int) -> dict[str, np.ndarray | float]:
    """The fixed edit of the ``index``-th held-out image (sorted by name) of an evaluation set."""
    return random_perturbation(np.random.default_rng([HELDOUT_SEED, index]))

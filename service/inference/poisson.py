"""Poisson compositing that keeps the person's true colours.

The problem solved per frame is the screened Poisson equation

    min_u  Σ |∇u − g|²  +  Σ λ(x) (u − f)²,      g = α∇F + (1 − α)∇B,   f = αF + (1 − α)B,

with F the person (frame, or the model's foreground), B the new background and a fidelity weight
λ_F on the person, λ_B ≪ λ_F on the background.  The guidance field is the alpha composite's own
gradient *without* the seam term ``(F − B)∇α``, so u has the person's and the scene's texture with
the colour step at the matte edge removed; the fidelity term pins both layers' colours so that the
correction stays a thin, smooth field around the seam (plain ``cv2.seamlessClone`` instead pins the
person's border to the background and drifts every person colour toward it).

Solution.  Write ``u = α(F + k_F) + (1 − α)(B + k_B)``.  Across a seam the equation has the closed
form: the step ``D = F − B`` at the seam is shared ``k_B − k_F = D`` in the ratio √λ_F : √λ_B (the
person, held harder, takes the share β = √λ_B / (√λ_F + √λ_B)), and each share decays into its
layer as ``exp(−d·√λ)``, with d the distance to the seam.  The fields involved are smooth, so they
are computed at reduced resolution with a DCT (Neumann) screened-Poisson solver, ``(−Δ + λ)⁻¹``,
and upsampled (bilinear) to full resolution, where only cheap per-pixel arithmetic is done:

* seam density ``w = |∇α|`` (integrates to 1 across the seam);
* step extended off the seam: ``D_s = (−Δ+λ_B)⁻¹[w·D] / (−Δ+λ_B)⁻¹[w]`` (normalised convolution);
* decay profiles ``p = 2√λ·(−Δ+λ)⁻¹[w]`` (= exp(−d√λ) for a straight seam), for λ_B and λ_F;
* ``k_F = −β·D_s·p_F``,  ``k_B = (1 − β)·D_s·p_B``.

The reduction factor is chosen so that each decay length spans ≥ ``min_decay_px`` pixels of its
grid (the quality limit): the person side on a fine grid (4× at 720p), the background side and the
seam step on a grid twice as coarse (8× at 720p); profiles are cut to exactly zero past ≈ 3 decay lengths and everything
is computed only inside the box around the person plus that margin, so the output *equals* the
background away from the person (and equals it everywhere when alpha is all zero).

Temporal stability: the numerator and denominator of ``D_s`` are carried between frames with an
exponential decay (a temporal normalised convolution), weighted down where the carried estimate
disagrees with the current one (motion, new content): it smooths noise in the seam colour without
ghosting (and the profiles come from the current matte only).  One instance per job;
``reset()`` at a cut.  numpy/scipy on CPU; the DCT solves use CuPy when it is importable and a GPU is
present.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import fft as sfft

from service.array_pool import Empty, kept_array

_CUTOFF = float(np.exp(-3.0))


def _cupy():
    try:  # pragma: no cover - no GPU in CI
        import cupy
        import cupyx.scipy.fft as cfft

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return cupy, cfft
    except Exception:
        pass
    return None


class PoissonCompositor:
    """Screened-Poisson compositor (see the module doc).

    ``decay`` is the background-side decay length as a fraction of the frame height (≈ 18 px at
    720p); ``stiffness`` = λ_F / λ_B; ``temporal`` the weight of the carried seam estimate.
    """

    agree = 8.0  # seam-step difference (8-bit levels) beyond which the carried estimate is dropped
    min_decay_px = 1.0  # the person-side decay spans at least this many low-res pixels

    def __init__(self, decay: float = 0.025, stiffness: float = 16.0, temporal: float = 0.6, use_gpu: bool = True,
                 empty: Empty = np.empty):
        if decay <= 0 or stiffness < 1 or not 0 <= temporal < 1:
            raise ValueError("decay > 0, stiffness ≥ 1, 0 ≤ temporal < 1")
        self.decay = decay
        self.stiffness = stiffness
        self.temporal = temporal
        self.empty = empty  # makes the output frames (a job's ArrayPool)
        self._gpu = _cupy() if use_gpu else None
        self.reset()

    def reset(self) -> None:
        """Forget the carried seam estimate (new job, scene cut)."""
        self._carry: tuple[np.ndarray, np.ndarray] | None = None
        self._carry_key: tuple[int, ...] | None = None

    # --- the DCT solver ----------------------------------------------------------------------
    def _solve(self, rhs: np.ndarray, lams: list[float], channels: list[int]) -> list[np.ndarray]:
        """``(−Δ + λ)⁻¹ rhs[..., :c]`` for each (λ, c), Neumann boundaries, ``rhs`` (h, w, C)."""
        h, w = rhs.shape[:2]
        ky = 2 - 2 * np.cos(np.pi * np.arange(h) / h)
        kx = 2 - 2 * np.cos(np.pi * np.arange(w) / w)
        eig = (ky[:, None] + kx[None, :])[..., None].astype(np.float32)
        if self._gpu is not None:  # pragma: no cover
            cp, cfft = self._gpu
            spec = cfft.dctn(cp.asarray(rhs), type=2, axes=(0, 1), norm="ortho")
            e = cp.asarray(eig)
            return [
                cp.asnumpy(cfft.idctn(spec[..., :c] / (e + lam), type=2, axes=(0, 1), norm="ortho"))
                for lam, c in zip(lams, channels, strict=True)
            ]
        spec = sfft.dctn(rhs, type=2, axes=(0, 1), norm="ortho", workers=1)
        return [
            sfft.idctn(spec[..., :c] / (eig + lam), type=2, axes=(0, 1), norm="ortho", workers=1)
            for lam, c in zip(lams, channels, strict=True)
        ]

    # --- one frame ---------------------------------------------------------------------------
    def _frame(self, F: np.ndarray, B: np.ndarray, alpha: np.ndarray, out: np.ndarray) -> None:
        """Composite one frame into ``out`` (uint8 (H, W, 3))."""
        H, W = alpha.shape
        out[...] = B
        # the person's box and clipped alpha in arrays it keeps (``kept_array``): made afresh for
        # every 1080p frame they were 2 and up to 8 MB of new pages from the kernel
        mask = kept_array(self, "_mask", alpha.shape, np.bool_)
        bx, by, bw, bh = cv2.boundingRect(np.greater(alpha, 0, out=mask).view(np.uint8))  # bool → uint8 view
        if bw == 0 or bh == 0:  # no person (NaN counts as zero): the background, exactly
            self._carry = None
            return
        L_b = max(self.decay * H, 2.0)  # background decay length, px
        L_f = L_b / np.sqrt(self.stiffness)  # person decay length (λ_F = stiffness·λ_B)
        beta = 1.0 / (1.0 + np.sqrt(self.stiffness))  # person's share of the step
        s = int(np.clip(np.floor(L_f / self.min_decay_px), 1, 8))  # reduction factor (person side)
        c = 2 if L_b / (2 * s) >= 2 * self.min_decay_px else 1  # and again for the background side
        S = s * c
        margin = int(np.ceil(3.0 * L_b)) + 2 * S

        y0, y1 = max(by - margin, 0), min(by + bh + margin, H)
        x0, x1 = max(bx - margin, 0), min(bx + bw + margin, W)
        y0, x0 = y0 - y0 % S, x0 - x0 % S  # on the low-res grid, so the carried state lines up
        h, w = y1 - y0, x1 - x0
        lh2, lw2 = max(-(-h // S), 2), max(-(-w // S), 2)  # coarse grid (background side)
        lh, lw = lh2 * c, lw2 * c  # fine grid (person side), covers the crop
        Fc, Bc = F[y0:y1, x0:x1], B[y0:y1, x0:x1]
        ac = np.fmax(alpha[y0:y1, x0:x1], np.float32(0.0), out=kept_array(self, "_alpha", (h, w), np.float32))  # NaN → 0
        np.minimum(ac, np.float32(1.0), out=ac)

        def low(img: np.ndarray, f: int, n: tuple[int, int]) -> np.ndarray:
            """``img`` area-averaged by ``f`` onto an (n) grid, partial cells replicated."""
            hf, wf = (h // f) * f, (w // f) * f
            if hf < f or wf < f:  # tiny: pad the full-resolution crop
                pad = cv2.copyMakeBorder(img, 0, n[0] * f - h, 0, n[1] * f - w, cv2.BORDER_REPLICATE)
                return cv2.resize(pad, (n[1], n[0]), interpolation=cv2.INTER_AREA).astype(np.float32)
            small = cv2.resize(img[:hf, :wf], (wf // f, hf // f), interpolation=cv2.INTER_AREA)
            if small.shape[:2] != n:
                small = cv2.copyMakeBorder(small, 0, n[0] - small.shape[0], 0, n[1] - small.shape[1], cv2.BORDER_REPLICATE)
            return small.astype(np.float32)

        def density(al: np.ndarray) -> np.ndarray:
            """|∇α| on a grid: integrates to ≈ 1 across the seam, in that grid's pixels."""
            gx = np.zeros_like(al)
            gy = np.zeros_like(al)
            gx[:, 1:-1] = 0.5 * (al[:, 2:] - al[:, :-2])
            gy[1:-1] = 0.5 * (al[2:] - al[:-2])
            return np.sqrt(gx * gx + gy * gy)

        # coarse: the seam step D = F − B extended off the seam, and the background-side profile
        al2 = low(ac, S, (lh2, lw2))
        dens2 = density(al2)
        D = low(Fc, S, (lh2, lw2)) - low(Bc, S, (lh2, lw2))
        lam_b = 1.0 / (L_b / S) ** 2
        (num_b,) = self._solve(np.concatenate([dens2[..., None] * D, dens2[..., None]], axis=2), [lam_b], [4])
        num, den = num_b[..., :3], num_b[..., 3]
        # fine: the person-side profile
        al = low(ac, s, (lh, lw)) if c > 1 else al2
        lam_f = 1.0 / (L_f / s) ** 2
        (num_f,) = self._solve(density(al)[..., None], [lam_f], [1])
        key = (y0, x0, lh2, lw2, S, H, W)

        # temporal normalised convolution of the seam step
        if self._carry is not None and self.temporal > 0:
            pn, pd = self._carry
            if self._carry_key != key:  # box moved: bring the carried fields onto the new grid
                pn, pd = self._regrid(pn, pd, self._carry_key, key)
            if pn is not None:
                # robust: carry only where the old estimate agrees with the new one (noise, not motion)
                d_new = num / np.maximum(den, 1e-6)[..., None]
                d_old = pn / np.maximum(pd, 1e-6)[..., None]
                diff2 = ((d_new - d_old) ** 2).sum(axis=2)
                wt = self.temporal * np.exp(-diff2 / (2 * self.agree**2)) * (pd > 1e-6)
                num = num + wt[..., None] * pn
                den = den + wt * pd
        self._carry, self._carry_key = (num.astype(np.float32), den.astype(np.float32)), key
        Ds = num / np.maximum(den, 1e-6)[..., None]

        def profile(field: np.ndarray, lam: float) -> np.ndarray:
            p = np.clip(2.0 * np.sqrt(lam) * field, 0.0, 1.0)
            return np.clip((p - _CUTOFF) / (1.0 - _CUTOFF), 0.0, 1.0)

        p_b = profile(num_b[..., 3], lam_b)
        p_f = profile(num_f[..., 0], lam_f)
        if c > 1:  # coarse → fine (exact factor: the grids' pixel centres line up)
            up = cv2.resize(np.concatenate([Ds, p_b[..., None]], axis=2).astype(np.float32), (lw, lh),
                            interpolation=cv2.INTER_LINEAR)
            Ds, p_b = up[..., :3], up[..., 3]
        # k_B and k_F − k_B at low resolution (bilinear upsampling is linear: the difference commutes)
        lo_b = np.ascontiguousarray(((1.0 - beta) * p_b)[..., None] * Ds, dtype=np.float32)
        lo_d = np.ascontiguousarray((-beta * p_f - (1.0 - beta) * p_b)[..., None] * Ds, dtype=np.float32)
        active = (al > 0) | (p_b > 0)

        # full resolution, strip by strip (in cache): u = B + k_B + α (F − B + k_F − k_B)
        step = s * max(1, 32 // s)
        oc = out[y0:y1, x0:x1]
        for r0 in range(0, h, step):
            r1 = min(r0 + step, h)
            cols = np.flatnonzero(active[r0 // s : -(-r1 // s)].any(axis=0))
            if cols.size == 0:
                continue
            c0, c1 = cols[0] * s, min((cols[-1] + 1) * s, w)
            q0, q1 = max(r0 // s - 1, 0), min(-(-r1 // s) + 1, lh)
            p0, p1 = max(cols[0] - 1, 0), min(cols[-1] + 2, lw)
            ys, xs = slice(r0 - q0 * s, r1 - q0 * s), slice(c0 - p0 * s, c1 - p0 * s)
            size = ((p1 - p0) * s, (q1 - q0) * s)
            kB, kD = (
                (cv2.resize(lo[q0:q1, p0:p1], size, interpolation=cv2.INTER_LINEAR) if s > 1 else lo[q0:q1, p0:p1])[ys, xs]
                for lo in (lo_b, lo_d)
            )
            Bs = Bc[r0:r1, c0:c1]
            t: np.ndarray = cv2.subtract(Fc[r0:r1, c0:c1], Bs, dtype=cv2.CV_32F)
            t += kD
            t *= ac[r0:r1, c0:c1, None]
            t += kB
            np.copyto(oc[r0:r1, c0:c1], cv2.add(t, Bs, dtype=cv2.CV_8U))  # rounds and saturates

    @staticmethod
    def _regrid(pn, pd, pkey, key):
        """The carried low-res fields moved onto this frame's grid (zeros where they did not cover)."""
        py0, px0, _, _, ps, pH, pW = pkey
        y0, x0, hn, wn, s, H, W = key
        if (ps, pH, pW) != (s, H, W):
            return None, None
        n = np.zeros((hn, wn, 3), np.float32)
        d = np.zeros((hn, wn), np.float32)
        oy, ox = (py0 - y0) // s, (px0 - x0) // s
        sy0, sx0 = max(0, -oy), max(0, -ox)
        ty0, tx0 = max(0, oy), max(0, ox)
        hh = min(pn.shape[0] - sy0, hn - ty0)
        ww = min(pn.shape[1] - sx0, wn - tx0)
        if hh > 0 and ww > 0:
            n[ty0 : ty0 + hh, tx0 : tx0 + ww] = pn[sy0 : sy0 + hh, sx0 : sx0 + ww]
            d[ty0 : ty0 + hh, tx0 : tx0 + ww] = pd[sy0 : sy0 + hh, sx0 : sx0 + ww]
        return n, d

    def __call__(
        self, frames: np.ndarray, alpha: np.ndarray, background: np.ndarray, foreground: np.ndarray | None = None
    ) -> np.ndarray:
        fg = frames if foreground is None else foreground
        if fg.ndim == 3:
            return self(frames[None], alpha[None], background[None], None if foreground is None else foreground[None])[0]
        if frames.shape[:3] != alpha.shape or background.shape != frames.shape:
            raise ValueError(f"shapes differ: frames {frames.shape}, alpha {alpha.shape}, background {background.shape}")
        out = self.empty(frames.shape, np.uint8)
        for i in range(frames.shape[0]):
            self._frame(fg[i], background[i], alpha[i], out[i])
        return out

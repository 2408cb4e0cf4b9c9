"""Make the web page's built-in backgrounds (service/web/backgrounds/*.jpg).

They are drawn here from a few numbers, so the project owns them outright (no stock photos, no
licences to track).  Deterministic: running it again gives the same pictures.

    .venv/bin/python tools/make_backgrounds.py
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

OUT = Path(__file__).resolve().parents[1] / "service" / "web" / "backgrounds"
W, H = 1920, 1080


def _grid() -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    return x / (W - 1), y / (H - 1)


def _mix(t: np.ndarray, stops: list[tuple[float, tuple[int, int, int]]]) -> np.ndarray:
    """RGB gradient along t in [0, 1] through colour stops."""
    pos = np.array([p for p, _ in stops], np.float32)
    out = np.empty((*t.shape, 3), np.float32)
    for c in range(3):
        out[..., c] = np.interp(t, pos, np.array([col[c] for _, col in stops], np.float32))
    return out


def sunset() -> np.ndarray:
    x, y = _grid()
    return _mix(y, [(0.0, (38, 36, 92)), (0.45, (196, 84, 110)), (0.7, (246, 160, 92)), (1.0, (252, 214, 140))])


def studio() -> np.ndarray:
    """A photographer's grey backdrop: light in the middle, darker at the edges."""
    x, y = _grid()
    r = np.sqrt(((x - 0.5) * 1.4) ** 2 + (y - 0.42) ** 2)
    return _mix(np.clip(r / 0.9, 0, 1), [(0.0, (176, 180, 186)), (1.0, (58, 62, 70))])


def ocean() -> np.ndarray:
    x, y = _grid()
    base = _mix(y, [(0.0, (142, 206, 232)), (0.55, (64, 150, 196)), (1.0, (16, 60, 110))])
    waves = 6 * np.sin(x * 40 + np.sin(y * 9) * 3) * (y > 0.55)
    return base + waves[..., None]


def bokeh() -> np.ndarray:
    """Soft out-of-focus lights on a dark warm ground."""
    rng = np.random.default_rng(7)
    x, y = _grid()
    img = _mix(x * 0.6 + y * 0.4, [(0.0, (30, 22, 40)), (1.0, (70, 40, 34))])
    lights = np.zeros((H, W, 3), np.float32)
    for _ in range(70):
        cx, cy, rad = rng.uniform(0, W), rng.uniform(0, H), rng.uniform(20, 90)
        col = np.array(rng.choice([(255, 196, 120), (255, 150, 90), (200, 220, 255), (255, 230, 180)]), np.float32)
        cv2.circle(lights, (int(cx), int(cy)), int(rad), (col * rng.uniform(0.25, 0.6)).tolist(), -1, cv2.LINE_AA)
    lights = cv2.GaussianBlur(lights, (0, 0), 6)
    return img + lights


BACKGROUNDS = {"sunset": sunset, "studio": studio, "ocean": ocean, "bokeh": bokeh}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, draw in BACKGROUNDS.items():
        rgb = np.clip(draw() + 0.5, 0, 255).astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 88])
        assert ok
        (OUT / f"{name}.jpg").write_bytes(buf.tobytes())
        print(f"{name}.jpg: {len(buf) // 1024} KiB")


if __name__ == "__main__":
    main()

"""Full-resolution steps a strip of rows at a time.

The steps after a model that work at frame size (RVM's guided filter, the edge refiner) upsample
small maps and combine them with the frame pixel by pixel.  Done on whole frames, each upsampled
map is a full-size float array: at 1080p 8 MB a plane, 25 MB for three, several alive at once, and
each fresh one zeroed by the kernel a page at a time.  Done a strip of rows at a time, the work
arrays stay a few MB and in cache, and the result is written straight into its place.
"""

from __future__ import annotations

import cv2
import numpy as np

STRIP_ROWS = 64  # full-resolution rows per step: ~2 MB of float work arrays at 1920 wide


def resized_rows(src: np.ndarray, width: int, height: int, y0: int, y1: int,
                 dst: np.ndarray | None = None) -> np.ndarray:
    """Rows ``y0:y1`` of ``src`` (h, w[, c]) resized bilinearly to ``height`` x ``width``, sampled as
    ``cv2.resize`` (and ONNX's half-pixel Resize) sample: output (x, y) reads the source at
    ((x + 0.5)·w/width − 0.5, (y + 0.5)·h/height − 0.5), edges repeated.  Only those rows are made
    (``warpAffine``, into ``dst`` when given).  Without ``dst``, a ``src`` already at that size
    gives a view of its rows: read it, do not write into it."""
    h, w = src.shape[:2]
    if (h, w) == (height, width):
        if dst is None:
            return src[y0:y1]
        np.copyto(dst, src[y0:y1])
        return dst
    sx, sy = w / width, h / height
    m = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, (y0 + 0.5) * sy - 0.5]], np.float64)
    return cv2.warpAffine(src, m, (width, y1 - y0), dst=dst, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


__all__ = ["STRIP_ROWS", "resized_rows"]

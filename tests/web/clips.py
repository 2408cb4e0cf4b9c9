"""What the web tests make from the shared data besides short clips (``videoutil.short_clip``)."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np


def first_frame_jpeg(src: Path, dst: Path) -> Path:
    """The first decoded frame of ``src`` as a JPEG (what the page sends for a preview)."""
    with av.open(str(src)) as c:
        rgb = next(c.decode(video=0)).to_ndarray(format="rgb24")
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    assert ok
    dst.write_bytes(buf.tobytes())
    return dst

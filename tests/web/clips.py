"""Clips the web tests make from the shared data: short, so a whole job takes seconds."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np


def short_clip(src: Path, dst: Path, frames: int, scale: int = 2) -> Path:
    """The first ``frames`` frames of ``src`` at 1/``scale`` of its size (H.264), with its audio
    over the same span (AAC)."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        vin, ain = inp.streams.video[0], inp.streams.audio[0]
        rate = vin.average_rate
        assert rate is not None
        vout = out.add_stream("libx264", rate=rate)
        vout.pix_fmt = "yuv420p"
        vout.options = {"preset": "veryfast"}
        aout = out.add_stream("aac", rate=ain.rate)
        n, end = 0, 0.0
        for f in inp.decode(vin):
            img = f.reformat(width=f.width // scale // 2 * 2, height=f.height // scale // 2 * 2, format="yuv420p")
            if n == 0:
                vout.width, vout.height = img.width, img.height
            img.pts, img.time_base = n, Fraction(1) / rate
            out.mux(vout.encode(img))
            n += 1
            if n == frames:
                end = float(f.time or 0) + 1 / float(rate)
                break
        out.mux(vout.encode(None))
        inp.seek(0)
        for af in inp.decode(ain):
            if af.time is not None and af.time >= end:
                break
            af.pts = None
            out.mux(aout.encode(af))
        out.mux(aout.encode(None))
    return dst


def first_frame_jpeg(src: Path, dst: Path) -> Path:
    """The first decoded frame of ``src`` as a JPEG (what the page sends for a preview)."""
    with av.open(str(src)) as c:
        rgb = next(c.decode(video=0)).to_ndarray(format="rgb24")
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    assert ok
    dst.write_bytes(buf.tobytes())
    return dst

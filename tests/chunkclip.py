"""A long test clip built from a short shared one (issue 16's chunking tests and bench): the
source's frames played forward then backward (so the motion has no jump) until ``seconds`` are
filled, downscaled, H.264 with a keyframe every ``gop`` frames, and its AAC audio looped."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def build_clip(
    src: Path, out: Path, seconds: float, width: int, gop: int = 30, audio: bool = True, fps: int | None = None
) -> Path:
    with av.open(str(src)) as c:
        vs = c.streams.video[0]
        rate = Fraction(vs.average_rate or 30)
        frames = [f.to_ndarray(format="rgb24", width=width, height=_even(width * vs.height / vs.width))
                  for f in c.decode(vs)]
    if fps is not None:  # every k-th frame, at the rate asked
        frames = frames[:: max(1, round(float(rate) / fps))]
        rate = Fraction(fps)
    have_audio = False
    pcm: list[np.ndarray] = []
    sample_rate = 44100
    if audio:
        with av.open(str(src)) as c:
            if c.streams.audio:
                have_audio = True
                a = c.streams.audio[0]
                sample_rate = a.codec_context.sample_rate or 44100
                res = av.AudioResampler(format="fltp", layout="stereo", rate=sample_rate)
                for f in c.decode(a):
                    for g in res.resample(f):
                        pcm.append(g.to_ndarray())
    n = int(round(seconds * rate))
    cycle = frames + frames[-2:0:-1]
    tb = Fraction(1, 15360)
    step = int(1 / (rate * tb))  # whole ticks: every timestamp exact
    with av.open(str(out), "w", format="mp4") as o:
        o.options["video_track_timescale"] = str(tb.denominator)
        v = o.add_stream("libx264", rate=rate)
        v.width, v.height, v.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        v.codec_context.time_base = tb
        v.time_base = tb
        v.codec_context.options = {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0", "preset": "veryfast"}
        a_out = None
        if have_audio:
            a_out = o.add_stream("aac", rate=sample_rate)
            a_out.layout = "stereo"
        for i in range(n):
            fr = av.VideoFrame.from_ndarray(cycle[i % len(cycle)], format="rgb24")
            fr.pts, fr.time_base = i * step, tb
            for p in v.encode(fr):
                o.mux(p)
        for p in v.encode(None):
            o.mux(p)
        if a_out is not None:
            samples = np.concatenate(pcm, axis=1)
            total = int(seconds * sample_rate)
            reps = -(-total // samples.shape[1])
            samples = np.tile(samples, (1, reps))[:, :total].astype(np.float32)
            for s0 in range(0, total, 1024):
                af = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, s0 : s0 + 1024]), format="fltp",
                                                layout="stereo")
                af.sample_rate, af.pts = sample_rate, s0
                for p in a_out.encode(af):
                    o.mux(p)
            for p in a_out.encode(None):
                o.mux(p)
    return out


def _even(x: float) -> int:
    return max(2, int(round(x / 2)) * 2)

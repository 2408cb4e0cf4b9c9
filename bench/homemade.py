"""The home-made loop Backdrop competes with, as a user would write it in 40 lines.

    python bench/homemade.py INPUT OUTPUT RVM_ONNX [--long-side 320] [--color 3a6ea5]

A default onnxruntime session on the same RVM ONNX file and the same low-resolution pass (the long
side brought to 320 px), then decode → model → blend → libx264 one frame at a time, audio copied.
Default codec threading, default session options.  It imports nothing from Backdrop, so
bench/pipeline.py can time it as a whole process beside ``backdrop replace``.
"""

import argparse

import av
import numpy as np
import onnxruntime as ort

p = argparse.ArgumentParser()
p.add_argument("input"), p.add_argument("output"), p.add_argument("onnx")
p.add_argument("--long-side", type=int, default=320)
p.add_argument("--color", default="3a6ea5")
args = p.parse_args()

session = ort.InferenceSession(args.onnx, providers=["CPUExecutionProvider"])
inp = av.open(args.input)
vin = inp.streams.video[0]
ain = inp.streams.audio[0] if inp.streams.audio else None
out = av.open(args.output, "w")
vout = out.add_stream("libx264", rate=vin.average_rate)
vout.width, vout.height, vout.pix_fmt = vin.width // 2 * 2, vin.height // 2 * 2, "yuv420p"
vout.options = {"preset": "veryfast", "crf": "18"}
aout = out.add_stream_from_template(ain) if ain else None
ratio = np.array([min(1.0, args.long_side / max(vin.width, vin.height))], np.float32)
rec = [np.zeros((1, 1, 1, 1), np.float32)] * 4
bg = np.array([int(args.color[i : i + 2], 16) for i in (0, 2, 4)], np.float32)
for packet in inp.demux(*[s for s in (vin, ain) if s]):
    if packet.stream is ain:
        if packet.dts is not None:
            packet.stream = aout
            out.mux(packet)
        continue
    for frame in packet.decode():
        img = frame.to_ndarray(format="rgb24")
        src = img.transpose(2, 0, 1)[None].astype(np.float32) / 255.0
        fgr, pha, *rec = session.run(None, {"src": src, "r1i": rec[0], "r2i": rec[1], "r3i": rec[2],
                                            "r4i": rec[3], "downsample_ratio": ratio})
        a = pha[0, 0][..., None]
        comp = a * fgr[0].transpose(1, 2, 0) * 255.0 + (1.0 - a) * bg
        comp = np.clip(comp + 0.5, 0, 255).astype(np.uint8)[: vout.height, : vout.width]
        new = av.VideoFrame.from_ndarray(np.ascontiguousarray(comp), format="rgb24")
        new.pts, new.time_base = frame.pts, frame.time_base
        out.mux(vout.encode(new))
out.mux(vout.encode(None))
out.close()

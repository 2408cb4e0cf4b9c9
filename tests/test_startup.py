"""The ``backdrop`` command's start-up (``service.startup``): its imports run without the cycle
collector, which is on again, with start-up's objects frozen, before any work is done."""

from __future__ import annotations

import gc
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import data_path

import service.cli
import service.pipeline
from service import startup
from service.errors import InvalidParameter


@pytest.fixture(autouse=True)
def _collector_restored() -> Iterator[None]:
    yield
    gc.unfreeze()
    gc.enable()


def test_the_collector_is_off_until_start_up_says_it_is_over(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[bool, int]] = []

    def command(argv: list[str] | None = None) -> int:
        seen.append((gc.isenabled(), gc.get_freeze_count()))
        startup.started()
        seen.append((gc.isenabled(), gc.get_freeze_count()))
        startup.started()  # a second call changes nothing
        return 0

    monkeypatch.setattr(service.cli, "main", command)
    assert startup.main([]) == 0
    assert seen[0] == (False, 0)
    assert seen[1][0] and seen[1][1] > 0  # on again, start-up's objects frozen
    assert gc.isenabled()


def test_a_command_that_fails_early_leaves_the_collector_on(monkeypatch: pytest.MonkeyPatch) -> None:
    def command(argv: list[str] | None = None) -> int:
        raise RuntimeError("before start-up was over")

    monkeypatch.setattr(service.cli, "main", command)
    with pytest.raises(RuntimeError):
        startup.main([])
    assert gc.isenabled()


def test_replace_runs_its_video_with_the_collector_on(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[bool] = []

    def replace_background(*args: object, **kwargs: object) -> None:
        seen.append(gc.isenabled())
        raise InvalidParameter("stopped here by the test")

    monkeypatch.setattr(service.pipeline, "replace_background", replace_background)
    clip = data_path("videos", "asl", "yes.mkv")
    assert startup.main(["replace", str(clip), "-b", "#000000", "-o", str(tmp_path / "out.mp4"), "-q"]) == 2
    assert seen == [True]


def test_python_m_service_startup_is_the_command(tmp_path: Path) -> None:
    """Run as ``python -m``, the file is also ``__main__``; the command must still turn the
    collector back on through the ``service.startup`` that ``service.cli`` imports."""
    probe = ("import gc, runpy, sys, service.pipeline as p\n"
             "def fake(*a, **k):\n"
             "    print('collector on' if gc.isenabled() else 'collector off'); sys.exit(0)\n"
             "p.replace_background = fake\n"
             "sys.argv = ['backdrop', 'replace', sys.argv[1], '-b', '#000000', '-o', sys.argv[2], '-q']\n"
             "runpy.run_module('service.startup', run_name='__main__', alter_sys=True)\n")
    proc = subprocess.run([sys.executable, "-c", probe, str(data_path("videos", "asl", "yes.mkv")),
                           str(tmp_path / "out.mp4")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "collector on"

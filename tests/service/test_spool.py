"""``service.spool``: a work folder whose process died is swept, one in use is not."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from service.spool import OWNER, Workdir, sweep_orphans


def _held_by_a_child(spool: Path) -> tuple[subprocess.Popen[str], Path]:
    """A process of its own that makes a work folder under ``spool``, says where, and waits."""
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\nfrom pathlib import Path\nfrom service.spool import Workdir\n"
         "w = Workdir('job-12345678-', Path(sys.argv[1]))\nprint(w.path, flush=True)\ntime.sleep(600)\n",
         str(spool)],
        stdout=subprocess.PIPE, text=True,
    )
    assert child.stdout is not None
    return child, Path(child.stdout.readline().strip())


def test_a_folder_whose_process_died_is_swept(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    child, held = _held_by_a_child(spool)
    try:
        (held / "input.mp4").write_bytes(b"x" * 1000)
        assert sweep_orphans(spool) == 0 and held.exists()  # its process is alive
        child.send_signal(signal.SIGKILL)  # as a segfault or the kernel's OOM killer ends it
        child.wait(10)
        assert sweep_orphans(spool) == 1 and not held.exists()
    finally:
        child.kill()
        child.wait()


def test_folders_in_use_or_not_ours_are_left(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    mine = Workdir("upload-", spool)
    stranger = spool / "job-not-ours"  # no owner file: made by someone else, or before folders had owners
    stranger.mkdir()
    other = spool / "photos"
    other.mkdir()
    (other / OWNER).write_text("")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / OWNER).write_text("")
    os.symlink(elsewhere, spool / "job-link")
    assert sweep_orphans(spool) == 0
    assert mine.path.exists() and stranger.exists() and other.exists() and elsewhere.exists()
    mine.remove()
    mine.remove()  # twice is fine
    assert not mine.path.exists()
    assert sweep_orphans(tmp_path / "missing") == 0

"""``-`` as a video on the command line (``backdrop replace - -o - < in.mp4 > out.mp4``, and the
same for ``backdrop submit``): standard input or output, through a temporary file, since MP4 is read
and written with seeks (its index), and the summary lines go to standard error instead."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from service.errors import InvalidParameter

STDIO = "-"


def info_stream(output: str | None) -> TextIO:
    """Where lines about the run go: standard error when the video itself goes to standard output."""
    return sys.stderr if output == STDIO else sys.stdout


@contextmanager
def piped(video: str, output: str | None, extension: str = "") -> Iterator[tuple[str, Path | None]]:
    """(the input, the output) to work with, ``-`` replaced by files in a temporary folder (in
    ``spool_dir`` where one is set): standard input is copied in first, and the output, where the body
    made one (a failed job makes none), is copied to standard output once the body ends without an
    error.  A terminal there is refused."""
    for name, given, stream, hint in (("input", video, sys.stdin, "pipe a video in"),
                                      ("output", output, sys.stdout, "redirect it to a file")):
        if given is not None and not given.strip():
            raise InvalidParameter(f"the {name} is an empty name: give a file name, or - for standard {name}")
        if given == STDIO and stream.isatty():
            raise InvalidParameter(f"the {name} is '-' (standard {name}), which is a terminal here: {hint}, or name a file")
    if STDIO not in (video, output):
        yield video, Path(output) if output else None
        return
    from service.config import get_settings
    from service.spool import Workdir, sweep_orphans

    spool_dir = get_settings().spool_dir
    sweep_orphans(spool_dir)  # a run killed outright (SIGKILL, the OOM killer) left its copy of stdin
    held = Workdir("backdrop-", spool_dir)
    try:
        if video == STDIO:
            video = str(held.path / "input")
            with open(video, "wb") as f:
                shutil.copyfileobj(sys.stdin.buffer, f, 1 << 20)
        out = held.path / f"output{extension}" if output == STDIO else Path(output) if output else None
        yield video, out
        if output == STDIO and out is not None and out.exists():  # not where the body ended without one
            _to_stdout(out)
    finally:
        held.remove()


def _to_stdout(path: Path) -> None:
    """Copy ``path`` to standard output with ``os.write``, which says how much of each write a pipe
    took: through ``sys.stdout.buffer``, a write that a closing reader cut short (4096 of 127813
    bytes) returned as if whole, and the rest was dropped without an error."""
    sys.stdout.flush()
    fd = sys.stdout.fileno()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]

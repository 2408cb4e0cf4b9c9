"""The ``backdrop`` command's entry point: start-up runs without Python's cycle collector.

Start-up imports some 500 modules (pydantic's models, NumPy, OpenCV, PyAV, our own) whose objects
live as long as the process.  The collector ran over them again and again while they were being
made, and every full collection afterwards walked them all once more, though none of them is ever
garbage.  So ``main`` turns the collector off, and ``started`` (called by the command once its
imports are done) freezes what start-up made (``gc.freeze``: left out of every later collection)
and turns it back on.  A 1-frame 640x360 ``backdrop replace`` took 0.37-0.39 s, now 0.33-0.35 s
(README, Throughput); a long run is no different past that.
"""

from __future__ import annotations

import gc
import sys

_deferred = False  # whether ``main`` turned the collector off and ``started`` has yet to turn it on


def main(argv: list[str] | None = None) -> int:
    """``backdrop`` with ``argv`` (``service.cli.main``), its imports made with the collector off."""
    global _deferred
    _deferred = gc.isenabled()
    gc.disable()
    try:
        from service.cli import main as command

        return command(argv)
    finally:
        started()  # where the command ended before it said so


def started() -> None:
    """Start-up is over: what it made is frozen, and the collector runs again.  Only the first call
    after ``main`` does anything, so a command may call it wherever its imports are done."""
    global _deferred
    if _deferred:
        _deferred = False
        gc.freeze()
        gc.enable()


if __name__ == "__main__":
    # ``python -m service.startup``: run as __main__, this file is a second module beside the
    # ``service.startup`` that ``service.cli`` reports to, so the command starts from that one
    from service.startup import main as entry

    sys.exit(entry())

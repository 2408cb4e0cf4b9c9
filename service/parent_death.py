"""Processes that must not outlive the one that started them (Linux's ``PR_SET_PDEATHSIG``).

``backdrop run``'s children (``service.local_stack``) and a worker's embedded beat
(``service.workers.tasks``): each lived on, orphaned, when its parent died without stopping it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def parent_death(sig: int, parent: int) -> Callable[[], None] | None:
    """What a process runs to get ``sig`` from the kernel when its parent (``parent``, the pid it
    had when the process started) ends, however it ends; ``sig`` at once where the parent has ended
    already.  Made beforehand (``prctl`` looked up here), so that calling it after a fork, before
    ``exec``, imports nothing.  None off Linux, where there is no such thing."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent:  # the parent died before the line above
            os.kill(os.getpid(), sig)

    return arm

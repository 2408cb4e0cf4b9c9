"""An untrusted file's headers read in a child process that a CPU, memory and time limit can end.

FFmpeg reads a container's whole header before it returns, and nothing inside the process can stop
it: a 1.6 MB WebM of 100,000 tags held a core for 74 s, each time it was opened, because FFmpeg's tag
dictionary is searched whole for each tag added.  ``metadata_bombs`` refuses the bombs we know in
milliseconds (Matroska, MP4, FLV tags); this bounds the ones we do not (NUT's tags, Ogg's comments,
whatever a fuzzer finds next).  The API's and the worker's first look at an upload or a fetched file
(``inspect_video``, ``validate_background``) runs here: a file whose headers cost more than
``inspect_cpu_seconds`` of CPU or ``inspect_memory_bytes`` of memory is refused as too large, and
every later open of a file that passed is bounded by the same cost.

The child comes from a fork server that has already imported ``service.media.inspect`` (PyAV, NumPy),
so a look costs a fork (milliseconds), not an interpreter's start; forking the API's own process
would copy its threads' locks mid-use.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import resource
import signal
import threading
import traceback
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection, wait
from multiprocessing.process import AuthenticationString  # type: ignore[attr-defined]
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from service.config import Settings
from service.errors import (
    BackdropError,
    BackgroundTooLarge,
    CorruptBackground,
    CorruptVideo,
    InputError,
    VideoTooLarge,
)

if TYPE_CHECKING:
    from service.media.inspect import BackgroundInfo, VideoInfo

log = logging.getLogger(__name__)
T = TypeVar("T")
#: What the fork server imports once, so each child starts with it loaded.  ``__main__`` too: a
#: child otherwise runs the program's main script again (guarded by ``__name__``) before its work.
PRELOAD = ["__main__", "service.media.inspect"]
#: Seconds of wall time allowed beyond twice the CPU limit: a child waiting on a slow disk or a busy
#: machine spends no CPU, one blocked for ever would otherwise hold the caller.
_WALL_SLACK_S = 10.0
_context: Any = None
_starting = threading.Lock()


def _fork_server() -> Any:
    global _context
    if _context is None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        _context = ctx
    return _context


@contextlib.contextmanager
def _children_allowed() -> Iterator[None]:
    """Let a Celery pool process start a child.  Its pool (billiard) marks it daemonic, a rule there
    so that no child is left behind when its parent exits (``confined`` joins its child before it
    returns, whatever happens), and gives it billiard's own authentication key, which
    multiprocessing cannot hand to the fork server.  Both are set back once the child is started,
    one thread at a time."""
    with _starting:
        config = multiprocessing.current_process()._config  # type: ignore[attr-defined]
        saved = dict(config)
        config.pop("daemon", None)
        if not isinstance(config.get("authkey"), AuthenticationString):
            config["authkey"] = AuthenticationString(bytes(config.get("authkey") or os.urandom(32)))
        try:
            yield
        finally:
            config.clear()
            config.update(saved)


def _virtual_size() -> int:
    """This process's address space now, in bytes (``VmSize``)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _child(conn: Connection, fn: Callable[..., Any], args: tuple[Any, ...], cpu_s: int, memory: int) -> None:
    """Run ``fn(*args)`` under the limits and send what came of it: a result, one of our errors, or
    the limit that was reached.  Past the CPU limit the kernel ends the process (``SIGXCPU``)."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    limit = _virtual_size() + memory
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        outcome: tuple[str, Any] = ("ok", fn(*args))
    except BackdropError as exc:
        outcome = ("error", exc)
    except MemoryError:
        outcome = ("memory", None)
    except Exception as exc:  # noqa: BLE001 - a fault of ours: the parent logs its traceback and raises it
        outcome = ("fault", (f"{exc.__class__.__name__}: {exc}", traceback.format_exc()))
    try:
        conn.send(outcome)
    except MemoryError:
        conn.send(("memory", None))
    conn.close()


def confined(
    fn: Callable[..., T],
    *args: Any,
    settings: Settings,
    too_costly: type[InputError],
    unreadable: type[InputError],
    what: str = "file",
) -> T:
    """``fn(*args)`` in a child process limited to ``settings.inspect_cpu_seconds`` of CPU and
    ``settings.inspect_memory_bytes`` more memory; its result, or the error it raised.  A child
    that reaches a limit is answered with ``too_costly`` (a ``*_too_large`` error), one that
    crashes (FFmpeg's reader faulted on the file) with ``unreadable``, naming ``what`` was read.
    ``fn`` and its arguments must be picklable: a function of a module."""
    cpu_s = max(1, math.ceil(settings.inspect_cpu_seconds))
    wall_s = 2 * cpu_s + _WALL_SLACK_S
    ctx = _fork_server()
    recv, send = ctx.Pipe(duplex=False)
    with _children_allowed():  # the child's settings are copied from this process's when it is made
        child = ctx.Process(target=_child, args=(send, fn, args, cpu_s, settings.inspect_memory_bytes), daemon=True)
        child.start()
    send.close()
    try:
        ready = wait([recv, child.sentinel], timeout=wall_s)
        outcome: tuple[str, Any] = ("time", None)
        if recv in ready or child.sentinel in ready:
            try:
                outcome = recv.recv() if recv.poll() else ("died", None)
            except (EOFError, OSError):
                outcome = ("died", None)
    finally:
        if child.is_alive():
            child.kill()
        child.join()
        recv.close()
    kind, value = outcome
    if kind == "ok":
        return value  # type: ignore[no-any-return]
    if kind == "error":
        raise value
    if kind == "fault":
        message, trace = value
        log.error("reading a %s failed in its child process:\n%s", what, trace)
        raise RuntimeError(f"reading the {what} failed in its child process: {message}")
    if kind == "died" and child.exitcode not in (-signal.SIGXCPU, -signal.SIGKILL):  # CPU: soft limit, hard limit
        log.warning("reading a %s: its child process ended with %s", what, child.exitcode)
        raise unreadable(f"the {what} could not be read: its reader crashed on it")
    reason = {
        "memory": f"more than {settings.inspect_memory_bytes // 2**20} MB of memory",
        "time": f"more than {wall_s:g} s",
    }.get(kind, f"more than {cpu_s} s of CPU")
    raise too_costly(f"reading this {what}'s headers took {reason}: it is refused as too costly to open")


def inspect_video_confined(path: Path, settings: Settings) -> VideoInfo:
    """``inspect_video`` of an untrusted file, confined."""
    from service.media.inspect import inspect_video

    return confined(inspect_video, Path(path), settings, settings=settings, too_costly=VideoTooLarge,
                    unreadable=CorruptVideo, what="video")


def inspect_background_confined(path: Path, settings: Settings) -> BackgroundInfo:
    """``inspect_background`` of an untrusted file, confined."""
    from service.media.inspect import inspect_background

    return confined(inspect_background, Path(path), settings, settings=settings, too_costly=BackgroundTooLarge,
                    unreadable=CorruptBackground, what="background")

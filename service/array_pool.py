"""Full-size arrays a job hands back to itself instead of asking the kernel for new ones.

Every batch of a job makes the same arrays: the batch of frames, the matte, the model's foreground,
the composited frames.  At 1080p each is 6-8 MB a frame, past glibc's mmap threshold as the
pipeline sets it (``pipeline._return_freed_frames``, which keeps a job's peak memory down), so each
came fresh from the kernel, zeroed a page at a time, and went back to it when freed: about 1,500
page faults a frame for each; with the decoder's, 2.2-2.9 s of system time in 12-16 s of CPU time
for 150 frames at 1080p.

An ``ArrayPool`` keeps the arrays it made and hands one out again once nothing else refers to it:
no reference left in a batch, a queue, a view or a caller (CPython's reference count says so).  So
no stage has to say when it is done with an array, and one that keeps an array (a preview keeps its
frames, a compositor its last matte) only makes the pool allocate another.

What the pool holds while it is not in use is memory a job keeps that it would otherwise have given
back: a 4K job that kept every array it had made at once peaked 220 MB higher.  So it keeps arrays
up to ``max_bytes`` in all and makes any others afresh, as before; the arrays go when the pool does,
at the end of the job.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

#: How arrays are made: ``np.empty`` itself, or an ``ArrayPool``'s ``empty``.
Empty = Callable[[tuple[int, ...], Any], np.ndarray]


def _unshared_count() -> int:
    """The reference count ``ArrayPool.empty`` sees for an array only its list holds, measured by
    the same expression: interpreters differ in the references a call itself adds."""
    held = [np.empty(0)]
    return sys.getrefcount(held[0])


def kept_array(owner: object, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A C-contiguous ``dtype`` array of ``shape`` over storage that ``owner`` keeps as attribute
    ``name``, made anew only when too small or of another type: for a work array that never leaves
    one call of a stage (the pool is for arrays handed on), so its pages are not new every frame."""
    size = int(np.prod(shape))
    buf: np.ndarray | None = getattr(owner, name, None)
    if buf is None or buf.dtype != np.dtype(dtype) or buf.size < size:
        buf = np.empty(size, dtype)
        setattr(owner, name, buf)
    return buf[:size].reshape(shape)


class ArrayPool:
    """``empty(shape, dtype)`` as ``np.empty``, from arrays made before where one is free."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.held_bytes = 0
        self._arrays: dict[tuple[tuple[int, ...], np.dtype], list[np.ndarray]] = {}
        self._lock = threading.Lock()
        self._unshared = _unshared_count()
        self.made = 0  # arrays allocated, pooled or not (what tests and benchmarks read)

    def empty(self, shape: tuple[int, ...], dtype: Any = np.uint8) -> np.ndarray:
        key = (tuple(int(n) for n in shape), np.dtype(dtype))
        with self._lock:
            held = self._arrays.setdefault(key, [])
            for i in range(len(held)):
                if sys.getrefcount(held[i]) == self._unshared:
                    return held[i]
            array = np.empty(key[0], key[1])
            self.made += 1
            if self.held_bytes + array.nbytes <= self.max_bytes:
                held.append(array)
                self.held_bytes += array.nbytes
            return array


__all__ = ["ArrayPool", "Empty", "kept_array"]

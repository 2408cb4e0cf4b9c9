"""A job's ArrayPool: an array comes back only once nothing refers to it."""

from __future__ import annotations

import threading
import time

import numpy as np

from service.array_pool import ArrayPool, kept_array


def test_a_dropped_array_is_handed_out_again() -> None:
    pool = ArrayPool(max_bytes=1 << 20)
    first = pool.empty((2, 4, 4, 3), np.uint8)
    address = first.ctypes.data
    del first
    again = pool.empty((2, 4, 4, 3), np.uint8)
    assert again.ctypes.data == address and pool.made == 1
    other = pool.empty((2, 4, 4), np.float32)  # another shape or type is another array
    assert other.ctypes.data != address and other.dtype == np.float32 and pool.made == 2


def test_an_array_still_referred_to_is_never_handed_out() -> None:
    """A batch in a queue, a view of one frame, a caller that keeps its result: each keeps its
    array out of the pool, and what it holds is never overwritten."""
    pool = ArrayPool(max_bytes=1 << 20)
    kept = pool.empty((3, 8), np.uint8)
    kept[:] = 7
    view = pool.empty((3, 8), np.uint8)[1]  # only a view of the second array is left
    view[:] = 9
    fresh = pool.empty((3, 8), np.uint8)
    fresh[:] = 0
    assert pool.made == 3
    assert (kept == 7).all() and (view == 9).all()
    free = fresh.ctypes.data
    del fresh
    in_list = [pool.empty((3, 8), np.uint8)]  # the one free array; a list's reference counts too
    assert in_list[0].ctypes.data == free and pool.made == 3
    assert pool.empty((3, 8), np.uint8).ctypes.data not in {kept.ctypes.data, view.base.ctypes.data, free}
    assert pool.made == 4


def test_the_pool_keeps_no_more_than_were_in_use_and_at_most_max_bytes() -> None:
    pool = ArrayPool(max_bytes=2 * 64)
    held = [pool.empty((16,), np.float32) for _ in range(4)]  # four in use at once: two are pooled
    pooled = {a.ctypes.data for a in held[:2]}
    del held
    again = [pool.empty((16,), np.float32) for _ in range(3)]
    assert {a.ctypes.data for a in again[:2]} == pooled and pool.made == 5 and pool.held_bytes == 128
    assert pool.empty((8,), np.float32).ctypes.data not in pooled  # the budget is spent: made afresh


def test_threads_never_share_an_array() -> None:
    pool = ArrayPool(max_bytes=1 << 20)
    errors: list[str] = []

    def work(k: int) -> None:
        for _ in range(200):
            a = pool.empty((64,), np.int64)
            a[:] = k
            time.sleep(0)  # let the other threads run while this one holds its array
            if not (a == k).all():
                errors.append(f"thread {k} saw another thread's values")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and pool.made <= 8


def test_a_kept_array_reuses_its_storage_until_it_is_too_small_or_of_another_type() -> None:
    """``kept_array``: a stage's own work array, kept on the stage between calls."""

    class Stage:
        pass

    stage = Stage()
    first = kept_array(stage, "_work", (4, 6), np.float32)
    assert first.shape == (4, 6) and first.dtype == np.float32 and first.flags.c_contiguous
    smaller = kept_array(stage, "_work", (3, 5), np.float32)  # a smaller crop: the same storage
    assert smaller.flags.c_contiguous and smaller.ctypes.data == first.ctypes.data
    larger = kept_array(stage, "_work", (5, 6), np.float32)  # grown
    assert larger.shape == (5, 6) and larger.ctypes.data != first.ctypes.data
    assert kept_array(stage, "_work", (2, 2), np.float32).ctypes.data == larger.ctypes.data
    other = kept_array(stage, "_work", (2, 2), np.bool_)  # another type: made anew
    assert other.dtype == np.bool_ and other.shape == (2, 2)

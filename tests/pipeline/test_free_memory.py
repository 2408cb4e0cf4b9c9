"""A job's process gives its free heap memory back at the end of the job: while a job runs each
thread's heap keeps up to 32 MB free at its top (``pipeline._return_freed_frames``), so that the
work arrays made every frame are not new pages from the kernel each time; a worker that runs job
after job would otherwise keep that much idle."""

from __future__ import annotations

import threading

import numpy as np

from service.pipeline import _return_freed_frames, release_free_memory


def _resident_mb() -> float:
    return int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmRSS:"))) / 1024


def test_free_heap_memory_is_given_back_at_the_end_of_a_job() -> None:
    _return_freed_frames()
    sizes: list[float] = []

    def work() -> None:  # in a thread of its own, as the pipeline's stages run
        blocks = [np.ones(128 * 1024, np.float32) for _ in range(48)]  # 48 x 512 KB: under the mmap threshold
        del blocks  # freed, and kept by the thread's heap
        sizes.append(_resident_mb())
        release_free_memory()
        sizes.append(_resident_mb())

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    kept, released = sizes
    assert kept - released > 16, sizes

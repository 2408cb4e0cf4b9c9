"""Work folders under the spool, and the sweep that removes those whose process died.

Each job, chunk, preview, people check and upload, and each CLI run that reads standard input or
writes standard output (``backdrop-``), gets a folder of its own under ``spool_dir``
(the system's temp folder by default) and removes it when done, in a ``finally``.  A process that
dies does not get there: a worker killed by a segfault, by the kernel for memory, or by its time
limit left the job's input and half-written output behind for good (the reaper ran the job again,
in a new folder).  So a folder's owner holds a lock on a file in it (``flock``), which the kernel
drops when the process ends however it ends; ``sweep_orphans`` removes the folders whose lock it
can take.  A worker process sweeps as it starts, the API as it starts: after a crash, a new
process takes the dead one's place.

The lock file is created under a temporary name and renamed into place once locked, so a sweep
never sees an owner's folder unlocked; a folder without one (made by an older version, or not
ours) is left alone.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path

#: the work folders' name prefixes (``Workdir``'s ``prefix``): only these are swept
PREFIXES = ("job-", "chunk-", "preview-", "check-", "upload-", "backdrop-")
OWNER = ".owner"


class Workdir:
    """A fresh folder under the spool, held by this process until ``remove()``."""

    def __init__(self, prefix: str, spool_dir: Path | None):
        assert prefix.startswith(PREFIXES), prefix
        if spool_dir is not None:
            os.makedirs(spool_dir, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=spool_dir))
        fd, claiming = tempfile.mkstemp(prefix=".claiming-", dir=self.path)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(claiming, self.path / OWNER)
        self._fd: int | None = fd

    def remove(self) -> None:
        """Delete the folder and what is in it, then let go of it (idempotent)."""
        shutil.rmtree(self.path, ignore_errors=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def sweep_orphans(spool_dir: Path | None) -> int:
    """Remove the work folders under the spool whose owning process has died; how many."""
    root = str(spool_dir) if spool_dir is not None else tempfile.gettempdir()
    try:
        entries = list(os.scandir(root))
    except OSError:
        return 0
    removed = 0
    for entry in entries:
        try:
            if not entry.name.startswith(PREFIXES) or not entry.is_dir(follow_symlinks=False):
                continue
            fd = os.open(os.path.join(entry.path, OWNER), os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue  # gone meanwhile, not ours, or made before folders had owners
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # its owner is alive
        try:
            shutil.rmtree(entry.path, ignore_errors=True)
            removed += 1
        finally:
            os.close(fd)
    return removed

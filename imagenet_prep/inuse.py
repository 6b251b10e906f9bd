"""DATA in use: every `imgnet train` and `imgnet test` holds a shared lock on DATA/.in-use.lock while it reads
DATA, so that a tool about to rewrite or delete DATA can see that it is read (`data_in_use`). An flock(2) lock:
released when the holder exits or dies, so a killed run never leaves DATA marked as in use."""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from pathlib import Path

LOCK = ".in-use.lock"


def _open(data_dir) -> int | None:
    """A descriptor of DATA/.in-use.lock (created where DATA is writable), or None where it cannot be had (a
    read-only DATA with no lock file yet, a link or FIFO put in its place): reading DATA never depends on it."""
    try:
        fd = os.open(Path(data_dir) / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError:
        try:
            fd = os.open(Path(data_dir) / LOCK, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def hold_data(data_dir):
    """Mark DATA as read for the length of the block (a shared lock: any number of readers together)."""
    fd = _open(data_dir)
    try:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        if fd is not None:
            os.close(fd)  # closing releases the lock


def data_in_use(data_dir) -> bool:
    """True while some process holds DATA (hold_data): an exclusive lock cannot be had."""
    fd = _open(data_dir)
    if fd is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False

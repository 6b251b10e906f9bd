"""Lock files in a DATA folder: who may write it while who reads it.

    DATA/.prep.lock     one `imgnet prep` at a time (`pid_lock`: a POSIX record lock, exclusive; holds the pid;
                        RUN/.run.lock, one `imgnet train` per run folder, is the same kind)
    DATA/.in-use.lock   a train or test run reading DATA holds it shared (`hold_data`); `imgnet prep --force`,
                        which deletes and rewrites splits, holds it exclusive (`claim_data`) and is refused
                        while any run holds it; `data_in_use` asks without holding it

Both are advisory locks of the kernel: a process that dies (kill -9, a crash) releases its hold. The last
holder removes the file when it lets go, so that a finished prep or run leaves nothing behind. Removal races
are closed by checking, once the lock is held, that the path still names the file locked (else the lock of a
removed file was taken: it is dropped and the file now at the path locked instead).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from pathlib import Path
from typing import Callable

from imagenet_prep.errors import ImgnetError

PREP_LOCK = ".prep.lock"
IN_USE = ".in-use.lock"
_BUSY = (errno.EACCES, errno.EAGAIN)  # what a lock held elsewhere answers (POSIX locks may say EACCES)


class _NoLocks(ImgnetError):
    """The file system refuses locks (some network and FUSE mounts)."""


class _Busy(ImgnetError):
    """Held by another process (data_in_use's answer)."""


def _open(path: Path, writer: str, create: bool = True) -> int | None:
    """The lock file's descriptor: never through a link, never blocking on a FIFO put in its place. None where
    it is absent and `create` is False; ImgnetError naming it when it is not a plain file."""
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        if e.errno == errno.ENOENT and not create:
            return None
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise ImgnetError(f"cannot create the lock file {path} ({e.strerror}); expected a folder this user "
                              "can write in") from None
        raise ImgnetError(f"cannot open the lock file {path} ({e.strerror}); expected a plain file that {writer} "
                          "writes: remove it and rerun") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ImgnetError(f"{path} is not a regular file; expected the lock file {writer} writes: remove it and rerun")
    return fd


def _names(fd: int, path: Path) -> bool:
    """Whether `path` still names the file open as `fd` (not removed, nor replaced, since it was opened)."""
    try:
        st, now = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot be told (a folder that cannot be searched): the file opened is taken as it
    return (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino)


def _take(path: Path, lock, op: int, writer: str, busy: Callable[[int], ImgnetError], create: bool = True):
    """Open and lock the file at `path` without waiting: the descriptor holding it, None where it is absent
    (and `create` is False). `busy(fd)`: the error when another process holds it."""
    while True:
        fd = _open(path, writer, create)
        if fd is None:
            return None
        try:
            lock(fd, op | fcntl.LOCK_NB)
        except OSError as e:
            err = busy(fd) if e.errno in _BUSY else _NoLocks(
                f"cannot lock {path} ({e.strerror}); expected a file system with POSIX locks")
            os.close(fd)
            raise err from None
        if _names(fd, path):
            return fd
        os.close(fd)  # removed by its last holder meanwhile: lock the file the path names now


def _let_go(fd: int, path: Path, lock) -> None:
    """Release the hold; the file is removed when no other process holds it."""
    try:
        lock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if _names(fd, path):
            os.unlink(path)
    except OSError:
        pass  # held by another process (it removes the file), or a read-only folder: left as it is
    finally:
        os.close(fd)


@contextlib.contextmanager
def _held(path: Path, lock, op: int, writer: str, busy: Callable[[int], ImgnetError], create: bool = True):
    fd = _take(path, lock, op, writer, busy, create)
    try:
        yield fd
    finally:
        if fd is not None:
            _let_go(fd, path, lock)


# ------------------------------------------------------------------------------- one writer at a time
@contextlib.contextmanager
def pid_lock(path, writer: str, refused: Callable[[str], str]):
    """One process at a time holds `path` (an exclusive POSIX record lock: held by this process only, forked
    workers do not inherit it; released when it dies). The file holds the pid, for `refused(pid)`, the message
    of the one refused; it is removed when the holder lets go. `writer`: who writes the file, for messages."""
    def busy(fd: int) -> ImgnetError:
        return ImgnetError(refused(os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"))

    with _held(Path(path), fcntl.lockf, fcntl.LOCK_EX, writer, busy) as fd:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield


def prep_lock(out: Path):
    """One prep at a time per DATA folder: two would race on labels.json, the report and --force."""
    return pid_lock(Path(out) / PREP_LOCK, "`imgnet prep`", lambda pid: (
        f"another `imgnet prep` is writing {out} (pid {pid}); wait for it to finish, or use another --out"))


@contextlib.contextmanager
def claim_data(data_dir):
    """Held by `imgnet prep --force` while it deletes and rewrites splits: refused (one line) while a train or
    test run holds DATA (`hold_data`), and those runs are refused while it is held."""
    path = Path(data_dir) / IN_USE

    def busy(fd: int) -> ImgnetError:
        return ImgnetError(f"{data_dir} is in use by a running `imgnet train` or `imgnet test` (it holds {path}); "
                           "--force would delete splits it reads: wait for it to end, or prep into another --out")

    with _held(path, fcntl.flock, fcntl.LOCK_EX, "`imgnet prep` and the runs reading DATA", busy):
        yield


# ------------------------------------------------------------------------------- runs reading DATA
@contextlib.contextmanager
def hold_data(data_dir):
    """Held (shared) by a train or test run for as long as it reads `data_dir`, so that `imgnet prep --force`
    refuses to rewrite the splits under it. ImgnetError while a `prep --force` is rewriting DATA. On a
    read-only DATA (nothing there can be rewritten) or a file system without locks it holds nothing."""
    path = Path(data_dir) / IN_USE

    def busy(fd: int) -> ImgnetError:
        return ImgnetError(f"`imgnet prep --force` is rewriting {data_dir} (it holds {path}); wait for it to "
                           "finish, then start the run again")

    with contextlib.ExitStack() as stack:
        if os.access(data_dir, os.W_OK):  # read-only: nothing can rewrite it
            try:
                stack.enter_context(_held(path, fcntl.flock, fcntl.LOCK_SH, "`imgnet prep` and the runs reading DATA",
                                          busy))
            except _NoLocks:
                pass  # nothing to hold it with: prep --force cannot tell, as before
        yield


def data_in_use(data_dir) -> bool:
    """Whether a live process holds `data_dir` (`hold_data`), asked without holding it."""
    try:
        with _held(Path(data_dir) / IN_USE, fcntl.flock, fcntl.LOCK_EX, "the runs reading DATA",
                   lambda fd: _Busy(), create=False):
            return False
    except _Busy:
        return True

"""Worker processes for the offline stages (prep, pca-stats): a dead worker is an error, never a hang.

Why not `multiprocessing.Pool`: it replaces a worker that dies (the OOM killer, kill -9) and waits
forever for the task that worker held. `ProcessPoolExecutor` notices the death (BrokenProcessPool) but
cannot say which task or signal it was, and neither pool stops its workers when the main process is
killed with SIGKILL.

Here each worker has its own pipe, so the main process knows which tasks each worker holds. One thread
of the main process (the "io thread") sends tasks, receives results and watches the process sentinels
together, so a death is seen at once and named with its signal and the task it was on, and the workers
keep working while the main thread is busy (an LMDB commit with fsync) until `window` results wait.
There are no timeouts: a slow worker (a 179-megapixel decode, a slow network disk) is not a dead one.

Workers ignore SIGINT (Ctrl-C reaches the whole process group; the main process stops them), die
quietly on SIGTERM, are killed by the kernel when the main process dies (PR_SET_PDEATHSIG on Linux, a
thread watching the parent pid elsewhere) and exit without a word when their pipe closes. While a pool
lives in the main thread, SIGTERM to the main process raises KeyboardInterrupt there, so it ends the way
Ctrl-C does.

Tasks travel as pickles through the pipes: keep them small (paths, byte ranges, index ranges); results
may be large.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import os
import pickle
import queue
import signal
import sys
import threading
import time
from collections import deque
from multiprocessing.connection import wait

from imagenet_prep.errors import WorkerDied

PREFETCH = 2  # tasks sent to a worker ahead of its results: one to work on, one waiting, so it never idles
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, attached as the __cause__ of the one re-raised here."""

    def __str__(self):
        return self.args[0]


class WorkerPool:
    """`workers` processes running `fn(item)` for `imap`; create it in a long-lived thread (PR_SET_PDEATHSIG
    fires when the creating thread ends). Use as a context manager, or call `close()` (alias `terminate()`)."""

    def __init__(self, workers: int, initializer=None, initargs: tuple = (), name: str = "worker",
                 hint: str = "", context: str | None = None):
        """`name` and `hint` go into the error for a dead worker (`hint`: what the user should do next).
        `context`: "fork" (default on Linux: workers inherit the caller's objects) or "spawn"."""
        method = context or ("fork" if sys.platform.startswith("linux") else "spawn")
        if method not in ("fork", "spawn"):  # forkserver: the parent-pid check would see the server
            raise ValueError(f"context={method!r}; expected fork or spawn")
        ctx = mp.get_context(method)
        self.name, self.hint = name, hint
        self._procs, self._conns = [], []
        self._thread, self._stop, self._taken = None, False, 0
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        main = os.getpid()
        for stream in (sys.stdout, sys.stderr):  # a forked copy of unflushed output would be printed twice
            with contextlib.suppress(Exception):
                stream.flush()
        for _ in range(max(1, workers)):
            ours, theirs = ctx.Pipe(duplex=True)
            inherited = [*self._conns, ours] if method == "fork" else []  # pipe ends a fork copies; closed there
            p = ctx.Process(target=_worker_main, args=(theirs, main, initializer, initargs, inherited),
                            name=f"{name}-{len(self._procs)}", daemon=True)
            p.start()
            theirs.close()  # the worker holds the only copy: its death closes the pipe
            self._procs.append(p)
            self._conns.append(ours)
        self._sigterm = _sigterm_as_interrupt()
        self._sigterm.__enter__()

    def __len__(self) -> int:
        return len(self._procs)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def imap(self, fn, items, window: int | None = None, describe=repr):
        """Generator of fn(item) for each item, in order. At most `window` items (default 8 per worker) are
        sent or done but not yet consumed. An exception raised by fn is re-raised here with its remote
        traceback as __cause__; a dead worker raises WorkerDied naming describe(item) for its task. Leaving
        the generator before its end (break, exception) closes the pool."""
        if self._thread is not None or not self._procs:
            raise RuntimeError("one imap at a time per pool, and only before close()")
        window = max(1, window or 8 * len(self._procs))
        results: queue.Queue = queue.Queue()
        self._stop, self._taken = False, 0
        self._thread = threading.Thread(target=self._serve, args=(fn, iter(items), window, describe, results),
                                        name=f"{self.name}-io", daemon=True)
        self._thread.start()
        done, finished = {}, False
        try:
            while True:
                while self._taken in done:
                    ok, value = done.pop(self._taken)
                    if not ok:  # fn raised: re-raised in its turn, as a plain loop would
                        _reraise(value)
                    self._taken += 1
                    self._poke()  # the window moved: the io thread may send more
                    yield value
                kind, index, value = results.get()
                if kind == "died":
                    raise WorkerDied(value)
                if kind == "end":
                    finished = True
                    return
                if index is None:  # the initializer (or the io thread) failed
                    _reraise(value)
                done[index] = (kind == "ok", value)
        finally:
            self._stop_thread()
            if not finished:
                self.close()

    # ------------------------------------------------------------------------------ io thread
    def _serve(self, fn, items, window: int, describe, results: queue.Queue) -> None:
        held = [deque() for _ in self._procs]  # per worker: (index, item) sent, result not yet back
        sent, exhausted = 0, False
        fds = {c.fileno(): w for w, c in enumerate(self._conns)}
        sentinels = {p.sentinel: w for w, p in enumerate(self._procs)}
        try:
            while not self._stop:
                while not exhausted and sent < self._taken + window:
                    w = min(range(len(held)), key=lambda i: len(held[i]))
                    if len(held[w]) >= PREFETCH:
                        break
                    try:
                        item = next(items)
                    except StopIteration:
                        exhausted = True
                        break
                    held[w].append((sent, item))
                    try:
                        self._conns[w].send_bytes(pickle.dumps((sent, fn, item), pickle.HIGHEST_PROTOCOL))
                    except (BrokenPipeError, ConnectionError):  # it is gone: pass on what it said first
                        self._drain(w, held[w], results)
                        return results.put(("died", None, self._death(w, held[w], describe)))
                    sent += 1
                if exhausted and not any(held):
                    return results.put(("end", None, None))
                for r in wait([*self._conns, *sentinels, self._wake_r]):
                    if r == self._wake_r:
                        os.read(self._wake_r, 4096)
                        continue
                    w = sentinels[r] if isinstance(r, int) else fds[r.fileno()]
                    if not self._drain(w, held[w], results):  # EOF, or the process is gone
                        return results.put(("died", None, self._death(w, held[w], describe)))
        except BaseException as e:  # noqa: BLE001 - e.g. an item that cannot be pickled: the consumer raises it
            results.put(("raise", None, (e, None)))

    def _drain(self, w: int, held: deque, results: queue.Queue) -> bool:
        """Move every result waiting in worker w's pipe to `results`; False when the worker is gone."""
        conn = self._conns[w]
        try:
            while conn.poll():
                index, ok, value = pickle.loads(conn.recv_bytes())
                if index is not None:  # None: the initializer failed
                    assert held and held[0][0] == index, (w, index, held and held[0][0])
                    held.popleft()
                results.put(("ok" if ok else "raise", index, value))
        except (EOFError, OSError):
            return False
        return self._procs[w].is_alive()

    def _death(self, w: int, held: deque, describe) -> str:
        p = self._procs[w]
        p.join(5)  # its pipe closed because it exited: the exit status is there or about to be
        code = p.exitcode
        if code is None:
            cause = "closed its pipe"
        elif code < 0:
            sig = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
            cause = f"was killed by {sig}" + (" (sent by the kernel's out-of-memory killer, see `dmesg`, or by "
                                              "kill -9)" if -code == signal.SIGKILL else "")
        else:
            cause = f"exited with status {code}"
        task = f"while working on {_describe(describe, held[0][1])}" if held else "while idle"
        return f"{self.name} worker (pid {p.pid}) {cause} {task}" + (f"; {self.hint}" if self.hint else "")

    # ------------------------------------------------------------------------------ shutdown
    def _poke(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b".")

    def _stop_thread(self) -> None:
        if self._thread is not None:
            self._stop = True
            self._poke()
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        """Stop the workers now (SIGTERM, then SIGKILL after a second) and release the pipes; idempotent."""
        self._stop_thread()
        for p in self._procs:
            if p.is_alive():
                p.terminate()
        deadline = time.monotonic() + 1.0
        for p in self._procs:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join()
        for c in self._conns:
            c.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._procs, self._conns = [], []
        self._wake_r = self._wake_w = -1
        self._sigterm.__exit__(None, None, None)

    terminate = close  # the multiprocessing.Pool spelling

    def join(self) -> None:
        """Nothing left to wait for after close(); kept for the multiprocessing.Pool spelling."""


def _reraise(value) -> None:
    exc, tb = value
    raise exc from (RemoteTraceback(tb) if tb else None)


def _describe(describe, item) -> str:
    try:
        text = str(describe(item))
    except Exception:  # noqa: BLE001 - the error message must not fail
        text = repr(item)
    return text if len(text) <= 200 else text[:197] + "..."


# ---------------------------------------------------------------------------------- signals
@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt in the main thread while inside (when SIGTERM has its default
    action there), so a kill ends with the same cleanup and message as Ctrl-C."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is _raise_interrupt:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def sigterm_as_interrupt():
    """Context manager: SIGTERM raises KeyboardInterrupt in the main thread inside it (see WorkerPool)."""
    return _sigterm_as_interrupt()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")


# ----------------------------------------------------------------------------------- worker side
def _worker_main(conn, main: int, initializer, initargs, inherited) -> None:
    for c in inherited:  # the main process's ends of this and earlier workers' pipes, copied by fork
        c.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the main process's KeyboardInterrupt handler
    _die_with(main)
    try:
        if initializer is not None:
            try:
                initializer(*initargs)
            except BaseException as e:  # noqa: BLE001 - reported to the main process, which raises it
                conn.send_bytes(_result(None, False, e))
                return
        while True:
            index, fn, item = pickle.loads(conn.recv_bytes())
            try:
                out = _result(index, True, fn(item))
            except BaseException as e:  # noqa: BLE001 - the main process decides what an error means
                out = _result(index, False, e)
            conn.send_bytes(out)
    except (EOFError, OSError):  # the main process closed our pipe or died: nobody to tell, exit quietly
        os._exit(0)


def _result(index, ok: bool, value) -> bytes:
    if not ok:
        import traceback

        tb = "".join(traceback.format_exception(value))
        value = (_portable(value), tb)
    try:
        return pickle.dumps((index, ok, value), pickle.HIGHEST_PROTOCOL)
    except Exception as e:  # noqa: BLE001 - a result that cannot be pickled is the task's error
        return pickle.dumps((index, False, (RuntimeError(f"result cannot be sent back: {type(e).__name__}: {e}"),
                                            None)), pickle.HIGHEST_PROTOCOL)


def _portable(e: BaseException) -> BaseException:
    """`e` if it survives pickling, else a RuntimeError with its type and message."""
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(e).__name__}: {e}")


def _die_with(main: int) -> None:
    """Exit when the main process dies, even in the middle of a long task."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0:
                if os.getppid() != main:  # it died before prctl took effect
                    os._exit(0)
                return
        except (OSError, AttributeError):
            pass
    threading.Thread(target=_watch_parent, args=(main,), name="parent-watch", daemon=True).start()


def _watch_parent(main: int) -> None:
    while os.getppid() == main:
        time.sleep(0.5)
    os._exit(0)

"""pool.py: ordered bounded results, errors carried back, a dead worker named (never a hang), no orphans."""

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from imagenet_prep import ImgnetError
from imagenet_prep.errors import WorkerDied
from imagenet_prep.pool import RemoteTraceback, WorkerPool

ROOT = Path(__file__).resolve().parents[1]
_STARTED = None  # mp.Value inherited by forked workers: tasks begun


@pytest.fixture(autouse=True)
def no_hang():
    """A pool that missed a death would wait forever: fail instead (SIGALRM in the main thread)."""
    def hang(signum, frame):
        raise AssertionError("pool hung")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _square(x):
    return x * x


def _counted(x):
    with _STARTED.get_lock():
        _STARTED.value += 1
    return x


def _fail_on(x):
    if x == 5:
        raise ImgnetError(f"bad item {x}")
    if x == 6:
        raise ValueError("plain bug")
    return x


def _killed_on_13(x):
    if x == 13:
        os.kill(os.getpid(), signal.SIGKILL)  # what the OOM killer does
    return x


def _exits_on_14(x):
    if x == 14:
        os._exit(3)  # a C library giving up
    return x


def _slow(x):
    if x == "slow":
        time.sleep(1.5)  # a huge decode: slow is not dead
    return x


def _pid_then_sleep(x):
    return os.getpid() if x < 0 else time.sleep(x)


def _bad_init():
    raise ImgnetError("cannot open the split")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is dead: its parent just has not reaped it
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_results_in_order_for_any_window():
    with WorkerPool(2) as pool:
        for window in (1, 3, 100):
            assert list(pool.imap(_square, range(50), window=window)) == [x * x for x in range(50)]
        assert list(pool.imap(_square, [])) == []


def test_spawned_workers_work_and_their_death_is_named():
    """The start method used where fork is not: workers import fn by name."""
    with WorkerPool(2, context="spawn", name="spawned") as pool:
        assert list(pool.imap(_square, range(20), window=4)) == [x * x for x in range(20)]
        with pytest.raises(WorkerDied, match=r"spawned worker .* killed by SIGKILL .* on item 13"):
            list(pool.imap(_killed_on_13, range(20), describe=lambda i: f"item {i}"))


def test_in_flight_results_are_bounded_by_the_window():
    global _STARTED
    _STARTED = mp.get_context("fork").Value("i", 0)
    with WorkerPool(2, context="fork") as pool:
        it = pool.imap(_counted, range(1000), window=10)
        assert next(it) == 0
        time.sleep(0.5)  # plenty for unbounded workers to race through many of the 1000 tasks
        assert _STARTED.value <= 1 + 10
        assert list(it) == list(range(1, 1000))


def test_worker_exceptions_come_back_with_their_traceback():
    with WorkerPool(2) as pool, pytest.raises(ImgnetError, match="bad item 5") as e:
        list(pool.imap(_fail_on, range(5, 7)))
    assert isinstance(e.value.__cause__, RemoteTraceback) and "_fail_on" in str(e.value.__cause__)
    with WorkerPool(2) as pool, pytest.raises(ValueError, match="plain bug"):
        list(pool.imap(_fail_on, [6]))


def test_initializer_error_is_raised():
    with WorkerPool(1, initializer=_bad_init) as pool, pytest.raises(ImgnetError, match="cannot open the split"):
        list(pool.imap(_square, range(3)))


@pytest.mark.parametrize("fn, item, cause", [(_killed_on_13, 13, "killed by SIGKILL"),
                                            (_exits_on_14, 14, "exited with status 3")])
def test_dead_worker_is_named_with_its_task(fn, item, cause):
    with WorkerPool(2, name="prep", hint="rerun to resume") as pool:
        with pytest.raises(WorkerDied, match=cause) as e:
            list(pool.imap(fn, range(40), describe=lambda i: f"img_{i}.JPEG"))
    msg = str(e.value)
    assert f"while working on img_{item}.JPEG" in msg and msg.startswith("prep worker (pid ")
    assert msg.endswith("; rerun to resume") and "\n" not in msg


def test_worker_killed_from_outside_mid_task():
    with WorkerPool(2) as pool:
        pids = {pool_pid for pool_pid in pool.imap(_pid_then_sleep, [-1, -2])}
        it = pool.imap(_pid_then_sleep, [30, 30], describe=lambda s: f"a {s}-second task")
        victim = sorted(pids)[0]
        import threading

        threading.Timer(0.5, os.kill, (victim, signal.SIGKILL)).start()
        with pytest.raises(WorkerDied, match=rf"pid {victim}\) was killed by SIGKILL .* while working on a 30-second"):
            next(it)
    assert not any(_alive(p) for p in pids)  # the pool closed the survivor too


def test_slow_worker_is_not_dead():
    with WorkerPool(2) as pool:
        assert list(pool.imap(_slow, ["slow", 1, 2, 3])) == ["slow", 1, 2, 3]


def test_leaving_early_stops_the_workers():
    with WorkerPool(2) as pool:
        pids = list(pool.imap(_pid_then_sleep, [-1, -2]))
        for _ in pool.imap(_square, range(100)):
            break
        assert not any(_alive(p) for p in pids)


_SCRIPT = """
import os, sys, time
from imagenet_prep.pool import WorkerPool

def task(x):
    if x < 0:
        return os.getpid()
    time.sleep(x)

if __name__ == "__main__":
    with WorkerPool(2) as pool:
        pids = list(pool.imap(task, [-1, -2]))
        print(" ".join(map(str, pids)), flush=True)
        try:
            for _ in pool.imap(task, [60] * 8):
                pass
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
"""


def _start(tmp_path):
    script = tmp_path / "main.py"
    script.write_text(textwrap.dedent(_SCRIPT))
    proc = subprocess.Popen([sys.executable, str(script)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2
    time.sleep(0.3)  # both workers inside their 60-second task
    return proc, pids


def _gone_within(pids, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
def test_workers_die_with_a_killed_main_process_quietly(tmp_path):
    proc, pids = _start(tmp_path)
    proc.kill()  # kill -9 of the main process, both workers mid-task
    _, err = proc.communicate(timeout=20)  # EOF on stderr: every process holding it (the workers too) is gone
    assert _gone_within(pids, 3)
    assert "Traceback" not in err and "Error" not in err, err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
def test_sigterm_to_main_is_a_clean_interrupt(tmp_path):
    proc, pids = _start(tmp_path)
    proc.terminate()
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130 and err.strip() == "interrupted", err
    assert _gone_within(pids, 3)

"""Worker-pool overhead: imagenet_prep.pool.WorkerPool against multiprocessing.Pool.imap, side by side.

The pool adds what multiprocessing.Pool lacks (a dead worker named with its task, no orphans after a kill
-9, bounded results); this checks it costs no throughput on prep's traffic. Each task returns one raw
256x256x3 image (196,608 bytes), as prep's workers do, after `--work-ms` of simulated decoding (sleep, so
the figure measures the plumbing, not the 2 shared cores); the consumer stalls `--stall-ms` every 256
results, as prep's LMDB commit with fsync does. multiprocessing.Pool runs prep's previous setting
(imap, chunksize 32). Two runs each: with the simulated work, and with none (pure transfer).

    python bench/pool_overhead.py [--tasks 3000] [--workers 2] [--work-ms 2] [--stall-ms 50]

Last line: JSON with pool_img_s, mp_pool_img_s, pool_transfer_img_s, mp_pool_transfer_img_s, tasks, workers.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RAW_BYTES = 256 * 256 * 3
COMMIT_EVERY = 256  # prep's images per LMDB transaction


def task(work_s: float, i: int) -> bytes:
    if work_s:
        time.sleep(work_s)
    return bytes(RAW_BYTES)


def consume(results, stall_s: float) -> int:
    n = 0
    for r in results:
        assert len(r) == RAW_BYTES
        n += 1
        if stall_s and n % COMMIT_EVERY == 0:
            time.sleep(stall_s)
    return n


def run_ours(tasks: int, workers: int, work_s: float, stall_s: float) -> float:
    from imagenet_prep.pool import WorkerPool

    t = time.perf_counter()
    with WorkerPool(workers) as pool:  # prep's window: two of max(256, 64 * workers)
        n = consume(pool.imap(partial(task, work_s), range(tasks), window=2 * max(256, 64 * workers)), stall_s)
    return n / (time.perf_counter() - t)


def run_mp(tasks: int, workers: int, work_s: float, stall_s: float) -> float:
    t = time.perf_counter()
    with mp.get_context("fork").Pool(workers) as pool:
        n = consume(pool.imap(partial(task, work_s), range(tasks), chunksize=32), stall_s)
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=3000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work-ms", type=float, default=2.0)
    ap.add_argument("--stall-ms", type=float, default=50.0)
    a = ap.parse_args()
    work, stall = a.work_ms / 1000, a.stall_ms / 1000
    out = {"pool_img_s": run_ours(a.tasks, a.workers, work, stall),
           "mp_pool_img_s": run_mp(a.tasks, a.workers, work, stall),
           "pool_transfer_img_s": run_ours(a.tasks, a.workers, 0.0, 0.0),
           "mp_pool_transfer_img_s": run_mp(a.tasks, a.workers, 0.0, 0.0)}
    print(f"{'':24s}{'WorkerPool':>12s}{'mp.Pool':>12s}")
    print(f"{'work + commit stalls':24s}{out['pool_img_s']:12.0f}{out['mp_pool_img_s']:12.0f}  images/s")
    print(f"{'transfer only':24s}{out['pool_transfer_img_s']:12.0f}{out['mp_pool_transfer_img_s']:12.0f}  images/s")
    out = {k: round(v, 1) for k, v in out.items()}
    print(json.dumps({**out, "tasks": a.tasks, "workers": a.workers, "work_ms": a.work_ms, "stall_ms": a.stall_ms}))


if __name__ == "__main__":
    main()

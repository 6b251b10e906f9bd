"""The streamed packer: items of a layout read unit by unit (`Layout.streamed`; the Hugging Face shards),
whose records arrive out of order.

The names-only listing fixed each item's final index up front: its position in `items`, the contract
order (train by class then name, val by name) that the official tars give. An item's unit is
(item.path, item.offset) and its position in the unit item.size; the layout reads the wanted positions of
a unit (`Layout.read_unit`). Records are committed at their index, in whatever order the units hold them,
each commit together with how far its unit is done (`LmdbWriter.commit_at`), so a rerun after a kill skips
exactly what is committed and ends with the content of an uninterrupted run; `LmdbWriter.finish` closes up
the indices of rejected images.

    unit_in_worker   one task per unit: a worker reads it (the memory of one unit) and returns its records
    otherwise        a unit has no random access: threads of the main process stream the units, each once,
                     and workers decode windows of them
"""

from __future__ import annotations

import contextlib
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

from imagenet_prep import store
from imagenet_prep.pack import commits, worker
from imagenet_prep.sources.base import Layout


def _units(items) -> dict[tuple[str, int], list[tuple]]:
    """{(shard, unit): [(position, final index, name, label)]} in shard order."""
    units: dict[tuple[str, int], list[tuple]] = {}
    for index, it in enumerate(items):
        units.setdefault((it.path, it.offset), []).append((it.size, index, it.name, it.label))
    return {k: sorted(v) for k, v in sorted(units.items())}


def _collect(results) -> tuple[list, list, list]:
    """(final index, name, label, process_bytes result)s -> records for commit_at, rejected, converted."""
    records, rejected, converted = [], [], []
    for index, name, label, (data, reason, entry) in results:
        if data is None:
            rejected.append({"name": name, "reason": reason, "index": index})
        else:
            records.append((index, data, label, name))
            if entry:
                converted.append({**entry, "index": index})
    return records, rejected, converted


def _commit(writer: store.LmdbWriter, results: list, units: dict, clock: commits.Clock) -> None:
    records, rejected, converted = _collect(results)
    clock.stamp(writer)
    writer.commit_at(records, len(results), units, rejected, converted)


def _result(index: int, name: str, label: int, data: bytes | None, why: str | None) -> tuple:
    """(final index, name, label, process_bytes result) of one image; no bytes: refused with `why`."""
    return index, name, label, (None, why, None) if data is None else worker.process_bytes(data, name)


# ------------------------------------------------------------------------------ a unit per worker
def _whole_unit(task) -> tuple[str, list[tuple]]:
    """Worker: read and decode the wanted positions of one unit."""
    key, layout, path, unit, rows = task
    by_pos = {pos: (index, name, label) for pos, index, name, label in rows}
    return key, [_result(*by_pos[pos], data, why)
                 for pos, data, why in layout.read_unit(path, unit, {p: v[1] for p, v in by_pos.items()})]


def _pack_units(layout: Layout, units, writer: store.LmdbWriter, cfg, workers: int, bar, clock) -> None:
    """One task per unit, committed as each comes back (in task order: a few units in flight)."""
    done = writer.progress.get("units", {})
    tasks = [(f"{Path(p).name}:{u}", layout, p, u, rows) for (p, u), rows in units.items()
             if f"{Path(p).name}:{u}" not in done]
    with contextlib.ExitStack() as stack:
        # a result is a whole unit's records: one task per worker bounds the memory. No more: a task carries
        # its unit's rows (a CIFAR batch: 10,000 names, more than a pipe holds), and one sent ahead to a busy
        # worker would block the pool's io thread while that worker waits to send it its result
        results = _mapped(stack, _whole_unit, tasks, workers > 1, workers, cfg, workers, lambda t: f"unit {t[0]}")
        for key, out in results:
            _commit(writer, out, {key: 1}, clock)
            bar.update(len(out))


def _mapped(stack: contextlib.ExitStack, fn, tasks, pooled: bool, workers: int, cfg, window: int, describe):
    """fn over tasks in order: in a pool of `workers` processes (at most `window` tasks in flight, closed with
    `stack`) where `pooled`, else in this process."""
    if not pooled:
        return map(fn, tasks)
    pool = stack.enter_context(worker.pool(workers, cfg.encoding, cfg.quality, cfg.size))
    return pool.imap(fn, tasks, window=window, describe=describe)


# --------------------------------------------------------------------------- streamed units
def _decode(task):
    """Worker: one image's bytes -> (position, its result)."""
    pos, index, name, label, data, why = task
    return pos, _result(index, name, label, data, why)


def _members(layout: Layout, path: str, wanted: dict[int, tuple]):
    """(position, final index, name, label, bytes, why) of the wanted positions, reading the unit once."""
    for pos, data, why in layout.read_unit(path, 0, {p: v[1] for p, v in wanted.items()}):
        yield (pos, *wanted[pos], data, why)


def _pack_stream(layout: Layout, path: str, rows, writer: store.LmdbWriter, cfg, workers: int, bar, window: int,
                 lock, stop, clock) -> None:
    """Stream one unit from where its committed records end; `workers` processes of its own decode it (the
    pool's io thread reads the stream, `window` members ahead of the commits); 0 workers: this thread."""
    key = Path(path).name
    with lock:
        start = writer.progress.get("units", {}).get(key, 0)  # stream positions done
    wanted = {pos: (index, name, label) for pos, index, name, label in rows if pos >= start}
    if not wanted:
        return
    results = []

    def commit(done: int) -> None:
        with lock:
            _commit(writer, results, {key: done}, clock)
            bar.update(len(results))

    with contextlib.ExitStack() as stack:
        decoded = _mapped(stack, _decode, _members(layout, path, wanted), workers > 0, workers, cfg, window,
                          lambda t: f"{key}: {t[2]!r}")
        for pos, r in decoded:
            if stop.is_set():
                return
            results.append(r)
            if len(results) >= commits.COMMIT_EVERY:
                commit(pos + 1)
                results = []
        commit(max(wanted) + 1)


def _pack_streams(layout: Layout, units, writer: store.LmdbWriter, cfg, workers: int, bar, window: int,
                  streams: int, clock) -> None:
    """The units are streamed `streams` at a time, each by a thread of this process with its share of the
    workers: gunzip (which releases the GIL) of one stream runs at a few hundred MB/s, less than many workers
    decode."""
    lock, stop = threading.Lock(), threading.Event()
    streams = max(1, min(streams, len(units)))
    share = max(1, workers // streams) if workers > 1 else 0  # 0: decode in this process
    shards = [(layout, path, rows, writer, cfg, share, bar, window, lock, stop, clock)
              for (path, _), rows in units.items()]
    if streams < 2:
        for args in shards:
            _pack_stream(*args)
        return
    ex = ThreadPoolExecutor(streams)
    try:
        for f in as_completed([ex.submit(_pack_stream, *args) for args in shards]):
            f.result()
    except BaseException:  # an error or Ctrl-C: the other streams stop at their next result
        stop.set()
        raise
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def pack(items, writer: store.LmdbWriter, cfg, workers: int, name: str, layout: Layout, clock: commits.Clock) -> int:
    """Process the items not yet committed and commit them at their final index; returns how many."""
    start = writer.consumed
    if start == len(items):
        return 0
    bar = tqdm(total=len(items), initial=start, unit="img", desc=f"prep {name}", dynamic_ncols=True,
               smoothing=0.05, disable=None)
    if workers <= 1:
        worker.init_worker(cfg.encoding, cfg.quality, cfg.size)
    try:
        if layout.unit_in_worker:
            _pack_units(layout, _units(items), writer, cfg, workers, bar, clock)
        else:
            _pack_streams(layout, _units(items), writer, cfg, workers, bar, window=max(64, 16 * workers),
                          streams=min(workers, 4), clock=clock)
    except KeyboardInterrupt:
        print(f"\ninterrupted: the {writer.written} images committed to {writer.path} are kept; rerun the same "
              "command to continue", file=sys.stderr)
        raise
    finally:
        bar.close()
    return writer.consumed - start

"""Packing sources read shard by shard (imagenet_prep.hf), whose records arrive out of order.

The names-only listing fixed each item's final index up front: its position in `items`, the contract
order (train by class then name, val by name) that the official tars give. Records are committed at
that index, in whatever order the shards hold them, each commit together with how far its shard or row
group is done (`LmdbWriter.commit_at`), so a rerun after a kill skips exactly what is committed and ends
with the content of an uninterrupted run; `LmdbWriter.finish` closes up the indices of rejected images.

    parquet  one task per row group: a worker reads it (memory: one row group) and returns its records
    tar.gz   no random access: threads of the main process stream the shards, each once, and workers
             decode windows of them
"""

from __future__ import annotations

import contextlib
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

from imagenet_prep import hf, prep, store
from imagenet_prep.errors import ImgnetError


def _units(items) -> dict[tuple[str, int], list[tuple]]:
    """{(shard, row group): [(row or stream position, final index, name, label)]} in shard order."""
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


def _commit(writer: store.LmdbWriter, results: list, units: dict, clock) -> None:
    records, rejected, converted = _collect(results)
    clock.stamp(writer)
    writer.commit_at(records, len(results), units, rejected, converted)


def in_order(entries: list[dict], items=None, locate=None) -> list[dict]:
    """Report entries in record order (each carries its item's index), each named where its file is in the
    source, `locate(items[index])` (sources.Source.locate), when `locate` is given."""
    if locate is not None and any("index" not in e for e in entries):  # a name the store refused (in order)
        first = {}
        for i, it in enumerate(items):
            first.setdefault(it.name, i)
        entries = [e if "index" in e or e["name"] not in first else {**e, "index": first[e["name"]]}
                   for e in entries]

    def named(e: dict) -> dict:
        out = {k: v for k, v in e.items() if k != "index"}
        if locate is not None and "index" in e:
            out["name"] = locate(items[e["index"]])
        return out
    return [named(e) for e in sorted(entries, key=lambda e: e.get("index", -1))]


def _check_name(got: str | None, want: str, where: str) -> None:
    if hf.original_name(got, where)[0] != want:
        raise ImgnetError(f"{where} is {got!r}, but the listing cached in DATA has {want} there; the shard changed "
                          "since it was listed: rerun with --force")


# ----------------------------------------------------------------------------------- parquet
def _row_group(task) -> tuple[str, list[tuple]]:
    """Worker: decode the wanted rows of one row group."""
    key, path, rg, rows = task
    table = hf.read_row_group(path, rg)
    out = []
    for row, index, name, label in rows:
        where = f"{path} row group {rg} row {row}"
        if row >= len(table):
            raise ImgnetError(f"{where} is missing (the row group has {len(table)} rows); the shard changed since "
                              "it was listed: rerun with --force")
        ipath, data = table[row]
        _check_name(ipath, name, where)
        out.append((index, name, label, (None, "no image bytes in the row", None) if data is None
                    else prep.process_bytes(data, name)))
    return key, out


def _pack_parquet(units, writer: store.LmdbWriter, cfg, workers: int, bar, clock) -> None:
    """One task per row group, committed as each comes back (in task order: a few row groups in flight)."""
    done = writer.progress.get("units", {})
    tasks = [(f"{Path(p).name}:{rg}", p, rg, rows) for (p, rg), rows in units.items()
             if f"{Path(p).name}:{rg}" not in done]
    with contextlib.ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(prep._pool(workers, cfg))
            # a result is a whole row group's records: a window just over one per worker bounds the memory
            results = pool.imap(_row_group, tasks, window=workers + 2, describe=lambda t: f"row group {t[0]}")
        else:
            results = map(_row_group, tasks)
        for key, out in results:
            _commit(writer, out, {key: 1}, clock)
            bar.update(len(out))


# ------------------------------------------------------------------------------------ tar.gz
def _decode(task):
    """Worker: one tar.gz member's bytes -> its result; None bytes: a member over sources.MAX_IMAGE_BYTES."""
    from imagenet_prep.sources import MAX_IMAGE_BYTES

    pos, index, name, label, data = task
    if data is None:
        return pos, (index, name, label, (None, f"over the {MAX_IMAGE_BYTES:,} bytes of the largest image the "
                                                "toolkit reads", None))
    return pos, (index, name, label, prep.process_bytes(data, name))


def _members(path: str, wanted: dict[int, tuple]):
    """(position, final index, name, label, bytes) of the wanted members, reading the shard once."""
    last = max(wanted)
    for pos, mname, data in hf.stream_targz(Path(path), want=wanted.keys()):
        if pos in wanted:
            index, name, label = wanted[pos]
            _check_name(mname, name, f"{path} member {pos}")
            yield pos, index, name, label, data
        if pos >= last:
            return
    raise ImgnetError(f"{path} ends before member {last}, which its listing in DATA has; the shard changed since it "
                      "was listed: rerun with --force")


def _pack_shard(path: str, rows, writer: store.LmdbWriter, cfg, workers: int, bar, window: int, lock, stop,
                clock) -> None:
    """Stream one tar.gz shard from where its committed records end; `workers` processes of its own decode
    it (the pool's io thread reads the stream, `window` members ahead of the commits); 0 workers: this thread."""
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
        members = _members(path, wanted)
        if workers > 0:
            pool = stack.enter_context(prep._pool(workers, cfg))
            decoded = pool.imap(_decode, members, window=window, describe=lambda t: f"{key}: {t[2]!r}")
        else:
            decoded = map(_decode, members)
        for pos, r in decoded:
            if stop.is_set():
                return
            results.append(r)
            if len(results) >= prep.COMMIT_EVERY:
                commit(pos + 1)
                results = []
        commit(max(wanted) + 1)


def _pack_targz(units, writer: store.LmdbWriter, cfg, workers: int, bar, window: int, streams: int, clock) -> None:
    """The shards are streamed `streams` at a time, each by a thread of this process with its share of the
    workers: gunzip (which releases the GIL) of one stream runs at a few hundred MB/s, less than many workers
    decode."""
    lock, stop = threading.Lock(), threading.Event()
    streams = max(1, min(streams, len(units)))
    share = max(1, workers // streams) if workers > 1 else 0  # 0: decode in this process
    shards = [(path, rows, writer, cfg, share, bar, window, lock, stop, clock)
              for (path, _), rows in units.items()]
    if streams < 2:
        for args in shards:
            _pack_shard(*args)
        return
    ex = ThreadPoolExecutor(streams)
    try:
        for f in as_completed([ex.submit(_pack_shard, *args) for args in shards]):
            f.result()
    except BaseException:  # an error or Ctrl-C: the other streams stop at their next result
        stop.set()
        raise
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def pack(items, writer: store.LmdbWriter, cfg, workers: int, name: str, layout: str, clock) -> int:
    """Process the items not yet committed and commit them at their final index; returns how many."""
    start = writer.consumed
    if start == len(items):
        return 0
    bar = tqdm(total=len(items), initial=start, unit="img", desc=f"prep {name}", dynamic_ncols=True,
               smoothing=0.05, disable=None)
    if workers <= 1:
        prep._init_worker(cfg.encoding, cfg.quality)
    try:
        if layout == hf.PARQUET:
            _pack_parquet(_units(items), writer, cfg, workers, bar, clock)
        else:
            _pack_targz(_units(items), writer, cfg, workers, bar, window=max(64, 16 * workers),
                        streams=min(workers, 4), clock=clock)
    except KeyboardInterrupt:
        print(f"\ninterrupted: the {writer.written} images committed to {writer.path} are kept; rerun the same "
              "command to continue", file=sys.stderr)
        raise
    finally:
        bar.close()
    return writer.consumed - start

"""The in-order packer: items read by byte range (any layout whose `streamed` is False), processed by a pool
in record order and committed in that order, one transaction per COMMIT_EVERY images together with how many
items are done, so that a rerun after a kill resumes exactly where the last commit ended."""

from __future__ import annotations

import sys

from tqdm import tqdm

from imagenet_prep import store
from imagenet_prep.pack import commits, worker


def pack(items, writer: store.LmdbWriter, cfg, workers: int, name: str, clock: commits.Clock) -> int:
    """Process items[writer.consumed:] and commit them in order; returns how many were processed."""
    start = writer.consumed
    todo = items[start:]
    if not todo:
        return 0
    bar = tqdm(total=len(items), initial=start, unit="img", desc=f"prep {name}", dynamic_ncols=True,
               smoothing=0.05, disable=None)
    pool = None
    if workers > 1:
        pool = worker.pool(workers, cfg.encoding, cfg.quality, cfg.size)
        # results wait in memory only while the writer is behind by less than 2 * window images
        results = pool.imap(worker.process_item, todo, window=2 * max(256, 64 * workers),
                            describe=lambda it: repr(it.name))
    else:
        worker.init_worker(cfg.encoding, cfg.quality, cfg.size)
        results = map(worker.process_item, todo)
    try:
        _commit_all(zip(todo, results), start, writer, bar, clock)
    except KeyboardInterrupt:
        bar.close()
        print(f"\ninterrupted: the {writer.written} images committed to {writer.path} are kept; rerun the same "
              "command to continue", file=sys.stderr)
        raise
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    return len(todo)


def _commit_all(results, consumed: int, writer: store.LmdbWriter, bar, clock: commits.Clock) -> None:
    """Commit (item, process_item result) pairs in order, COMMIT_EVERY at a time."""
    records, rejected, converted = [], [], []
    for item, (data, reason, entry) in results:
        consumed += 1
        if data is None:
            rejected.append({"name": item.name, "reason": reason, "index": consumed - 1})
        else:
            records.append((data, item.label, item.name))
            if entry:
                converted.append({**entry, "index": consumed - 1})
        if consumed - writer.consumed >= commits.COMMIT_EVERY:
            clock.commit(writer, records, consumed, rejected, converted)
            records, rejected, converted = [], [], []
        bar.update(1)
    clock.commit(writer, records, consumed, rejected, converted)

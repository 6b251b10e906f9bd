"""What the packers share: how often they commit, the clock of a split kept across runs, and the report's
entries in record order."""

from __future__ import annotations

import os
import time

from imagenet_prep import store

# images per LMDB transaction: bounds the work a kill can lose (the variable lets tests commit often)
COMMIT_EVERY = int(os.environ.get("IMGNET_COMMIT_EVERY", "256"))


class Clock:
    """Seconds spent on one split over every run that worked on it: kept in the writer's progress (each
    commit saves it), so that a resumed split's report gives the time and rate of the whole split."""

    def __init__(self, writer: store.LmdbWriter):
        self.base, self.t0 = float(writer.progress.get("seconds", 0.0)), time.perf_counter()

    def seconds(self) -> float:
        return self.base + time.perf_counter() - self.t0

    def stamp(self, writer: store.LmdbWriter) -> None:
        writer.progress["seconds"] = round(self.seconds(), 3)

    def commit(self, writer: store.LmdbWriter, *args) -> None:
        """writer.commit(*args) with the clock saved in the same transaction."""
        self.stamp(writer)
        writer.commit(*args)


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

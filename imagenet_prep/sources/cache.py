"""The listing cache: a slow listing (the train tar's 1.28M headers, a split's shards, the zip's central
directory) kept in cache_dir/.listing-<key>.npz, keyed by the absolute path, size and mtime of the files
listed, and reused while those match.

One .npz per listing (a tar, a split of shards, a part of a zip): names and skipped entries as length-prefixed
UTF-8 blobs (uint8), each entry's class as an index into `classes` (int32, -1: flat), its file as an index
into `files` (int32), offsets and sizes in bytes (int64), zip method (int16) and CRC-32 (int64; -1: not a
zip member). 1.28M entries: ~10 MB.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np

from imagenet_prep.sources.base import Entry, skip

LISTING_VERSION = 4  # of the cached listings (4: skipped files named where they are, Source.locate); a new value makes every older cache file unused

Listed = tuple[list[str] | None, list[Entry], list[dict]]  # (classes or None when flat, entries, skipped)


def listing_file(cache_dir, files: list[Path], part: str = "") -> Path | None:
    """Where the listing of `files` (as they are now) is cached; None without a cache_dir. The key holds each
    file's absolute path, size and mtime, so that a changed file is listed again."""
    if cache_dir is None:
        return None
    key = "\0".join(f"{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}" for p, st in ((p, p.stat()) for p in files))
    key += f"\0{part}\0{LISTING_VERSION}"
    return Path(cache_dir) / f".listing-{hashlib.sha256(key.encode('utf-8', 'surrogatepass')).hexdigest()}.npz"


def join_strings(strings) -> np.ndarray:
    """Strings -> one uint8 blob: each string's UTF-8 bytes (surrogateescape: a name's undecodable bytes, as
    os.fsdecode and tarfile give them) after its length as 4 little-endian bytes, so that any name (a newline
    in it too) is split back unchanged."""
    parts = []
    for s in strings:
        b = s.encode("utf-8", "surrogateescape")
        parts += [len(b).to_bytes(4, "little"), b]
    return np.frombuffer(b"".join(parts), np.uint8)


def split_strings(blob: np.ndarray, n: int) -> list[str]:
    """The `n` strings of a join_strings blob; ValueError where the blob does not hold exactly them."""
    data, strings, i = blob.tobytes(), [], 0
    for _ in range(n):
        k = int.from_bytes(data[i:i + 4], "little")
        if i + 4 + k > len(data):
            raise ValueError("the blob ends inside a string")
        strings.append(data[i + 4:i + 4 + k].decode("utf-8", "surrogateescape"))
        i += 4 + k
    if i != len(data):
        raise ValueError(f"{len(data) - i} bytes after {n} strings")
    return strings


def save_listing(file: Path | None, files: list[Path], classes: list[str] | None, entries: list[Entry],
                 skipped: list[dict]) -> None:
    """Write the listing atomically (tmp + rename); best effort: a listing that cannot be written (full disk,
    a name with a newline) is only rescanned next time."""
    if file is None:
        return
    index = {c: i for i, c in enumerate(classes or ())}
    paths = [str(p) for p in files]
    file_id = {p: i for i, p in enumerate(paths)}
    tmp = file.with_name(f"{file.name}.{os.getpid()}.tmp")
    try:
        arrays = {
            "classes": join_strings(classes or ()), "names": join_strings(e.name for e in entries),
            "files": join_strings(paths),
            "labels": np.array([-1 if e.cls is None else index[e.cls] for e in entries], np.int32),
            "file_ids": np.array([file_id[e.path] for e in entries], np.int32),
            "offsets": np.array([e.offset for e in entries], np.int64),
            "sizes": np.array([e.size for e in entries], np.int64),
            "methods": np.array([e.method for e in entries], np.int16),
            "crcs": np.array([e.crc for e in entries], np.int64),
            "skipped_names": join_strings(s["name"] for s in skipped),
            "skipped_reasons": join_strings(s["reason"] for s in skipped)}
        head = {"version": LISTING_VERSION, "files": [os.path.abspath(p) for p in paths], "flat": classes is None,
                "counts": [len(classes or ()), len(entries), len(skipped)]}
        arrays["head"] = np.frombuffer(json.dumps(head).encode("utf-8", "surrogatepass"), np.uint8)
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.replace(tmp, file)
    except (OSError, ValueError, KeyError):
        tmp.unlink(missing_ok=True)


def load_listing(file: Path | None, files: list[Path]) -> Listed | None:
    """(classes, entries, skipped) as the scan gave them, or None when `file` is absent or unreadable."""
    if file is None or not file.is_file():
        return None
    try:
        with np.load(file, allow_pickle=False) as z:
            head = json.loads(z["head"].tobytes().decode("utf-8", "surrogatepass"))
            n_classes, n, n_skipped = head["counts"]
            if head["version"] != LISTING_VERSION or head["files"] != [os.path.abspath(p) for p in files]:
                return None
            classes = split_strings(z["classes"], n_classes)
            names = split_strings(z["names"], n)
            columns = [z[k] for k in ("labels", "file_ids", "offsets", "sizes", "methods", "crcs")]
            if not _consistent(*columns, n, n_classes, len(files)):
                return None
            skipped = [skip(a, b) for a, b in zip(split_strings(z["skipped_names"], n_skipped),
                                                  split_strings(z["skipped_reasons"], n_skipped))]
    except Exception:  # noqa: BLE001 - a damaged cache (truncated, overwritten, another format) is only rescanned
        return None
    labels, ids, offsets, sizes, methods, crcs = (c.tolist() for c in columns)
    lookup, paths = [*classes, None], [str(p) for p in files]  # label -1 (flat) -> None
    entries = [Entry(name, lookup[c], paths[i], o, s, m, k)
               for name, c, i, o, s, m, k in zip(names, labels, ids, offsets, sizes, methods, crcs)]
    return (None if head["flat"] else classes), entries, skipped


def _consistent(labels, ids, offsets, sizes, methods, crcs, n: int, n_classes: int, n_files: int) -> bool:
    """The columns of a cached listing have their dtypes, `n` rows, and indices in range."""
    return (labels.dtype == ids.dtype == np.int32 and offsets.dtype == sizes.dtype == crcs.dtype == np.int64
            and len(labels) == len(ids) == len(offsets) == len(sizes) == len(methods) == len(crcs) == n
            and (n == 0 or (labels.min() >= -1 and labels.max() < n_classes and ids.min() >= 0 and ids.max() < n_files)))


def cached_parts(cache_dir, files: list[Path], parts: list[str], scan: Callable[[], dict]) -> dict[str, Listed]:
    """{part: (classes, entries, skipped)} from the cached listings of `files`, or from `scan()` (then cached)."""
    caches = {p: listing_file(cache_dir, files, p) for p in parts}
    loaded = {p: load_listing(caches[p], files) for p in parts}
    if all(v is not None for v in loaded.values()):
        return loaded
    scanned = scan()
    for p in parts:
        save_listing(caches[p], files, *scanned[p])
    return scanned

"""Sequential scan of a packed split from a cold cache: readahead on (what `imgnet verify`, `pca-stats` and the
HDF5 conversion use) against readahead off (the training reader's setting, which every scan used before).

Makes a raw LMDB split of --images photo-sized records (196,608 bytes each) in --dir, then times a full
pass in storage order with `Split.scan` plus the CRC-32 check `imgnet verify` does, each pass after evicting
the file from the page cache with posix_fadvise(DONTNEED) (no environment open, so no page stays mapped).
Also measures the checksum itself in memory: zlib.crc32 (the one the store uses) against blake2b-64.

    python bench/scan_readahead.py [--images 1500] [--repeats 2] [--dir bench/.cache/scan]

Last line: JSON with readahead_on_mb_s, readahead_off_mb_s, speedup, records, mb, crc32_mb_s, blake2b_mb_s.
On a page cache that a disk does not back (tmpfs) both modes read at memory speed and the speedup is ~1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from imagenet_prep.store import LmdbWriter, encode_image, name_bytes, open_split, record_crc  # noqa: E402


def _make(d: Path, n: int) -> None:
    if (d / "train.lmdb" / "data.mdb").exists():
        try:
            if len(open_split(d, "train")) == n:
                return
        except Exception:  # noqa: BLE001 - rebuild anything else
            pass
    d.mkdir(parents=True, exist_ok=True)
    classes = [{"index": i, "wnid": f"c{i}", "words": "", "gloss": "", "ilsvrc2012_id": None} for i in range(2)]
    (d / "labels.json").write_text(json.dumps({"order": "sorted", "classes": classes, "hierarchy": {}}))
    shutil.rmtree(d / "train.lmdb", ignore_errors=True)
    w = LmdbWriter(d / "train.lmdb", {"bench": n}, n)
    rng = np.random.default_rng(0)
    for lo in range(0, n, 100):
        batch = [(encode_image(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)), i % 2, f"x_{i}.JPEG")
                 for i in range(lo, min(n, lo + 100))]
        w.commit(batch, consumed=lo + len(batch))
    w.finish({"split": "train", "format": "lmdb", "encoding": "raw", "quality": None, "num_classes": 2,
              "label_order": "sorted", "labels_sha256": None, "layout": "bench"})
    w.close()


def _evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _scan(d: Path, readahead: bool) -> tuple[float, int]:
    _evict(d / "train.lmdb" / "data.mdb")
    t0 = time.perf_counter()
    split = open_split(d, "train", readahead=readahead)
    nbytes = 0
    for i, data, crc in split.scan():
        assert record_crc(data, int(split.labels[i]), name_bytes(split.names[i])) == crc
        nbytes += len(data)
    split.close()
    return time.perf_counter() - t0, nbytes


def _hash_rates() -> tuple[float, float]:
    data = np.random.default_rng(1).integers(0, 256, 64 << 20, dtype=np.uint8).tobytes()
    t0 = time.perf_counter()
    zlib.crc32(data)
    t1 = time.perf_counter()
    hashlib.blake2b(data, digest_size=8).digest()
    t2 = time.perf_counter()
    return len(data) / (t1 - t0) / 1e6, len(data) / (t2 - t1) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1500)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dir", default=str(Path(__file__).parent / ".cache" / "scan"))
    args = ap.parse_args()
    d = Path(args.dir)
    _make(d, args.images)
    best = {}
    for _ in range(args.repeats):
        for readahead in (False, True):
            seconds, nbytes = _scan(d, readahead)
            best[readahead] = min(best.get(readahead, float("inf")), seconds)
    mb = nbytes / 1e6
    on, off = mb / best[True], mb / best[False]
    crc, blake = _hash_rates()
    print(f"scan of {args.images} raw records ({mb:.0f} MB) from a cold cache: readahead off {off:.0f} MB/s, "
          f"on {on:.0f} MB/s; in memory: crc32 {crc:.0f} MB/s, blake2b-64 {blake:.0f} MB/s", file=sys.stderr)
    print(json.dumps({"records": args.images, "mb": round(mb, 1), "readahead_off_mb_s": round(off, 1),
                      "readahead_on_mb_s": round(on, 1), "speedup": round(on / off, 2),
                      "crc32_mb_s": round(crc), "blake2b_mb_s": round(blake)}))


if __name__ == "__main__":
    main()

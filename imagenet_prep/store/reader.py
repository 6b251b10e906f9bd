"""`open_split`, the one reader of packed splits, and the `Split` each format's reader extends: which format
holds a split is read from the format registry (store.formats), never named here."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from imagenet_prep.errors import ImgnetError
from imagenet_prep.store.formats import expected, get as get_format, registered
from imagenet_prep.store.records import check_labels, image_shape, meta_size, raw_bytes


class Record(NamedTuple):
    image: np.ndarray  # uint8 (N, N, 3) RGB, N = Split.size
    label: int
    name: str


@dataclass
class Split:
    """A packed split, read through the subclass its format's `open` returns. Opens its file lazily in each
    process (`connect`), so a Split can be pickled into worker processes (fork or spawn) and each worker reads
    with its own handle. `readahead`: True for a sequential scan (verify, pca-stats), False (the default) for
    the random access of training, where reading ahead would only fetch pages of other images.

    A format's reader implements `connect`, `read_bytes` and `load_image`; `scan` by default reads record by
    record with `crc`, and `disconnect` closes what `connect` returned."""

    path: Path
    format: str  # its name in the registry
    meta: dict
    labels: np.ndarray  # int64 (N,)
    names: list
    readahead: bool = False

    def __post_init__(self):
        self._pid = None
        self._handle = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_pid"], state["_handle"] = None, None
        return state

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def encoding(self) -> str:
        return self.meta["encoding"]

    @property
    def size(self) -> int:
        """The side N of the split's images (`imgnet prep --size`; 256 in splits packed before it existed)."""
        return meta_size(self.meta)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(N, N, 3): the shape of every image of the split."""
        return image_shape(self.size)

    @property
    def raw_bytes(self) -> int:
        """Bytes of one raw record of the split (N * N * 3)."""
        return raw_bytes(self.size)

    def _open(self):
        """This process's handle (`connect`'s), opened on first use."""
        if self._pid != os.getpid():
            self._handle = self.connect()
            self._pid = os.getpid()
        return self._handle

    def missing(self, i: int) -> ImgnetError:
        return ImgnetError(f"record {i} of {self.path} is missing; run `imgnet verify {self.path.parent}`, or "
                           "rebuild the split with `imgnet prep --force`")

    def read_image(self, i: int, out: np.ndarray | None = None) -> np.ndarray:
        """uint8 (N, N, 3) RGB of record i, decoded into `out` when given."""
        if not 0 <= i < len(self.labels):
            raise IndexError(f"record {i} out of range for a split of {len(self.labels)}")
        return self.load_image(i, out)

    def __getitem__(self, i: int) -> Record:
        i = int(i)
        if i < 0:
            i += len(self.labels)
        return Record(self.read_image(i), int(self.labels[i]), self.names[i])

    def scan(self, lo: int = 0, hi: int | None = None):
        """Yield (i, stored bytes or None when missing, crc32 or None in format version 1) for records lo..hi-1
        in storage order, for `imgnet verify`; the bytes may be a buffer valid until the next step."""
        for i in range(lo, len(self) if hi is None else hi):
            yield i, self.read_bytes(i), self.crc(i) if self.meta.get("checksum") else None

    @contextmanager
    def raw_views(self):
        """Where the format has them (raw LMDB splits): yields `view(i) -> uint8 (N, N, 3)`, a zero-copy view
        valid only inside the block. Other splits have no such view: ValueError."""
        raise ValueError(f"{self.path} is {self.format}/{self.encoding}; the {self.format} format has no raw views")
        yield  # a generator, for contextmanager

    def close(self) -> None:
        if self._handle is not None and self._pid == os.getpid():
            self.disconnect(self._handle)
        self._handle, self._pid = None, None

    # ------------------------------------------------------------------ what a format's reader implements
    def connect(self):
        """Open the split for reading in this process; the handle `_open` returns."""
        raise NotImplementedError

    def disconnect(self, handle) -> None:
        """Close what `connect` returned."""

    def read_bytes(self, i: int) -> bytes:
        """The stored (encoded) bytes of record i."""
        raise NotImplementedError

    def load_image(self, i: int, out: np.ndarray | None) -> np.ndarray:
        """uint8 (N, N, 3) RGB of record i (in range), into `out` when given."""
        raise NotImplementedError

    def crc(self, i: int) -> int:
        """The CRC-32 stored with record i (store.record_crc), in a split whose meta has a checksum."""
        raise NotImplementedError


def split_path(data_dir, split: str) -> tuple[Path, str] | None:
    """The packed file of `split` in `data_dir` and its format's name, or None. Where several formats hold
    one, a complete split wins over an unfinished (or damaged) run of another format (an interrupted --format
    lmdb run beside a finished train.h5): the first complete one in registration order, else the last one."""
    present = [(f, f.path(data_dir, split)) for f in registered()]
    present = [(f, p) for f, p in present if f.present(p)]
    if not present:
        return None
    if len(present) > 1:
        done = [(f, p) for f, p in present[:-1] if f.complete(p)]
        present = done[:1] or present[-1:]
    fmt, path = present[0]
    return path, fmt.name


def split_meta(data_dir, split: str) -> dict | None:
    """The metadata of a complete packed split (any format), without opening it for reading; else None."""
    found = split_path(data_dir, split)
    if found is None:
        return None
    path, fmt = found
    try:
        meta = get_format(fmt).read_meta(path)
    except Exception:  # noqa: BLE001 - unreadable or damaged: not a complete split
        return None
    return meta if meta.get("complete") else None


def open_split(data_dir, split: str, *, readahead: bool = False) -> Split:
    """Open the packed `split` ("train", "val" or a "v2-..." test split) that `imgnet prep` wrote to
    `data_dir`. `readahead=True` for one pass in storage order (a scan from a cold cache then reads in
    large requests)."""
    found = split_path(data_dir, split)
    if found is None:
        raise ImgnetError(f"no {split} split in {data_dir}: expected {expected(split)} "
                          f"written by `imgnet prep --out {data_dir}`")
    path, fmt = found
    opened = get_format(fmt).open(path, readahead)
    try:
        check_holds(path, fmt, opened.meta, split)
    except ImgnetError:
        opened.close()
        raise
    check_labels(Path(data_dir), path, opened.meta, opened.labels)
    return opened


def check_holds(path: Path, fmt: str, meta: dict, split: str) -> None:
    """The file found for `split` holds that split, as its metadata says (train.lmdb and val.lmdb swapped by a
    rename would train on val and test on train). Splits packed before the metadata named them pass."""
    held = meta.get("split")
    if held is not None and held != split:
        shown = get_format(fmt).shown
        raise ImgnetError(f"{path} holds the {held} split, not {split} (renamed or swapped?); expected "
                          f"{shown(split)} packed as {split}: rename the files back ({shown(held)} for {held}) "
                          "or rebuild with `imgnet prep --force`")

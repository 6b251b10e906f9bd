"""The four official CIFAR downloads (Krizhevsky 2009, cs.toronto.edu/~kriz/cifar.html), read in place.

    cifar-10-python.tar.gz    cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta, readme.html}
    cifar-100-python.tar.gz   cifar-100-python/{train, test, meta, file.txt~}
    cifar-10-binary.tar.gz    cifar-10-batches-bin/{data_batch_1..5.bin, test_batch.bin, batches.meta.txt, readme.html}
    cifar-100-binary.tar.gz   cifar-100-binary/{train.bin, test.bin, fine_label_names.txt, coarse_label_names.txt}

each as the archive or as its extracted folder. Never extracted to disk: members are read one at a time,
each no larger than the download's format allows (a damaged or hostile archive cannot make a read grow).

- python batches: pickles (read by `safe_pickle`, which refuses anything but the format's content) of a dict
  with b"data" (uint8 (n, 3072): the 1024 red values, then green, then blue, each row-major), b"labels"
  (CIFAR-10) or b"fine_labels" + b"coarse_labels" (CIFAR-100), b"filenames", b"batch_label".
- binary batches: records of 1 label byte (CIFAR-10) or a coarse then a fine label byte (CIFAR-100), then
  the 3072 pixel bytes in the same order. They carry no file names, so a record is named by its batch file
  and its index in it: `data_batch_1.bin:00042` (stable: the file and its order are the download's).

Splits: "train" (data_batch_1..5 in that order / `train`) and "test" (test_batch / `test`), the download's
held-out split (not ImageNet's val). Records come in the download's order as (name, label, image) with image
a uint8 (32, 32, 3) HWC RGB array. CIFAR-100 gives the 100 fine labels, or the 20 coarse ones on request.

    from imagenet_prep.cifar_files import find
    d = find("downloads/")                 # CifarDownload or None
    d.classes(); d.splits()                # ["airplane", ...], {"train": 50000, "test": 10000}
    for name, label, image in d.records("test"): ...

Counts are checked against what the files say (batches.meta's num_cases_per_batch, the number of labels
and names against the rows, the record size against the member size, labels in range), not required to be
the official 50,000 / 10,000: a smaller download of the same layout (as the tests build) reads the same way;
`official_counts()` says whether the counts are the published ones.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from imagenet_prep import safe_pickle
from imagenet_prep.atomic import os_reason
from imagenet_prep.errors import ImgnetError

__all__ = ["CifarDownload", "LAYOUTS", "Layout", "find", "find_all", "open_download"]

SIDE = 32
PIXELS = SIDE * SIDE * 3  # 3072 bytes per image, channel-major (R plane, G plane, B plane)
CHUNK = 1024  # records converted to HWC (and binary records read) at a time: about 3 MB
META_LIMIT = 1 << 16  # batches.meta, meta and the name lists are a few KB
PICKLE_OVERHEAD = 400  # per record beyond its pixels: label(s), a file name up to ~250 bytes, memo opcodes
MAX_MEMBERS = 64  # the archives hold 6 to 10 entries; more is not a CIFAR download


@dataclass(frozen=True)
class Layout:
    """One official download: where its files are and what they hold."""

    key: str  # "cifar-10-python", ...
    archive: str  # the download's file name
    folder: str  # the folder the archive holds (and that extracting it gives)
    format: str  # "python" | "binary"
    num_classes: int  # 10 | 100 (fine); CIFAR-100 also has 20 coarse classes
    train: tuple[str, ...]  # the train split's batch files, in order
    test: tuple[str, ...]  # the held-out split's batch file
    meta: tuple[str, ...]  # the class-name files
    max_records: dict  # the most records one batch file of each split may hold (the official counts)

    @property
    def dataset(self) -> str:
        return "cifar-10" if self.num_classes == 10 else "cifar-100"

    @property
    def record_size(self) -> int:
        """Binary: label byte(s) + pixels (3,073 for CIFAR-10, 3,074 for CIFAR-100)."""
        return (1 if self.num_classes == 10 else 2) + PIXELS

    def member_limit(self, split: str) -> int:
        n = self.max_records[split]
        if self.format == "binary":
            return n * self.record_size
        return n * (PIXELS + PICKLE_OVERHEAD) + META_LIMIT


_TRAIN10 = tuple(f"data_batch_{k}" for k in range(1, 6))
LAYOUTS = (  # detection order within a dataset: python before binary (it has file names)
    Layout("cifar-10-python", "cifar-10-python.tar.gz", "cifar-10-batches-py", "python", 10,
           _TRAIN10, ("test_batch",), ("batches.meta",), {"train": 10000, "test": 10000}),
    Layout("cifar-10-binary", "cifar-10-binary.tar.gz", "cifar-10-batches-bin", "binary", 10,
           tuple(f + ".bin" for f in _TRAIN10), ("test_batch.bin",), ("batches.meta.txt",),
           {"train": 10000, "test": 10000}),
    Layout("cifar-100-python", "cifar-100-python.tar.gz", "cifar-100-python", "python", 100,
           ("train",), ("test",), ("meta",), {"train": 50000, "test": 10000}),
    Layout("cifar-100-binary", "cifar-100-binary.tar.gz", "cifar-100-binary", "binary", 100,
           ("train.bin",), ("test.bin",), ("fine_label_names.txt", "coarse_label_names.txt"),
           {"train": 50000, "test": 10000}),
)
OFFICIAL = {10: {"train": 50000, "test": 10000}, 100: {"train": 50000, "test": 10000}}
SPLITS = ("train", "test")


# ------------------------------------------------------------------------------- member access
class _Members:
    """Read access to the download's files by name (the archive's members or the folder's files)."""

    def __init__(self, path: Path, layout: Layout):
        self.path, self.layout = path, layout

    def origin(self, name: str) -> str:
        raise NotImplementedError

    def size(self, name: str) -> int:
        raise NotImplementedError

    @contextlib.contextmanager
    def open(self, name: str, limit: int):
        """A binary file object of member `name`, refused over `limit` bytes before reading."""
        raise NotImplementedError

    def read(self, name: str, limit: int) -> bytes:
        with self.open(name, limit) as f:
            data = f.read(limit + 1)
        if len(data) != self.size(name):
            raise ImgnetError(f"{self.origin(name)} ended after {len(data):,} of its {self.size(name):,} bytes; "
                              "expected the complete file: download it again")
        return data


class _Folder(_Members):
    def close(self) -> None:
        pass

    def file(self, name: str) -> Path:
        return self.path / name

    def origin(self, name: str) -> str:
        return str(self.file(name))

    def size(self, name: str) -> int:
        try:
            st = self.file(name).stat()
            if not stat.S_ISREG(st.st_mode):
                raise ImgnetError(f"{self.file(name)} is not a regular file (a device, FIFO or folder, or a link to "
                                  f"one); expected a {self.layout.key} file")
            return st.st_size
        except FileNotFoundError:
            raise ImgnetError(f"{self.file(name)} is missing; expected the {self.layout.folder}/ folder "
                              f"complete as extracted from {self.layout.archive}") from None
        except OSError as e:
            raise ImgnetError(f"cannot read {self.file(name)} ({os_reason(e)})") from e

    @contextlib.contextmanager
    def open(self, name: str, limit: int):
        path = self.file(name)
        try:  # O_NONBLOCK: a FIFO in place of a batch must not wait for a writer
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            self.size(name)  # says which file is missing
            raise
        except OSError as e:
            raise ImgnetError(f"cannot read {path} ({os_reason(e)})") from e
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ImgnetError(f"{path} is not a regular file (a device, FIFO or folder, or a link to one); "
                                  f"expected a {self.layout.key} file")
            if st.st_size > limit:
                raise ImgnetError(f"{path} is {st.st_size:,} bytes, more than the {limit:,} a {self.layout.key} "
                                  "file can hold; expected the official file")
            yield _Bounded(f, st.st_size, path)


class _Bounded:
    """A folder file read no further than the size it had when opened (a file that grows is not read on)."""

    def __init__(self, f, size: int, path):
        self.f, self.left, self.path = f, size, path

    def read(self, n: int) -> bytes:
        try:
            data = self.f.read(max(0, min(n, self.left)))
        except OSError as e:
            raise ImgnetError(f"cannot read {self.path} ({os_reason(e)})") from e
        self.left -= len(data)
        return data


class _Archive(_Members):
    """The .tar.gz read in place: one pass lists the members; the archive stays open and reads seek to each
    member (forward in the stream costs only the bytes between; a backward seek restarts the decompression,
    so reading the batches in the download's order costs at most a few passes, no disk). Small members
    (the class names) are kept once read."""

    def __init__(self, path: Path, layout: Layout):
        super().__init__(path, layout)
        self.members, self._small = {}, {}
        self._tar = None
        try:
            with self._guard():
                self._tar = tarfile.open(self.path, "r:gz")
                for m in self._scan(self._tar):
                    name = _member_name(m.name, layout.folder)
                    if name:
                        self.members.setdefault(name, []).append(m)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None

    @contextlib.contextmanager
    def _guard(self):
        try:
            yield
        except ImgnetError:
            raise
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
            if self._tar is None:
                raise ImgnetError(f"{self.path} is damaged or not a gzip tar archive ({_reason(e)}); expected "
                                  f"the official {self.layout.archive}, complete: download it again") from None
            raise ImgnetError(f"{self.path} is damaged ({_reason(e)}); expected the official "
                              f"{self.layout.archive}, complete: download it again") from None

    def _scan(self, tar):
        for i, m in enumerate(iter(tar.next, None)):
            if i >= MAX_MEMBERS:
                raise ImgnetError(f"{self.path} has more than {MAX_MEMBERS} entries; expected the few files of "
                                  f"{self.layout.archive}")
            yield m

    def origin(self, name: str) -> str:
        return f"{self.path}:{self.layout.folder}/{name}"

    def member(self, name: str) -> tarfile.TarInfo:
        found = self.members.get(name, [])
        if len(found) != 1 or not found[0].isfile():
            what = "is missing" if not found else ("appears more than once" if len(found) > 1 else "is not a file")
            raise ImgnetError(f"{self.origin(name)} {what}; expected the official {self.layout.archive}")
        return found[0]

    def size(self, name: str) -> int:
        return self.member(name).size

    @contextlib.contextmanager
    def open(self, name: str, limit: int):
        m = self.member(name)
        if m.size > limit:
            raise ImgnetError(f"{self.origin(name)} is {m.size:,} bytes, more than the {limit:,} a "
                              f"{self.layout.key} file can hold; expected the official file")
        if self._tar is None:
            raise ImgnetError(f"{self.path} was closed; expected an open CifarDownload")
        with self._guard():
            f = self._tar.extractfile(m)
        try:
            yield _Guarded(f, self)
        finally:
            f.close()

    def read(self, name: str, limit: int) -> bytes:
        if name in self._small:
            return self._small[name]
        data = super().read(name, limit)
        if limit <= META_LIMIT:
            self._small[name] = data
        return data


class _Guarded:
    """A member's file object whose read errors (a truncated or corrupt gzip stream) are one ImgnetError."""

    def __init__(self, f, archive: _Archive):
        self.f, self.archive = f, archive

    def read(self, n: int) -> bytes:
        with self.archive._guard():
            return self.f.read(n)


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _member_name(name: str, folder: str) -> str:
    """'./cifar-10-batches-py/data_batch_1' -> 'data_batch_1'; '' for an entry outside the download's folder."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return "/".join(parts[1:]) if len(parts) > 1 and parts[0] == folder else ""


# ----------------------------------------------------------------------------------- the download
class CifarDownload:
    """One official CIFAR download, as an archive or its extracted folder (see the module docstring)."""

    def __init__(self, path, layout: Layout):
        self.path, self.layout = Path(path), layout
        self.is_archive = self.path.is_file()
        self._opened: _Members | None = None  # the archive is listed on first use, not by detection
        self._classes: dict = {}
        self._counts: dict | None = None

    def __repr__(self) -> str:
        return f"CifarDownload({str(self.path)!r}, {self.layout.key})"

    @property
    def _files(self) -> _Members:
        if self._opened is None:
            self._opened = (_Archive if self.is_archive else _Folder)(self.path, self.layout)
        return self._opened

    def close(self) -> None:
        """Close the archive (an extracted folder holds nothing open); a later read opens it again."""
        if self._opened is not None:
            self._opened.close()
            self._opened = None

    def __enter__(self) -> "CifarDownload":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def key(self) -> str:
        return self.layout.key

    # ---- class names
    def classes(self, coarse: bool = False) -> list[str]:
        """Class names in label order: 10 (CIFAR-10), 100 fine or, with coarse=True, 20 coarse (CIFAR-100)."""
        if coarse and self.layout.num_classes != 100:
            raise ImgnetError(f"{self.path} is {self.layout.dataset}, which has no coarse labels; expected a "
                              "CIFAR-100 download for coarse=True")
        if coarse not in self._classes:
            self._classes[coarse] = self._read_classes(coarse)
        return list(self._classes[coarse])

    def num_classes(self, coarse: bool = False) -> int:
        return 20 if coarse else self.layout.num_classes

    def _read_classes(self, coarse: bool) -> list[str]:
        lay, want = self.layout, self.num_classes(coarse)
        if lay.format == "binary":
            name = lay.meta[1] if coarse else lay.meta[0]
            raw = self._files.read(name, META_LIMIT)
            try:
                names = [line.strip() for line in raw.decode("ascii").splitlines() if line.strip()]
            except UnicodeDecodeError:
                raise ImgnetError(f"{self._files.origin(name)} is not ASCII text; expected one class name a "
                                  "line") from None
        else:
            name = lay.meta[0]
            meta = self._pickle(name, META_LIMIT)
            field = "label_names" if lay.num_classes == 10 else ("coarse_label_names" if coarse else "fine_label_names")
            names = self._field(meta, field, name, list)
            if not all(isinstance(v, (bytes, str)) for v in names):
                raise ImgnetError(f"{self._files.origin(name)}: {field} holds a non-string; expected class names")
            names = [v.decode("latin-1") if isinstance(v, bytes) else v for v in names]
            if lay.num_classes == 10:
                self._check_meta10(meta, name)
        if len(names) != want or len(set(names)) != want or not all(names):
            raise ImgnetError(f"{self._files.origin(name)} names {len(names)} classes ({len(set(names))} distinct); "
                              f"expected {want} distinct names")
        return names

    def _check_meta10(self, meta: dict, name: str) -> None:
        for field, ok in (("num_vis", lambda v: v == PIXELS),
                          ("num_cases_per_batch", lambda v: isinstance(v, int) and 0 < v <= 10000)):
            if field in meta and not ok(meta[field]):
                raise ImgnetError(f"{self._files.origin(name)}: {field} is {meta[field]!r}; expected "
                                  f"{PIXELS if field == 'num_vis' else 'at most 10000'}")

    # ---- counts
    def splits(self) -> dict[str, int]:
        """{"train": n, "test": n}: binary from the file sizes; CIFAR-10 python from batches.meta's
        num_cases_per_batch (what the download claims; each batch is checked against it when read);
        CIFAR-100 python from its two batches (read once, checked)."""
        if self._counts is None:
            self._counts = {s: sum(self._batch_count(s, f) for f in self._batch_files(s)) for s in SPLITS}
        return dict(self._counts)

    def official_counts(self) -> bool:
        """Whether the counts are the published 50,000 train and 10,000 test images."""
        return self.splits() == OFFICIAL[self.layout.num_classes]

    def _batch_files(self, split: str) -> tuple[str, ...]:
        if split not in SPLITS:
            raise ImgnetError(f"split {split!r} is not in a CIFAR download; expected one of {', '.join(SPLITS)} "
                              "(test is the download's held-out split)")
        return self.layout.train if split == "train" else self.layout.test

    def _batch_count(self, split: str, name: str) -> int:
        if self.layout.format == "binary":
            return self._binary_size(split, name) // self.layout.record_size
        self._files.size(name)  # it exists
        claimed = self._claimed() if self.layout.num_classes == 10 else None
        return claimed if claimed is not None else len(self._python_batch(split, name, coarse=False)[1])

    # ---- records
    def records(self, split: str, coarse: bool = False, start: int = 0) -> Iterator[tuple[str, int, np.ndarray]]:
        """(name, label, uint8 (32, 32, 3) RGB image) of `split` in the download's order, from record `start`."""
        files = self._batch_files(split)
        self.classes(coarse)  # the labels' names exist and count as they should
        for name in files:
            if self.layout.format == "binary":
                n = self._binary_size(split, name) // self.layout.record_size
                if start >= n:
                    start -= n
                    continue
                yield from self._binary_records(split, name, coarse, start)
            else:
                batch = self._python_batch(split, name, coarse)
                yield from _python_records(*batch, start)
                start = max(start - len(batch[1]), 0)

    def batch_files(self, split: str) -> tuple[str, ...]:
        """The batch files of `split` in the download's order (data_batch_1..5 / train; test_batch / test)."""
        return self._batch_files(split)

    def batch(self, split: str, file: str, coarse: bool = False,
              start: int = 0) -> Iterator[tuple[str, int, np.ndarray]]:
        """(name, label, uint8 (32, 32, 3) RGB image) of one batch file of `split` (`batch_files`) in its order,
        from its record `start`: a python batch is read whole (a pickle), a binary one from `start` on."""
        if file not in self._batch_files(split):
            raise ImgnetError(f"{file!r} is not a {split} batch of {self.layout.key}; expected one of "
                              f"{', '.join(self._batch_files(split))}")
        self.classes(coarse)  # the labels' names exist and count as they should
        if self.layout.format == "binary":
            yield from self._binary_records(split, file, coarse, start)
        else:
            yield from _python_records(*self._python_batch(split, file, coarse), start)

    # ---- python batches
    def _pickle(self, name: str, limit: int):
        return safe_pickle.loads(self._files.read(name, limit), self._files.origin(name))

    def _field(self, d, field: str, name: str, kind):
        if not isinstance(d, dict):
            raise ImgnetError(f"{self._files.origin(name)} holds a {type(d).__name__}; expected a dict")
        value = d.get(field.encode(), d.get(field))
        if not isinstance(value, kind):
            what = "has no" if value is None else f"has a {type(value).__name__} as"
            raise ImgnetError(f"{self._files.origin(name)} {what} {field!r}; expected "
                              f"{'a ' + kind.__name__ if isinstance(kind, type) else 'a numpy array'}")
        return value

    def _python_batch(self, split: str, name: str, coarse: bool):
        """(names, labels, data (n, 3072) uint8) of one python batch, checked."""
        lay, origin = self.layout, self._files.origin(name)
        d = self._pickle(name, lay.member_limit(split))
        data = self._field(d, "data", name, np.ndarray)
        field = "labels" if lay.num_classes == 10 else ("coarse_labels" if coarse else "fine_labels")
        labels = self._field(d, field, name, list)
        names = self._field(d, "filenames", name, list)
        n = len(labels)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
            raise ImgnetError(f"{origin}: data is {data.dtype} {data.shape}; expected uint8 (n, {PIXELS})")
        if not (data.shape[0] == n == len(names) and 0 < n <= lay.max_records[split]):
            raise ImgnetError(f"{origin} has {data.shape[0]} images, {n} labels and {len(names)} file names; expected "
                              f"the same number, at most {lay.max_records[split]:,}")
        if lay.num_classes == 10:
            self._check_claimed(n, origin)
        top = self.num_classes(coarse)
        if not all(type(v) is int and 0 <= v < top for v in labels):
            bad = next(v for v in labels if not (type(v) is int and 0 <= v < top))
            raise ImgnetError(f"{origin}: {field} holds {bad!r}; expected integers 0..{top - 1}")
        if not all(isinstance(v, (bytes, str)) for v in names):
            raise ImgnetError(f"{origin}: filenames holds a non-string; expected file names")
        names = [v.decode("latin-1") if isinstance(v, bytes) else v for v in names]
        return names, labels, data

    def _claimed(self) -> int | None:
        """CIFAR-10 python: batches.meta's num_cases_per_batch (10,000 in the download), checked; or None."""
        self.classes()  # reads and checks batches.meta
        meta = self._pickle(self.layout.meta[0], META_LIMIT)
        return meta.get(b"num_cases_per_batch", meta.get("num_cases_per_batch"))

    def _check_claimed(self, n: int, origin: str) -> None:
        """CIFAR-10: every batch holds batches.meta's num_cases_per_batch images."""
        claimed = self._claimed()
        if claimed is not None and claimed != n:
            raise ImgnetError(f"{origin} has {n:,} images; expected the {claimed:,} that batches.meta's "
                              "num_cases_per_batch says")

    # ---- binary batches
    def _binary_size(self, split: str, name: str) -> int:
        size, rec, limit = self._files.size(name), self.layout.record_size, self.layout.member_limit(split)
        if size == 0 or size % rec or size > limit:
            raise ImgnetError(f"{self._files.origin(name)} is {size:,} bytes; expected a multiple of the {rec:,}-byte "
                              f"record ({rec - PIXELS} label byte{'s' * (rec - PIXELS > 1)} + {PIXELS:,} pixel bytes), "
                              f"at most {limit:,}: a truncated or damaged file")
        return size

    def _binary_records(self, split: str, name: str, coarse: bool, start: int):
        rec, top = self.layout.record_size, self.num_classes(coarse)
        size = self._binary_size(split, name)
        label_byte = 0 if (self.layout.num_classes == 10 or coarse) else 1  # CIFAR-100: coarse, then fine
        origin = self._files.origin(name)
        with self._files.open(name, size) as f:
            skip = start * rec
            while skip:  # forward reads only: the archive stream cannot seek cheaply
                got = len(f.read(min(skip, CHUNK * rec)))
                if not got:
                    break  # the next read reports the short file
                skip -= got
            for i in range(start, size // rec, CHUNK):
                want = min(CHUNK, size // rec - i) * rec
                raw = f.read(want)
                if len(raw) != want:
                    raise ImgnetError(f"{origin} ended after {i * rec + len(raw):,} of its {size:,} bytes; expected "
                                      "the complete file: download it again")
                recs = np.frombuffer(raw, np.uint8).reshape(-1, rec)
                labels = recs[:, label_byte]
                if labels.max() >= top:
                    j = int(np.argmax(labels >= top))
                    raise ImgnetError(f"{origin}: record {i + j} has label {labels[j]}; expected 0..{top - 1} "
                                      f"({'coarse' if coarse else 'class'} labels of {self.layout.dataset})")
                images = _hwc(recs[:, rec - PIXELS:])
                base = Path(name).name
                for j in range(len(recs)):
                    yield f"{base}:{i + j:05d}", int(labels[j]), images[j]


def _python_records(names: list, labels: list, data: np.ndarray, start: int):
    """(name, label, HWC image) of a python batch's parts from record `start`, converted CHUNK at a time."""
    for i in range(start - start % CHUNK, len(labels), CHUNK):
        images = _hwc(data[i:i + CHUNK])
        for j in range(max(start - i, 0), len(images)):
            yield names[i + j], labels[i + j], images[j]


def _hwc(rows: np.ndarray) -> np.ndarray:
    """(n, 3072) channel-major rows -> (n, 32, 32, 3) HWC RGB, contiguous."""
    return np.ascontiguousarray(rows.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1))


# ------------------------------------------------------------------------------------ detection
def _layout_of_archive(path: Path) -> Layout | None:
    """An archive by its official name, else (a renamed .tar.gz / .tgz) by the folder its first entry is in."""
    for lay in LAYOUTS:
        if path.name == lay.archive:
            return lay
    if not path.name.endswith((".tar.gz", ".tgz")):
        return None
    try:
        with tarfile.open(path, "r:gz") as tar:
            first = tar.next()
    except (tarfile.TarError, EOFError, zlib.error, OSError):
        return None  # not ours to judge: another layout's archive, or damaged
    top = [p for p in (first.name if first else "").split("/") if p not in ("", ".")][:1]
    return next((lay for lay in LAYOUTS if top == [lay.folder]), None)


def _layout_of_folder(path: Path) -> Layout | None:
    """An extracted folder: by its official name, else by the files it holds (class names, batches)."""
    for lay in LAYOUTS:  # by name when it holds any of the layout's files (not a folder of that name holding archives)
        if path.name == lay.folder and any((path / f).exists() for f in lay.meta + lay.train + lay.test):
            return lay
    for lay in LAYOUTS:
        if all((path / f).is_file() for f in lay.meta + lay.train + lay.test):
            return lay
    return None


def find_all(src) -> list[CifarDownload]:
    """Every download in `src` (a download's archive or folder itself, or a folder holding them), in
    LAYOUTS order, extracted folders before archives of the same layout."""
    src = Path(src)
    if src.is_file():
        lay = _layout_of_archive(src)
        return [CifarDownload(src, lay)] if lay else []
    if not src.is_dir():
        return []
    lay = _layout_of_folder(src)
    if lay:
        return [CifarDownload(src, lay)]
    found = []
    for lay in LAYOUTS:
        folder, archive = src / lay.folder, src / lay.archive
        if folder.is_dir() and _layout_of_folder(folder) is lay:
            found.append(CifarDownload(folder, lay))
        elif archive.is_file():
            found.append(CifarDownload(archive, lay))
    return found


def find(src) -> CifarDownload | None:
    """The download in `src`, or None. CIFAR-10 in both formats (as make_official.py writes it) gives the
    python one (it has file names); CIFAR-10 and CIFAR-100 together are ambiguous: an ImgnetError."""
    found = find_all(src)
    datasets = {d.layout.dataset for d in found}
    if len(datasets) > 1:
        raise ImgnetError(f"{src} holds both CIFAR-10 and CIFAR-100 ({', '.join(str(d.path) for d in found)}); "
                          "expected one: pass the archive or folder itself")
    return found[0] if found else None


def open_download(src) -> CifarDownload:
    """find(src), or an ImgnetError listing what a CIFAR download looks like."""
    d = find(src)
    if d is None:
        raise ImgnetError(f"no CIFAR download found in {src}; expected one of "
                          f"{', '.join(lay.archive for lay in LAYOUTS)} or its extracted folder "
                          f"({', '.join(lay.folder + '/' for lay in LAYOUTS)})")
    return d


"""The packed-split format: LMDB (default) or HDF5 writer, and `open_split`, the one reader.

LMDB environment `DATA/<split>.lmdb`, keys:
    img/%09d     encoded image (raw: 196,608 bytes of (256, 256, 3) uint8 RGB; jpeg: a JPEG file)
    rec/%09d     int32 label (little endian) + utf-8 source file name
    __progress__ JSON: how far a run got (source items consumed, records written, report lists; for
                 sources read shard by shard, `units`: which shards or row groups are done), committed
                 in the same transaction as the records, so a kill at any moment loses nothing
    __labels__   int32 array of all labels, __names__: newline-joined names (written when complete)
    __meta__     JSON metadata (see `Split.meta`); `complete: true` marks a finished split

HDF5 file `DATA/<split>.h5` (HDF5 has no crash consistency of its own, so a split is first staged in a
crash-safe LMDB `DATA/.<split>.h5.staging.lmdb`, then converted in one pass to `<split>.h5.tmp`
and renamed into place; a kill during conversion just redoes the conversion):
    images  (N, 256, 256, 3) uint8, chunked one image per chunk (raw), or vlen uint8 JPEG bytes (jpeg)
    labels  (N,) int64; names (N,) utf-8 strings; attribute `meta`: the JSON metadata
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NamedTuple

import numpy as np

from imagenet_prep.errors import ImgnetError

FORMAT_VERSION = 1
SIZE = 256
IMAGE_SHAPE = (SIZE, SIZE, 3)
RAW_BYTES = SIZE * SIZE * 3  # 196,608
_PROGRESS, _META, _LABELS, _NAMES = b"__progress__", b"__meta__", b"__labels__", b"__names__"


def _img_key(i: int) -> bytes:
    return b"img/%09d" % i


def _rec_key(i: int) -> bytes:
    return b"rec/%09d" % i


# ------------------------------------------------------------------------------------ encoding
def encode_image(img: np.ndarray, encoding: str = "raw", quality: int = 90) -> bytes:
    """(256, 256, 3) uint8 RGB -> stored bytes."""
    assert img.shape == IMAGE_SHAPE and img.dtype == np.uint8, (img.shape, img.dtype)
    if encoding == "raw":
        return np.ascontiguousarray(img).tobytes()
    if encoding == "jpeg":
        from PIL import Image

        buf = io.BytesIO()
        # 4:4:4 chroma keeps colour edges; at 256x256 the size cost is small
        Image.fromarray(img, "RGB").save(buf, format="JPEG", quality=quality, subsampling=0)
        return buf.getvalue()
    raise ImgnetError(f"unknown encoding {encoding!r}; expected 'raw' or 'jpeg'")


def decode_image(buf, encoding: str, out: np.ndarray | None = None) -> np.ndarray:
    """Stored bytes -> (256, 256, 3) uint8 RGB, written into `out` when given."""
    if encoding == "raw":
        arr = np.frombuffer(buf, dtype=np.uint8).reshape(IMAGE_SHAPE)
    else:
        from PIL import Image

        with Image.open(io.BytesIO(buf)) as im:
            arr = np.array(im.convert("RGB") if im.mode != "RGB" else im)  # writable, like a raw record
    if out is None:
        return arr.copy() if encoding == "raw" else arr
    np.copyto(out, arr)
    return out


def estimate_bytes_per_image(encoding: str, quality: int = 90) -> int:
    """Upper-end estimate of one stored record, for the free-disk check before a run."""
    if encoding == "raw":
        return -(-(RAW_BYTES + 16) // 4096) * 4096 + 256  # LMDB stores it in 49 whole 4 KB overflow pages
    # measured on ImageNet-like photos at 256x256, 4:4:4: about 25 KB at quality 90; keep a margin
    return int(8_000 + 40_000 * (quality / 100) ** 3) + 256


# -------------------------------------------------------------------------------------- writer
def _is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno == errno.ENOSPC or "No space left" in str(e)


class LmdbWriter:
    """Append-only, crash-safe writer of one split. Each `commit` is one LMDB transaction that holds
    the records and the progress that produced them, so a rerun resumes exactly where a kill stopped."""

    def __init__(self, path: Path, fingerprint: dict, expected_images: int = 1024,
                 bytes_per_image: int = RAW_BYTES):
        import lmdb

        self.path = Path(path)
        self.fingerprint = fingerprint
        _close_env(self.path)
        map_size = max(64 << 20, int(expected_images * bytes_per_image * 1.15) + (64 << 20))
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            # no writemap: a full disk is then a write error, not a SIGBUS; sync on commit for power loss
            self.env = lmdb.open(str(self.path), map_size=map_size, subdir=True, writemap=False,
                                 sync=True, metasync=True, readahead=False, meminit=False, max_dbs=0)
        except lmdb.Error as e:
            raise ImgnetError(f"cannot open {self.path} for writing: {e}") from e
        with self.env.begin() as txn:
            raw = txn.get(_PROGRESS)
            meta = txn.get(_META)
        self.complete = bool(meta and json.loads(meta).get("complete"))
        if raw is None:
            self.progress = {"fingerprint": fingerprint, "consumed": 0, "written": 0,
                             "rejected": [], "converted": []}
        else:
            self.progress = json.loads(raw)
            if self.progress.get("fingerprint") != fingerprint:
                old = self.progress.get("fingerprint", {})
                diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
                raise ImgnetError(
                    f"{self.path} holds an unfinished run with different settings ({', '.join(diff)}); "
                    "rerun with the same arguments to finish it, or pass --force to start over")

    @property
    def meta(self) -> dict:
        """The metadata `finish` wrote ({} before)."""
        with self.env.begin() as txn:
            raw = txn.get(_META)
        return json.loads(raw) if raw else {}

    @property
    def consumed(self) -> int:
        return self.progress["consumed"]

    @property
    def written(self) -> int:
        return self.progress["written"]

    def _write_txn(self, fill, nbytes: int = 0) -> None:
        """Run `fill(txn)` in one write transaction of about `nbytes`, growing the map when it is full."""
        import lmdb

        while True:
            try:
                with self.env.begin(write=True) as txn:
                    fill(txn)
                return
            except lmdb.MapFullError:
                self.env.set_mapsize(self.env.info()["map_size"] * 2)
            except (lmdb.Error, OSError) as e:
                # LMDB reports a failed write as EIO at commit: a near-full disk is the usual cause
                free = shutil.disk_usage(self.path).free
                if _is_disk_full(e) or isinstance(e, lmdb.DiskError) or free < 2 * nbytes + (1 << 20):
                    raise ImgnetError(
                        f"disk full while writing {self.path} ({free / 1e6:.1f} MB free); the records "
                        "committed so far are kept: free some space and rerun the same command") from e
                raise ImgnetError(f"cannot write {self.path}: {e}") from e

    def commit(self, records: Iterable[tuple[bytes, int, str]], consumed: int,
               rejected: Iterable[dict] = (), converted: Iterable[dict] = ()) -> None:
        """Append records (encoded image, label, name) produced from source items up to `consumed`."""
        records = list(records)
        progress = dict(self.progress)
        progress["rejected"] = self.progress["rejected"] + list(rejected)
        progress["converted"] = self.progress["converted"] + list(converted)
        progress["consumed"] = consumed
        progress["written"] = self.written + len(records)
        start = self.written

        def fill(txn):
            for j, (data, label, name) in enumerate(records):
                txn.put(_img_key(start + j), data)
                txn.put(_rec_key(start + j), int(label).to_bytes(4, "little", signed=True) + name.encode())
            txn.put(_PROGRESS, json.dumps(progress).encode())

        self._write_txn(fill, sum(len(r[0]) for r in records))
        self.progress = progress

    def commit_at(self, records: Iterable[tuple[int, bytes, int, str]], consumed: int, units: dict,
                  rejected: Iterable[dict] = (), converted: Iterable[dict] = ()) -> None:
        """Out-of-order commit: records (final index, encoded image, label, name) from `consumed` more source
        items, with `units` ({shard or row group: how far it is done}) merged into the progress in the same
        transaction. Indices left free by rejected items are closed up by `finish`."""
        records = list(records)
        progress = dict(self.progress)
        progress["rejected"] = self.progress["rejected"] + list(rejected)
        progress["converted"] = self.progress["converted"] + list(converted)
        progress["consumed"] = self.consumed + consumed
        progress["written"] = self.written + len(records)
        progress["units"] = {**self.progress.get("units", {}), **units}

        def fill(txn):
            for i, data, label, name in records:
                txn.put(_img_key(i), data)
                txn.put(_rec_key(i), int(label).to_bytes(4, "little", signed=True) + name.encode())
            txn.put(_PROGRESS, json.dumps(progress).encode())

        self._write_txn(fill, sum(len(r[1]) for r in records))
        self.progress = progress

    def _compact(self, batch: int = 256) -> None:
        """Renumber the records of an out-of-order run to 0..written-1, keeping their order. Each batch is one
        transaction that moves records down into free indices and deletes their old keys, so the records
        below the first free index are always final: a kill here is completed by the next call. Only the
        records after the first rejected one move (none when every image decodes, as in ILSVRC2012)."""
        n, k = self.written, 0
        with self.env.begin() as txn:
            cur = txn.cursor()
            found = cur.prev() if cur.set_range(b"rec0") else cur.last()  # the last rec/ key
            if n == 0 or (found and cur.key() == _rec_key(n - 1)):
                return  # n records, the last at n - 1: already 0..n-1
        while True:
            moves = []
            with self.env.begin() as txn:
                cur = txn.cursor()
                if cur.set_range(_rec_key(k)):
                    for key, rec in cur:
                        if not key.startswith(b"rec/") or len(moves) == batch:
                            break
                        if not moves and int(key[4:]) == k:
                            k += 1  # in place, before the first free index
                        else:
                            moves.append((int(key[4:]), rec))
            if not moves:
                return

            def fill(txn, k=k, moves=moves):
                for dest, (p, rec) in enumerate(moves, start=k):  # p > dest: a record only moves down
                    txn.put(_img_key(dest), txn.get(_img_key(p)))
                    txn.put(_rec_key(dest), rec)
                    txn.delete(_img_key(p))
                    txn.delete(_rec_key(p))

            self._write_txn(fill)
            k += len(moves)

    def finish(self, meta: dict) -> dict:
        """Write the label/name indexes and the metadata that marks the split complete."""
        if "units" in self.progress:
            self._compact()
        n = self.written
        labels = np.empty(n, dtype="<i4")
        names = []
        with self.env.begin(buffers=True) as txn:
            for i in range(n):
                rec = bytes(txn.get(_rec_key(i)))
                labels[i] = int.from_bytes(rec[:4], "little", signed=True)
                names.append(rec[4:].decode())
        meta = dict(meta, format_version=FORMAT_VERSION, count=n, image_shape=list(IMAGE_SHAPE), complete=True)

        def fill(txn):
            txn.put(_LABELS, labels.tobytes())
            txn.put(_NAMES, "\n".join(names).encode())
            txn.put(_META, json.dumps(meta).encode())

        self._write_txn(fill)
        self.env.sync(True)
        return meta

    def read_all(self):
        """Yield (encoded image, label, name) in order (used to convert a staged split to HDF5)."""
        with self.env.begin(buffers=True) as txn:
            for i in range(self.written):
                rec = bytes(txn.get(_rec_key(i)))
                yield bytes(txn.get(_img_key(i))), int.from_bytes(rec[:4], "little", signed=True), rec[4:].decode()

    def close(self) -> None:
        self.env.close()


def lmdb_to_hdf5(staging: LmdbWriter, dest: Path, meta: dict, progress=None) -> None:
    """Convert a complete staged split to `dest` atomically (via dest.tmp)."""
    import h5py

    n = staging.written
    tmp = dest.with_name(dest.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        if meta["encoding"] == "raw":
            images = f.create_dataset("images", shape=(n, *IMAGE_SHAPE), dtype=np.uint8,
                                      chunks=(1, *IMAGE_SHAPE))
        else:
            images = f.create_dataset("images", shape=(n,), dtype=h5py.vlen_dtype(np.uint8))
        labels = np.empty(n, dtype=np.int64)
        names = []
        for i, (data, label, name) in enumerate(staging.read_all()):
            if meta["encoding"] == "raw":
                images.id.write_direct_chunk((i, 0, 0, 0), data)
            else:
                images[i] = np.frombuffer(data, dtype=np.uint8)
            labels[i] = label
            names.append(name)
            if progress is not None:
                progress.update(1)
        f.create_dataset("labels", data=labels)
        f.create_dataset("names", data=np.array(names, dtype=object), dtype=h5py.string_dtype())
        f.attrs["meta"] = json.dumps(meta)
        f.flush()
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, dest)


# -------------------------------------------------------------------------------------- reader
class Record(NamedTuple):
    image: np.ndarray  # uint8 (256, 256, 3) RGB
    label: int
    name: str


def _lmdb_meta(path: Path) -> dict:
    """The __meta__ record of an LMDB split ({} while it is being written)."""
    env = _read_env(path)
    with env.begin() as txn:
        raw = txn.get(_META)
    return json.loads(raw) if raw else {}


def split_path(data_dir, split: str) -> tuple[Path, str] | None:
    """The packed file of `split` in `data_dir` and its format, or None. A complete split wins over an
    unfinished run of the other format (an interrupted --format lmdb run beside a finished train.h5)."""
    d = Path(data_dir)
    lmdb_path, h5_path = d / f"{split}.lmdb", d / f"{split}.h5"
    if (lmdb_path / "data.mdb").is_file():
        if h5_path.is_file() and not _lmdb_meta(lmdb_path).get("complete"):
            _close_env(lmdb_path)
            return h5_path, "hdf5"
        return lmdb_path, "lmdb"
    if h5_path.is_file():
        return h5_path, "hdf5"
    return None


def split_meta(data_dir, split: str) -> dict | None:
    """The metadata of a complete packed split (either format), without opening it for reading; else None."""
    found = split_path(data_dir, split)
    if found is None:
        return None
    path, fmt = found
    try:
        if fmt == "lmdb":
            meta = _lmdb_meta(path)
            if not meta.get("complete"):
                _close_env(path)  # a writer will open it next
        else:
            import h5py

            with h5py.File(path, "r") as f:
                meta = json.loads(f.attrs["meta"])
    except Exception:  # noqa: BLE001 - unreadable: not a complete split
        return None
    return meta if meta.get("complete") else None


def progress_of(path: Path) -> int:
    """Source items an unfinished LMDB run at `path` has consumed (0 when there is none)."""
    if not (Path(path) / "data.mdb").is_file():
        return 0
    env = _read_env(path)
    try:
        with env.begin() as txn:
            raw = txn.get(_PROGRESS)
    finally:
        _close_env(path)  # a writer opens it next
    return json.loads(raw)["consumed"] if raw else 0


@dataclass
class Split:
    """A packed split. Opens its LMDB environment or HDF5 file lazily in each process, so a Split can be
    pickled into worker processes (fork or spawn) and each worker reads with its own handle."""

    path: Path
    format: str
    meta: dict
    labels: np.ndarray  # int64 (N,)
    names: list

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

    def _open(self):
        if self._pid != os.getpid():
            if self.format == "lmdb":
                self._handle = _read_env(self.path)
            else:
                import h5py

                f = h5py.File(self.path, "r")
                self._handle = (f, f["images"])
            self._pid = os.getpid()
        return self._handle

    def read_bytes(self, i: int) -> bytes:
        """The stored (encoded) bytes of record i."""
        h = self._open()
        if self.format == "lmdb":
            with h.begin() as txn:
                return txn.get(_img_key(i))
        data = h[1][i]
        return data.tobytes()

    @contextmanager
    def raw_views(self):
        """For raw LMDB splits: yields `view(i) -> uint8 (256, 256, 3)`, a zero-copy view of the memory map
        valid only inside the block (one read transaction). Other splits have no such view: ValueError."""
        if not (self.format == "lmdb" and self.encoding == "raw"):
            raise ValueError(f"{self.path} is {self.format}/{self.encoding}; raw views need lmdb/raw")
        n = len(self.labels)
        with self._open().begin(buffers=True) as txn:
            def view(i: int) -> np.ndarray:
                buf = txn.get(_img_key(i)) if 0 <= i < n else None
                if buf is None or len(buf) != RAW_BYTES:
                    raise ImgnetError(f"record {i} of {self.path} is missing or not a raw 256x256x3 image")
                return np.frombuffer(buf, np.uint8).reshape(IMAGE_SHAPE)

            yield view

    def read_image(self, i: int, out: np.ndarray | None = None) -> np.ndarray:
        """uint8 (256, 256, 3) RGB of record i, decoded into `out` when given."""
        if not 0 <= i < len(self.labels):
            raise IndexError(f"record {i} out of range for a split of {len(self.labels)}")
        h = self._open()
        if self.format == "lmdb":
            with h.begin(buffers=True) as txn:
                return decode_image(txn.get(_img_key(i)), self.encoding, out)
        if self.encoding == "raw":
            if out is None:
                return h[1][i]
            h[1].read_direct(out, np.s_[i], np.s_[...])
            return out
        return decode_image(h[1][i].tobytes(), "jpeg", out)

    def __getitem__(self, i: int) -> Record:
        i = int(i)
        if i < 0:
            i += len(self.labels)
        return Record(self.read_image(i), int(self.labels[i]), self.names[i])

    def close(self) -> None:
        if self.format == "lmdb":
            _close_env(self.path)  # the environment this process shares for the path (open_split opened it)
        elif self._handle is not None and self._pid == os.getpid():
            self._handle[0].close()
        self._handle, self._pid = None, None


# LMDB allows one environment per path and process: readers share it, a writer first closes it.
_ENVS: dict[tuple[int, str], object] = {}


def _read_env(path: Path):
    import lmdb

    pid, real = os.getpid(), os.path.realpath(path)
    key = (pid, real)
    if key not in _ENVS:
        # a forked child inherits its parent's environment: close that copy (never use it) and open its own
        for inherited in [k for k in _ENVS if k[1] == real and k[0] != pid]:
            try:
                _ENVS.pop(inherited).close()
            except Exception:  # noqa: BLE001 - best effort on a handle this process never used
                pass
        _ENVS[key] = lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False,
                               max_readers=2048)
    return _ENVS[key]


def _close_env(path: Path) -> None:
    env = _ENVS.pop((os.getpid(), os.path.realpath(path)), None)
    if env is not None:
        env.close()


def open_split(data_dir, split: str) -> Split:
    """Open the packed `split` ("train" or "val") that `imgnet prep` wrote to `data_dir`."""
    found = split_path(data_dir, split)
    if found is None:
        raise ImgnetError(f"no {split} split in {data_dir}: expected {split}.lmdb/ or {split}.h5 "
                          f"written by `imgnet prep --out {data_dir}`")
    path, fmt = found
    if fmt == "lmdb":
        import lmdb

        try:
            env = _read_env(path)
        except lmdb.Error as e:
            raise ImgnetError(f"cannot read {path}: {e}") from e
        with env.begin() as txn:
            raw = txn.get(_META)
            meta = json.loads(raw) if raw else {}
            if meta.get("complete"):
                labels = np.frombuffer(txn.get(_LABELS), dtype="<i4").astype(np.int64)
                names = txn.get(_NAMES).decode().split("\n") if len(labels) else []
        if not meta.get("complete"):
            _close_env(path)  # a writer will open it next
    else:
        import h5py

        try:
            with h5py.File(path, "r") as f:
                meta = json.loads(f.attrs["meta"])
                labels = f["labels"][:].astype(np.int64)
                names = [s.decode() if isinstance(s, bytes) else s for s in f["names"][:]]
        except (OSError, KeyError) as e:
            raise ImgnetError(f"cannot read {path}: {e}; rerun `imgnet prep --force` to rebuild it") from e
    if not meta.get("complete"):
        raise ImgnetError(f"{path} is incomplete (an interrupted prep): rerun the same `imgnet prep` command to finish it")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ImgnetError(f"{path} has format version {meta.get('format_version')}; expected {FORMAT_VERSION}: "
                          "rerun `imgnet prep --force`")
    if tuple(meta.get("image_shape", ())) != IMAGE_SHAPE:
        raise ImgnetError(f"{path} holds images of shape {meta.get('image_shape')}; expected {list(IMAGE_SHAPE)}")
    _check_labels(Path(data_dir), path, meta, labels)
    return Split(path, fmt, meta, labels, names)


def _check_labels(data_dir: Path, path: Path, meta: dict, labels: np.ndarray) -> None:
    from imagenet_prep.labels import labels_sha256, read_labels_json

    lj = read_labels_json(data_dir)
    n = len(lj["classes"])
    if meta.get("num_classes") != n:
        raise ImgnetError(f"{path} was packed with {meta.get('num_classes')} classes but "
                          f"{data_dir / 'labels.json'} lists {n}; rerun `imgnet prep --force`")
    if meta.get("labels_sha256") and meta["labels_sha256"] != labels_sha256(lj):
        raise ImgnetError(f"{path} was packed with another label map than {data_dir / 'labels.json'}; "
                          "rerun `imgnet prep --force`")
    bad = labels[(labels < 0) | (labels >= n)]
    if len(bad):
        raise ImgnetError(f"{path} holds label {int(bad[0])} outside 0..{n - 1} of labels.json")


# ------------------------------------------------------------------------- small-data writer
def write_split(data_dir, split: str, records: Iterable[tuple[np.ndarray, int, str]], *,
                format: str = "lmdb", encoding: str = "raw", quality: int = 90,
                labels_json: dict | None = None, num_classes: int | None = None) -> Split:
    """Pack in-memory (image, label, name) records; for tests and generated data. Writes a generic
    labels.json (classes c0, c1, ...) when the folder has none and `labels_json` is not given."""
    from imagenet_prep.labels import labels_sha256

    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    records = list(records)
    lj_path = data_dir / "labels.json"
    if labels_json is None and lj_path.is_file():
        labels_json = json.loads(lj_path.read_text())
    if labels_json is None:
        n = num_classes or (max(r[1] for r in records) + 1 if records else 1)
        labels_json = {"order": "sorted", "classes": [
            {"index": i, "wnid": f"c{i}", "words": f"class {i}", "gloss": "", "ilsvrc2012_id": None}
            for i in range(n)], "hierarchy": {}}
    lj_path.write_text(json.dumps(labels_json, indent=1))
    meta = {"split": split, "format": format, "encoding": encoding, "quality": quality,
            "num_classes": len(labels_json["classes"]), "label_order": labels_json.get("order", "sorted"),
            "labels_sha256": labels_sha256(labels_json), "layout": "in-memory"}
    lmdb_path = data_dir / (f"{split}.lmdb" if format == "lmdb" else f".{split}.h5.staging.lmdb")
    if lmdb_path.exists():
        shutil.rmtree(lmdb_path)
    w = LmdbWriter(lmdb_path, {"records": len(records)}, len(records), estimate_bytes_per_image(encoding, quality))
    w.commit([(encode_image(img, encoding, quality), int(lbl), name) for img, lbl, name in records], len(records))
    meta = w.finish(meta)
    if format == "hdf5":
        lmdb_to_hdf5(w, data_dir / f"{split}.h5", meta)
        w.close()
        shutil.rmtree(lmdb_path)
    else:
        w.close()
    return open_split(data_dir, split)

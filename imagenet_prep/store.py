"""The packed-split format: LMDB (default) or HDF5 writer, and `open_split`, the one reader.

LMDB environment `DATA/<split>.lmdb`, keys:
    img/%09d     encoded image (raw: 196,608 bytes of (256, 256, 3) uint8 RGB; jpeg: a JPEG file)
    rec/%09d     int32 label + uint32 crc32 (both little endian) + the source file name's bytes
    __progress__ JSON: how far a run got (source items consumed, records written, report lists; for
                 sources read shard by shard, `units`: which shards or row groups are done), committed
                 in the same transaction as the records, so a kill at any moment loses nothing
    __labels__   int32 array of all labels, __names__: the names' bytes joined by NUL (written when complete)
    __meta__     JSON metadata (see `Split.meta`); `complete: true` marks a finished split

Names are stored as the bytes they have on the file system (UTF-8; the bytes that are not UTF-8, which
os.listdir and tarfile carry as surrogate escapes, go back to themselves), so any name a file system allows
reads back unchanged, newlines included; a name that cannot (a NUL, a lone surrogate) is rejected by name.

Checksums (format version 2): each record carries the zlib.crc32 of its stored image bytes, its int32 label
and its name bytes, computed as the record is committed; `index_crc32` in the metadata covers __labels__ and
__names__. CRC-32 rather than a cryptographic hash: the threat is bit rot and short copies, not an attacker;
it detects every single-bit error and every burst of up to 32 bits, misses other damage with odds of 2^-32
per record, and runs at about 2.7 GB/s (blake2b-64: about 1 GB/s), so `imgnet verify` reads at disk speed.
Version 1 (no checksums, newline-joined UTF-8 names) is still read.

HDF5 file `DATA/<split>.h5` (HDF5 has no crash consistency of its own, so a split is first staged in a
crash-safe LMDB `DATA/.<split>.h5.staging.lmdb`, then converted in one pass to `<split>.h5.tmp`
and renamed into place; a kill during conversion just redoes the conversion):
    images  (N, 256, 256, 3) uint8, chunked one image per chunk (raw), or vlen uint8 JPEG bytes (jpeg)
    labels  (N,) int64; name_bytes: uint8, the names joined by NUL as in LMDB; crc32 (N,) uint32;
    attribute `meta`: the JSON metadata (version 1: `names` (N,) utf-8 strings, no crc32)
The conversion and the checks made before an HDF5 file is read live in store_hdf5.py.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import stat
import struct
import sys
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NamedTuple

import numpy as np

from imagenet_prep.atomic import os_reason, parse_json
from imagenet_prep.errors import ImgnetError

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: no checksums, names newline-joined UTF-8
CHECKSUM = "crc32"
MAX_NAME_BYTES = 4096  # PATH_MAX: no file system path is longer
MAX_META_BYTES = 256 << 20  # the metadata holds the prep report (a name and reason per rejected image)
SIZE = 256
IMAGE_SHAPE = (SIZE, SIZE, 3)
RAW_BYTES = SIZE * SIZE * 3  # 196,608
_PROGRESS, _META, _LABELS, _NAMES = b"__progress__", b"__meta__", b"__labels__", b"__names__"


def _img_key(i: int) -> bytes:
    return b"img/%09d" % i


def _rec_key(i: int) -> bytes:
    return b"rec/%09d" % i


# ------------------------------------------------------------------------- names and checksums
def name_bytes(name: str) -> bytes:
    """The stored form of a source file name: its bytes on the file system. ValueError with the reason when
    the name cannot be stored and read back unchanged."""
    if not isinstance(name, str):
        raise ValueError(f"the name is a {type(name).__name__}, expected a str")
    if "\0" in name:
        raise ValueError("it contains a NUL character, which no file system allows in a name")
    try:
        data = name.encode("utf-8", "surrogateescape")  # U+DC80..U+DCFF: a byte that was not UTF-8
    except UnicodeEncodeError as e:
        raise ValueError(f"it contains the lone surrogate U+{ord(name[e.start]):04X}, which stands for no "
                         "byte of a file name") from None
    if data.decode("utf-8", "surrogateescape") != name:
        raise ValueError("its escaped bytes form UTF-8 text, so it would read back as another name")
    if len(data) > MAX_NAME_BYTES:
        raise ValueError(f"it is {len(data):,} bytes long; expected at most {MAX_NAME_BYTES} (PATH_MAX)")
    return data


def _join_names(names: list[bytes]) -> bytes:
    return b"\0".join(names)


def _split_names(blob: bytes, n: int) -> list[str]:
    # NUL never occurs inside a UTF-8 sequence, so decoding the whole blob splits exactly at the names
    return blob.decode("utf-8", "surrogateescape").split("\0") if n else []


def record_crc(data, label: int, name: bytes) -> int:
    """CRC-32 of one record: its stored image bytes, its label as int32 little endian, its name bytes."""
    return zlib.crc32(name, zlib.crc32(int(label).to_bytes(4, "little", signed=True), zlib.crc32(data)))


def _index_crc(labels: np.ndarray, names_blob: bytes) -> int:
    return zlib.crc32(names_blob, zlib.crc32(np.ascontiguousarray(labels, dtype="<i4").tobytes()))


def _pack_rec(data, label: int, name: bytes) -> bytes:
    lab = int(label).to_bytes(4, "little", signed=True)
    return lab + record_crc(data, label, name).to_bytes(4, "little") + name


def _unpack_rec(rec) -> tuple[int, bytes, int]:
    """rec/ value -> (label, name bytes, crc32)."""
    rec = bytes(rec)
    return int.from_bytes(rec[:4], "little", signed=True), rec[8:], int.from_bytes(rec[4:8], "little")


def _storable(records, name_at: int, index_at: int | None = None) -> tuple[list, list[dict]]:
    """Split records into those whose name (field `name_at`) can be stored, with the name as bytes, and
    rejected entries {"name", "reason"[, "index": field `index_at`]} for the others."""
    kept, rejected = [], []
    for r in records:
        try:
            nb = name_bytes(r[name_at])
        except ValueError as e:
            rejected.append({"name": r[name_at] if isinstance(r[name_at], str) else repr(r[name_at]),
                             "reason": f"file name cannot be stored unchanged: {e}",
                             **({"index": r[index_at]} if index_at is not None else {})})
            continue
        kept.append((*r[:name_at], nb, *r[name_at + 1:]))
    return kept, rejected


# ------------------------------------------------------------------------------ LMDB file check
_LMDB_MAGIC = 0xBEEFC0DE
_META_OFFSET = 16  # the page header before the meta of pages 0 and 1 (64-bit build of LMDB)


def _lmdb_metas(head: bytes, size: int, file) -> list[tuple[int, int, int]]:
    """(txnid, last page, page size) of the two meta pages of data.mdb, read with plain reads: never mapped."""
    metas = []
    psize = struct.unpack_from("<I", head, _META_OFFSET + 24)[0] if len(head) >= _META_OFFSET + 28 else 0
    for page in (0, 1):
        off = page * psize + _META_OFFSET
        if psize < 512 or psize > 65536 or psize & (psize - 1) or len(head) < off + 136:
            raise ImgnetError(f"{file} is truncated or not an LMDB file: {size:,} bytes hold no complete header "
                              "(an interrupted copy?); copy it again, or rerun `imgnet prep --force` to rebuild it")
        magic = struct.unpack_from("<I", head, off)[0]
        if magic != _LMDB_MAGIC:
            raise ImgnetError(f"{file} is not an LMDB data file (meta page {page} has magic {magic:#x}); copy "
                              "it again, or rerun `imgnet prep --force` to rebuild it")
        last_pg, txnid = struct.unpack_from("<QQ", head, off + 120)
        metas.append((txnid, last_pg, psize))
    return metas


def check_env(path, new_ok: bool = False) -> None:
    """ImgnetError naming what is wrong unless `path/data.mdb` is a whole LMDB file: a regular file at least
    as long as its newest meta page says (last page + 1 pages). Mapping a truncated file (an interrupted copy
    of DATA) would end the process with SIGBUS at the first read past its end, so every open checks first.
    `new_ok` (a writer): no file, or an empty one that LMDB had just created, is fine: LMDB writes the header."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise ImgnetError(f"{path} is not a folder; expected the LMDB folder `imgnet prep` writes: remove it, or "
                          "rerun `imgnet prep --force`")
    file = Path(path) / "data.mdb"
    if new_ok and not os.path.lexists(file):
        return
    try:
        st = os.stat(file)
        if not stat.S_ISREG(st.st_mode):
            raise ImgnetError(f"{file} is not a regular file (a device, FIFO or folder, or a link to one); "
                              "expected the LMDB data file `imgnet prep` writes")
        if new_ok and st.st_size == 0:
            return
        with open(file, "rb") as f:
            head = f.read(2 * 65536)
    except OSError as e:
        raise ImgnetError(f"cannot read {file} ({os_reason(e)})") from e
    txnid, last_pg, psize = max(_lmdb_metas(head, st.st_size, file))  # LMDB reads the newest meta
    need = (last_pg + 1) * psize
    if st.st_size < need:
        raise ImgnetError(f"{file} is truncated: {st.st_size:,} bytes of the {need:,} its header requires (an "
                          "interrupted copy, or a full disk?); copy it again, or rerun `imgnet prep --force` "
                          "to rebuild it")


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

        with Image.open(io.BytesIO(buf), formats=["JPEG"]) as im:  # what encode_image writes, and nothing else
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
        check_env(self.path, new_ok=True)
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
        self.complete = bool(meta and _parse_meta(meta, self.path).get("complete"))
        if raw is None:
            self.progress = {"fingerprint": fingerprint, "consumed": 0, "written": 0,
                             "rejected": [], "converted": [], "format_version": FORMAT_VERSION}
        else:
            self.progress = _parse_progress(raw, self.path, expected_images)
            if self.progress.get("format_version") != FORMAT_VERSION:  # version 1 records carry no checksum
                raise ImgnetError(
                    f"{self.path} holds an unfinished run written in store format version "
                    f"{self.progress.get('format_version', 1)}; this version writes {FORMAT_VERSION}: pass "
                    "--force to start it over")
            if self.progress.get("fingerprint") != fingerprint:
                old = self.progress.get("fingerprint", {})
                diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
                raise ImgnetError(
                    f"{self.path} holds an unfinished run with different settings ({', '.join(diff)}); "
                    "rerun with the same arguments to finish it, or pass --force to start over")
            self._check_count(meta)

    def _check_count(self, meta) -> None:
        """The records on disk must be the `written` of the progress record (an edited or mixed-up record
        would resume at the wrong image or leave holes in the split)."""
        keys = {_PROGRESS} | ({_META, _LABELS, _NAMES} if meta else set())
        with self.env.begin() as txn:
            special = sum(txn.get(k) is not None for k in keys)
        held = (self.env.stat()["entries"] - special) / 2  # two keys per record: img/ and rec/
        if held != self.progress["written"]:
            raise ImgnetError(f"{self.path}: the progress record says {self.progress['written']} images written but "
                              f"the split holds {held:g}; pass --force to start it over")

    @property
    def meta(self) -> dict:
        """The metadata `finish` wrote ({} before)."""
        with self.env.begin() as txn:
            raw = txn.get(_META)
        return parse_json(raw, f"the metadata of {self.path}", MAX_META_BYTES) if raw else {}

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
        """Append records (encoded image, label, name) produced from source items up to `consumed`. A record
        whose name cannot be stored unchanged (see `name_bytes`) is rejected instead, with the reason."""
        records, unnamed = _storable(records, 2)
        progress = dict(self.progress)
        progress["rejected"] = self.progress["rejected"] + list(rejected) + unnamed
        progress["converted"] = self.progress["converted"] + list(converted)
        progress["consumed"] = consumed
        progress["written"] = self.written + len(records)
        start = self.written

        def fill(txn):
            for j, (data, label, name) in enumerate(records):
                txn.put(_img_key(start + j), data)
                txn.put(_rec_key(start + j), _pack_rec(data, label, name))
            txn.put(_PROGRESS, json.dumps(progress).encode())

        self._write_txn(fill, sum(len(r[0]) for r in records))
        self.progress = progress

    def commit_at(self, records: Iterable[tuple[int, bytes, int, str]], consumed: int, units: dict,
                  rejected: Iterable[dict] = (), converted: Iterable[dict] = ()) -> None:
        """Out-of-order commit: records (final index, encoded image, label, name) from `consumed` more source
        items, with `units` ({shard or row group: how far it is done}) merged into the progress in the same
        transaction. Indices left free by rejected items (and unstorable names) are closed up by `finish`."""
        records, unnamed = _storable(records, 3, index_at=0)
        progress = dict(self.progress)
        progress["rejected"] = self.progress["rejected"] + list(rejected) + unnamed
        progress["converted"] = self.progress["converted"] + list(converted)
        progress["consumed"] = self.consumed + consumed
        progress["written"] = self.written + len(records)
        progress["units"] = {**self.progress.get("units", {}), **units}

        def fill(txn):
            for i, data, label, name in records:
                txn.put(_img_key(i), data)
                txn.put(_rec_key(i), _pack_rec(data, label, name))
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
                labels[i], name, _ = _unpack_rec(txn.get(_rec_key(i)))
                names.append(name)
        blob = _join_names(names)
        meta = dict(meta, format_version=FORMAT_VERSION, count=n, image_shape=list(IMAGE_SHAPE), checksum=CHECKSUM,
                    index_crc32=_index_crc(labels, blob), complete=True)

        def fill(txn):
            txn.put(_LABELS, labels.tobytes())
            txn.put(_NAMES, blob)
            txn.put(_META, json.dumps(meta).encode())

        self._write_txn(fill)
        self.env.sync(True)
        if n == 0 and not meta.get("report"):  # prep warns itself, with its counts
            print(f"warning: {meta.get('split', self.path.name)} ends with 0 images", file=sys.stderr)
        return meta

    def read_all(self):
        """Yield (encoded image, label, name) in order (used to convert a staged split to HDF5)."""
        for data, label, name, _ in self._scan():
            yield data, label, name.decode("utf-8", "surrogateescape")

    def _scan(self):
        """Yield (encoded image, label, name bytes, crc32) of a complete split in order. The environment is
        reopened read-only with readahead (LMDB allows one per path and process), so that a sequential scan
        from a cold cache reads in large requests: the writer only reads and closes after this."""
        import lmdb

        self.env.close()
        self.env = lmdb.open(str(self.path), readonly=True, lock=False, readahead=True, meminit=False)
        with self.env.begin(buffers=True) as txn:
            for i in range(self.written):
                label, name, crc = _unpack_rec(txn.get(_rec_key(i)))
                yield bytes(txn.get(_img_key(i))), label, name, crc

    def close(self) -> None:
        self.env.close()


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
    return _parse_meta(raw, path) if raw else {}


def _parse_meta(raw, path) -> dict:
    if not isinstance(raw, (str, bytes)):
        raise ImgnetError(f"the metadata of {path} is a {type(raw).__name__}; expected JSON text")
    meta = parse_json(raw, f"the metadata of {path}", MAX_META_BYTES)
    if not isinstance(meta, dict):
        raise ImgnetError(f"the metadata of {path} is a JSON {type(meta).__name__}; expected an object")
    return meta


def split_path(data_dir, split: str) -> tuple[Path, str] | None:
    """The packed file of `split` in `data_dir` and its format, or None. A complete split wins over an
    unfinished (or damaged) run of the other format (an interrupted --format lmdb run beside a finished train.h5)."""
    d = Path(data_dir)
    lmdb_path, h5_path = d / f"{split}.lmdb", d / f"{split}.h5"
    if os.path.lexists(lmdb_path) and not lmdb_path.is_dir() and not h5_path.exists():
        return lmdb_path, "lmdb"  # not a folder: refused by name when opened, never taken for "no split"
    if (lmdb_path / "data.mdb").exists():  # exists, not is_file: a link to a device is refused by name later
        if h5_path.exists():
            try:
                complete = _lmdb_meta(lmdb_path).get("complete")
            except ImgnetError:
                complete = False
            if not complete:
                _close_env(lmdb_path)
                return h5_path, "hdf5"
        return lmdb_path, "lmdb"
    if h5_path.exists():
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

            from imagenet_prep.store_hdf5 import check_regular

            check_regular(path)
            with h5py.File(path, "r") as f:
                meta = _parse_meta(f.attrs["meta"], path)
    except Exception:  # noqa: BLE001 - unreadable or damaged: not a complete split
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
    return _parse_progress(raw, path)["consumed"] if raw else 0


def _parse_progress(raw, path, expected: int | None = None) -> dict:
    """The __progress__ record, checked: counts that are not counts, or more than the `expected` items of the
    split, are a one-line error (an edited record), never a traceback or a resume at the wrong image."""
    progress = parse_json(bytes(raw), f"the progress record of {path}", MAX_META_BYTES)
    ok = isinstance(progress, dict)
    consumed, written = (progress.get("consumed"), progress.get("written")) if ok else (None, None)
    ok = ok and type(consumed) is int and type(written) is int and 0 <= written <= consumed
    ok = ok and (expected is None or consumed <= expected)
    ok = ok and isinstance(progress.get("rejected"), list) and isinstance(progress.get("converted"), list)
    ok = ok and isinstance(progress.get("units", {}), dict) and isinstance(progress.get("fingerprint", {}), dict)
    if not ok:
        raise ImgnetError(f"the progress record of {path} is damaged or edited (consumed {consumed!r}, written "
                          f"{written!r}{f', of {expected} images' if expected is not None else ''}); pass --force "
                          "to start the split over")
    return progress


@dataclass
class Split:
    """A packed split. Opens its LMDB environment or HDF5 file lazily in each process, so a Split can be
    pickled into worker processes (fork or spawn) and each worker reads with its own handle. `readahead`:
    True for a sequential scan (verify, pca-stats), False (the default) for the random access of training,
    where reading ahead would only fetch pages of other images."""

    path: Path
    format: str
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

    def _open(self):
        if self._pid != os.getpid():
            if self.format == "lmdb":
                self._handle = _read_env(self.path, self.readahead)
            else:
                import h5py

                f = h5py.File(self.path, "r")
                _advise(f, self.readahead)
                self._handle = (f, f["images"])
            self._pid = os.getpid()
        return self._handle

    def _missing(self, i: int):
        return ImgnetError(f"record {i} of {self.path} is missing; run `imgnet verify {self.path.parent}`, or "
                           "rebuild the split with `imgnet prep --force`")

    def read_bytes(self, i: int) -> bytes:
        """The stored (encoded) bytes of record i."""
        h = self._open()
        if self.format == "lmdb":
            with h.begin() as txn:
                data = txn.get(_img_key(i))
            if data is None:
                raise self._missing(i)
            return data
        return h[1][i].tobytes()

    def scan(self, lo: int = 0, hi: int | None = None):
        """Yield (i, stored bytes or None when missing, crc32 or None in format version 1) for records lo..hi-1
        in storage order, for `imgnet verify`; the bytes may be a buffer valid until the next step."""
        hi = len(self) if hi is None else hi
        h = self._open()
        if self.format == "lmdb":
            with h.begin(buffers=True) as txn:
                for i in range(lo, hi):
                    rec = txn.get(_rec_key(i))
                    crc = _unpack_rec(rec)[2] if rec is not None and self.meta.get("checksum") else None
                    yield i, txn.get(_img_key(i)), crc
            return
        crcs = h[0]["crc32"] if self.meta.get("checksum") else None
        for start in range(lo, hi, 4096):
            block = crcs[start:min(hi, start + 4096)] if crcs is not None else None
            for i in range(start, min(hi, start + 4096)):
                yield i, self.read_bytes(i), (int(block[i - start]) if block is not None else None)

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
                buf = txn.get(_img_key(i))
                if buf is None or (self.encoding == "raw" and len(buf) != RAW_BYTES):
                    raise self._missing(i) if buf is None else ImgnetError(
                        f"record {i} of {self.path} is {len(buf):,} bytes; expected a raw image of {RAW_BYTES:,}")
                return decode_image(buf, self.encoding, out)
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


def _advise(f, sequential: bool) -> None:
    """Tell the kernel how an HDF5 file will be read: read ahead for a scan, not for random access."""
    try:
        os.posix_fadvise(f.id.get_vfd_handle(), 0, 0,
                         os.POSIX_FADV_SEQUENTIAL if sequential else os.POSIX_FADV_RANDOM)
    except (AttributeError, OSError, ValueError):  # another HDF5 driver, or a platform without fadvise
        pass


# LMDB allows one environment per path and process: readers share it (opened without locks), a writer first
# closes it. `readahead` applies when it is opened; a reader asking for the other setting shares it as it is
# (readahead is a hint to the kernel, not part of what is read).
_ENVS: dict[tuple[int, str], object] = {}


def _read_env(path: Path, readahead: bool = False):
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
        check_env(path)  # before mapping: a truncated file would be SIGBUS at the first read past its end
        try:
            _ENVS[key] = lmdb.open(str(path), readonly=True, lock=False, readahead=bool(readahead), meminit=False,
                                   max_readers=2048)
        except lmdb.Error as e:
            raise ImgnetError(f"cannot read {path}: {e}") from e
    return _ENVS[key]


def _close_env(path: Path) -> None:
    env = _ENVS.pop((os.getpid(), os.path.realpath(path)), None)
    if env is not None:
        env.close()


def open_split(data_dir, split: str, *, readahead: bool = False) -> Split:
    """Open the packed `split` ("train", "val" or a "v2-..." test split) that `imgnet prep` wrote to
    `data_dir`. `readahead=True` for one pass in storage order (a scan from a cold cache then reads in
    large requests)."""
    found = split_path(data_dir, split)
    if found is None:
        raise ImgnetError(f"no {split} split in {data_dir}: expected {split}.lmdb/ or {split}.h5 "
                          f"written by `imgnet prep --out {data_dir}`")
    path, fmt = found
    if fmt == "lmdb":
        meta, labels, names = _open_lmdb(path, readahead)
    else:
        from imagenet_prep.store_hdf5 import open_hdf5

        meta, labels, names = open_hdf5(path)
    _check_labels(Path(data_dir), path, meta, labels)
    return Split(path, fmt, meta, labels, names, readahead)


def _check_meta(path: Path, meta: dict) -> int:
    """The record count of a complete split's metadata, once its fields are the ones this reader knows."""
    if not meta.get("complete"):
        raise ImgnetError(f"{path} is incomplete (an interrupted prep): rerun the same `imgnet prep` command to finish it")
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise ImgnetError(f"{path} has format version {meta.get('format_version')}; expected one of "
                          f"{', '.join(map(str, READABLE_VERSIONS))}: rerun `imgnet prep --force`")
    if meta.get("image_shape") != list(IMAGE_SHAPE):
        raise ImgnetError(f"{path} holds images of shape {meta.get('image_shape')}; expected {list(IMAGE_SHAPE)}")
    count = meta.get("count")
    if type(count) is not int or count < 0 or meta.get("encoding") not in ("raw", "jpeg"):
        raise ImgnetError(f"the metadata of {path} has count {count!r} and encoding {meta.get('encoding')!r}; "
                          "expected a record count and raw or jpeg")
    return count


def _check_index(path: Path, meta: dict, count: int, labels: np.ndarray, blob: bytes, n_names: int) -> None:
    if len(labels) != count or n_names != count:
        raise ImgnetError(f"{path} lists {len(labels)} labels and {n_names} names but its metadata says {count} "
                          "records; rebuild it with `imgnet prep --force`")
    if meta["format_version"] >= 2 and _index_crc(labels, blob) != meta.get("index_crc32"):
        raise ImgnetError(f"the label and name index of {path} fails its checksum (damaged on disk or in a copy); "
                          "copy it again, or rebuild it with `imgnet prep --force`")


def _open_lmdb(path: Path, readahead: bool) -> tuple[dict, np.ndarray, list]:
    import lmdb

    env = _read_env(path, readahead)
    try:
        with env.begin() as txn:
            raw, labels_raw, blob = txn.get(_META), txn.get(_LABELS), txn.get(_NAMES)
        entries = env.stat()["entries"]
    except lmdb.Error as e:
        raise ImgnetError(f"cannot read {path}: {e}") from e
    meta = _parse_meta(raw, path) if raw else {}
    if not meta.get("complete"):
        _close_env(path)  # a writer will open it next
    count = _check_meta(path, meta)
    if labels_raw is None or blob is None or len(labels_raw) != 4 * count:
        raise ImgnetError(f"{path} has no label and name index for the {count} records its metadata lists; "
                          "rebuild it with `imgnet prep --force`")
    if entries - 2 * count not in (3, 4):  # img/ + rec/ per record, then 3 or 4 of the __keys__
        raise ImgnetError(f"{path} holds {entries} entries, not the 2 x {count} records + 3 or 4 its metadata "
                          "implies; rebuild it with `imgnet prep --force`")
    labels = np.frombuffer(labels_raw, dtype="<i4").astype(np.int64)
    if meta["format_version"] >= 2:
        names = _split_names(blob, count)
    else:
        names = blob.decode("utf-8", "surrogateescape").split("\n") if count else []
    _check_index(path, meta, count, labels, blob, len(names))
    return meta, labels, names


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
        from imagenet_prep.labels import read_labels_json

        labels_json = read_labels_json(data_dir)
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
    if w.progress["rejected"]:
        w.close()
        bad = w.progress["rejected"][0]
        raise ImgnetError(f"record {bad['name']!r}: {bad['reason']}")
    meta = w.finish(meta)
    if format == "hdf5":
        from imagenet_prep.store_hdf5 import lmdb_to_hdf5

        lmdb_to_hdf5(w, data_dir / f"{split}.h5", meta)
        w.close()
        shutil.rmtree(lmdb_path)
    else:
        w.close()
    return open_split(data_dir, split)


# the HDF5 half lives in store_hdf5.py; its names stay importable from here (imported on first use, since
# store_hdf5 itself imports this module)
_HDF5_NAMES = {"lmdb_to_hdf5": "lmdb_to_hdf5", "_write_hdf5": "_write_hdf5", "_check_regular": "check_regular",
               "_dataset": "dataset", "_open_hdf5": "open_hdf5", "_contiguous": "contiguous",
               "_dtype_name": "dtype_name"}


def __getattr__(name: str):
    if name in _HDF5_NAMES:
        from imagenet_prep import store_hdf5

        return getattr(store_hdf5, _HDF5_NAMES[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

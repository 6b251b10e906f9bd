"""The LMDB store format (the default, `--format lmdb`): the staging LMDB a run writes is the split itself.

LMDB environment `DATA/<split>.lmdb`, keys:
    img/%09d     encoded image (store.records: raw 196,608 bytes, or a JPEG file)
    rec/%09d     int32 label + uint32 crc32 (both little endian) + the source file name's bytes
    __progress__ JSON: how far a run got (source items consumed, records written, report lists; for
                 sources read shard by shard, `units`: which shards or row groups are done), committed
                 in the same transaction as the records, so a kill at any moment loses nothing
    __labels__   int32 array of all labels, __names__: the names' bytes joined by NUL (written when complete)
    __meta__     JSON metadata (see `Split.meta`); `complete: true` marks a finished split

Every open of an LMDB file (reader or writer) checks first that data.mdb is whole (`check_env`): mapping a
truncated file would end the process with SIGBUS at the first read past its end.
"""

from __future__ import annotations

import os
import stat
import struct
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from imagenet_prep.atomic import os_reason
from imagenet_prep.errors import ImgnetError
from imagenet_prep.store.formats import StoreFormat, register
from imagenet_prep.store.reader import Split
from imagenet_prep.store.records import (check_index, check_meta, decode_image, parse_meta,
                                         split_names, split_names_v1, unpack_rec)

PROGRESS, META, LABELS, NAMES = b"__progress__", b"__meta__", b"__labels__", b"__names__"


def img_key(i: int) -> bytes:
    return b"img/%09d" % i


def rec_key(i: int) -> bytes:
    return b"rec/%09d" % i


# ------------------------------------------------------------------------------ LMDB file check
_LMDB_MAGIC = 0xBEEFC0DE
_META_OFFSET = 16  # the page header before the meta of pages 0 and 1 (64-bit build of LMDB)


def lmdb_metas(head: bytes, size: int, file) -> list[tuple[int, int, int]]:
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
    txnid, last_pg, psize = max(lmdb_metas(head, st.st_size, file))  # LMDB reads the newest meta
    need = (last_pg + 1) * psize
    if st.st_size < need:
        raise ImgnetError(f"{file} is truncated: {st.st_size:,} bytes of the {need:,} its header requires (an "
                          "interrupted copy, or a full disk?); copy it again, or rerun `imgnet prep --force` "
                          "to rebuild it")


# ------------------------------------------------------------------------- shared environments
# LMDB allows one environment per path and process: readers share it (opened without locks), a writer first
# closes it. `readahead` applies when it is opened; a reader asking for the other setting shares it as it is
# (readahead is a hint to the kernel, not part of what is read).
_ENVS: dict[tuple[int, str], object] = {}


def read_env(path: Path, readahead: bool = False):
    """This process's read-only environment of the LMDB at `path`, opened on first use."""
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


def close_env(path: Path) -> None:
    """Close this process's shared environment of `path`, if open (a writer opens it next)."""
    env = _ENVS.pop((os.getpid(), os.path.realpath(path)), None)
    if env is not None:
        env.close()


def lmdb_meta(path: Path) -> dict:
    """The __meta__ record of an LMDB split ({} while it is being written)."""
    env = read_env(path)
    with env.begin() as txn:
        raw = txn.get(META)
    return parse_meta(raw, path) if raw else {}


# -------------------------------------------------------------------------------------- reader
class LmdbSplit(Split):
    """A packed LMDB split: each process reads through its shared environment (`read_env`)."""

    def connect(self):
        return read_env(self.path, self.readahead)

    def read_bytes(self, i: int) -> bytes:
        with self._open().begin() as txn:
            data = txn.get(img_key(i))
        if data is None:
            raise self.missing(i)
        return data

    def scan(self, lo: int = 0, hi: int | None = None):
        hi = len(self) if hi is None else hi
        with self._open().begin(buffers=True) as txn:
            for i in range(lo, hi):
                rec = txn.get(rec_key(i))
                crc = unpack_rec(rec)[2] if rec is not None and self.meta.get("checksum") else None
                yield i, txn.get(img_key(i)), crc

    @contextmanager
    def raw_views(self):
        """For raw splits: yields `view(i) -> uint8 (N, N, 3)`, a zero-copy view of the memory map valid only
        inside the block (one read transaction)."""
        if self.encoding != "raw":
            raise ValueError(f"{self.path} is {self.format}/{self.encoding}; raw views need lmdb/raw")
        n = len(self.labels)
        with self._open().begin(buffers=True) as txn:
            def view(i: int) -> np.ndarray:
                buf = txn.get(img_key(i)) if 0 <= i < n else None
                if buf is None or len(buf) != self.raw_bytes:
                    raise ImgnetError(f"record {i} of {self.path} is missing or not a raw {self.size}x{self.size}x3 "
                                      "image")
                return np.frombuffer(buf, np.uint8).reshape(self.image_shape)

            yield view

    def load_image(self, i: int, out: np.ndarray | None) -> np.ndarray:
        with self._open().begin(buffers=True) as txn:
            buf = txn.get(img_key(i))
            if buf is None or (self.encoding == "raw" and len(buf) != self.raw_bytes):
                raise self.missing(i) if buf is None else ImgnetError(
                    f"record {i} of {self.path} is {len(buf):,} bytes; expected a raw image of {self.raw_bytes:,}")
            return decode_image(buf, self.encoding, out, self.size)

    def close(self) -> None:
        close_env(self.path)  # the environment this process shares for the path (open_split opened it)
        self._handle, self._pid = None, None


# -------------------------------------------------------------------------------------- format
class LmdbFormat(StoreFormat):
    name, title, suffix, folder, staged = "lmdb", "LMDB", ".lmdb", True, False

    def present(self, path: Path) -> bool:
        # not a folder: refused by name when opened, never taken for "no split"; data.mdb: exists, not is_file,
        # so that a link to a device is refused by name later
        return os.path.lexists(path) and (not path.is_dir() or (path / "data.mdb").exists())

    def complete(self, path: Path) -> bool:
        try:
            done = bool(lmdb_meta(path).get("complete"))
        except ImgnetError:
            done = False
        if not done:
            close_env(path)
        return done

    def read_meta(self, path: Path) -> dict:
        meta = lmdb_meta(path)
        if not meta.get("complete"):
            close_env(path)  # a writer will open it next
        return meta

    def open(self, path: Path, readahead: bool = False) -> LmdbSplit:
        import lmdb

        env = read_env(path, readahead)
        try:
            with env.begin() as txn:
                raw, labels_raw, blob = txn.get(META), txn.get(LABELS), txn.get(NAMES)
            entries = env.stat()["entries"]
        except lmdb.Error as e:
            raise ImgnetError(f"cannot read {path}: {e}") from e
        meta = parse_meta(raw, path) if raw else {}
        if not meta.get("complete"):
            close_env(path)  # a writer will open it next
        count = check_meta(path, meta)
        if labels_raw is None or blob is None or len(labels_raw) != 4 * count:
            raise ImgnetError(f"{path} has no label and name index for the {count} records its metadata lists; "
                              "rebuild it with `imgnet prep --force`")
        if entries - 2 * count not in (3, 4):  # img/ + rec/ per record, then 3 or 4 of the __keys__
            raise ImgnetError(f"{path} holds {entries} entries, not the 2 x {count} records + 3 or 4 its metadata "
                              "implies; rebuild it with `imgnet prep --force`")
        labels = np.frombuffer(labels_raw, dtype="<i4").astype(np.int64)
        names = (split_names if meta["format_version"] >= 2 else split_names_v1)(blob, count)
        check_index(path, meta, count, labels, blob, len(names))
        return LmdbSplit(path, self.name, meta, labels, names, readahead)


FORMAT = register(LmdbFormat())

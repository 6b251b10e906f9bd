"""The HDF5 store format (`--format hdf5`), and the checks made before any HDF5 file is read (by open_split,
and by stats.py for stats.h5).

HDF5 file `DATA/<split>.h5` (HDF5 has no crash consistency of its own, so a split is first staged in a
crash-safe LMDB `DATA/.<split>.h5.staging.lmdb`, then converted in one pass to `<split>.h5.tmp` and renamed
into place once synced: store.formats.StoreFormat.finalize; a kill during conversion just redoes it):
    images  (N, S, S, 3) uint8 (S: meta["size"], 256 by default), chunked one image per chunk (raw), or vlen
            uint8 JPEG bytes (jpeg)
    labels  (N,) int64; name_bytes: uint8, the names joined by NUL as in LMDB; crc32 (N,) uint32;
    attribute `meta`: the JSON metadata (version 1: `names` (N,) utf-8 strings, no crc32)

Reading refuses what h5py would otherwise follow or read without end: a FIFO or a link to a device, external
links, external raw storage, virtual datasets, another dtype or shape, and a contiguous dataset whose stored
size does not match its shape.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np

from imagenet_prep.atomic import os_reason
from imagenet_prep.errors import ImgnetError
from imagenet_prep.store.formats import StoreFormat, register
from imagenet_prep.store.reader import Split
from imagenet_prep.store.records import (check_index, check_meta, decode_image, image_shape, join_names,
                                         meta_size, parse_meta, raw_bytes, split_names)


# ------------------------------------------------------------------------------- file checks
def check_regular(path: Path, what: str = "the HDF5 file `imgnet prep` writes") -> None:
    """Before h5py opens `path`: a FIFO would block the open, a link to a device would be read as a file."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise ImgnetError(f"{path} is not a regular file (a device, FIFO or folder, or a link to one); expected "
                          f"{what}")


def dtype_name(ds) -> str:
    import h5py

    vlen = h5py.check_vlen_dtype(ds.dtype)
    if vlen is not None:
        return "vlen uint8" if vlen == np.uint8 else "string" if vlen in (str, bytes) else f"vlen {vlen}"
    return "string" if ds.dtype.kind == "S" else str(ds.dtype)


def dataset(f, name: str, path: Path, dtype: str, shape: tuple | None):
    """f[name], refused unless it is a dataset stored in this file (no external link, external raw storage or
    virtual mapping: each of those reads other files) of dtype `dtype` ("integer": any int) and `shape`
    (None: any 1-D)."""
    import h5py

    link = f.get(name, getlink=True)
    if not isinstance(link, h5py.HardLink) or not isinstance(f.get(name), h5py.Dataset):
        raise ImgnetError(f"{path}: {name!r} is {'missing' if link is None else 'a link or a group'}; expected a "
                          "dataset stored in the file; rebuild it with `imgnet prep --force`")
    ds = f[name]
    if ds.external or ds.is_virtual:
        raise ImgnetError(f"{path}: dataset {name!r} has its data in other files (external storage or a virtual "
                          "dataset); expected it stored in the file itself")
    got = dtype_name(ds)
    dtype_ok = got == dtype or (dtype == "integer" and ds.dtype.kind in "iu")
    if not dtype_ok or (ds.shape != shape if shape is not None else len(ds.shape) != 1):
        raise ImgnetError(f"{path}: dataset {name!r} is {got} {ds.shape}; expected {dtype} "
                          f"{shape if shape is not None else '(any length,)'}")
    return ds


def contiguous(ds, path: Path, itemsize: int):
    """Read a contiguous dataset whole, once its stored size matches its shape (an edited shape would
    otherwise read a huge array of fill values)."""
    if ds.id.get_storage_size() != ds.size * itemsize:
        raise ImgnetError(f"{path}: dataset {ds.name!r} stores {ds.id.get_storage_size():,} bytes for {ds.size:,} "
                          "elements; rebuild it with `imgnet prep --force`")
    return ds[()]


def open_hdf5(path: Path) -> tuple[dict, np.ndarray, list]:
    """(meta, labels, names) of the HDF5 split at `path`, every dataset checked before it is read."""
    import h5py

    try:
        check_regular(path)
        with h5py.File(path, "r") as f:
            meta = parse_meta(f.attrs["meta"], path)
            n = check_meta(path, meta)
            raw = meta["encoding"] == "raw"
            shape, nbytes = image_shape(meta_size(meta)), raw_bytes(meta_size(meta))
            images = dataset(f, "images", path, "uint8" if raw else "vlen uint8", (n, *shape) if raw else (n,))
            if raw and images.id.get_storage_size() != n * nbytes:
                raise ImgnetError(f"{path}: the images dataset stores {images.id.get_storage_size():,} bytes, not "
                                  f"{n} x {nbytes:,}; rebuild it with `imgnet prep --force`")
            labels_ds = dataset(f, "labels", path, "integer", (n,))
            labels = contiguous(labels_ds, path, labels_ds.dtype.itemsize).astype(np.int64)
            if meta["format_version"] >= 2:
                dataset(f, "crc32", path, "uint32", (n,))
                blob = contiguous(dataset(f, "name_bytes", path, "uint8", None), path, 1).tobytes()
                names = split_names(blob, n)
            else:
                blob = b""
                names = [s.decode("utf-8", "surrogateescape") if isinstance(s, bytes) else s
                         for s in dataset(f, "names", path, "string", (n,))[()]]
    except (OSError, KeyError) as e:
        raise ImgnetError(f"cannot read {path} ({os_reason(e)}); rerun `imgnet prep --force` to rebuild it") from e
    check_index(path, meta, n, labels, blob, len(names))
    return meta, labels, names


# -------------------------------------------------------------------------------------- reader
def _advise(f, sequential: bool) -> None:
    """Tell the kernel how an HDF5 file will be read: read ahead for a scan, not for random access."""
    try:
        os.posix_fadvise(f.id.get_vfd_handle(), 0, 0,
                         os.POSIX_FADV_SEQUENTIAL if sequential else os.POSIX_FADV_RANDOM)
    except (AttributeError, OSError, ValueError):  # another HDF5 driver, or a platform without fadvise
        pass


class Hdf5Split(Split):
    """A packed HDF5 split: each process opens the file itself; the handle is (file, images dataset)."""

    def connect(self):
        import h5py

        f = h5py.File(self.path, "r")
        _advise(f, self.readahead)
        return f, f["images"]

    def disconnect(self, handle) -> None:
        handle[0].close()

    def read_bytes(self, i: int) -> bytes:
        return self._open()[1][i].tobytes()

    def scan(self, lo: int = 0, hi: int | None = None):
        hi = len(self) if hi is None else hi
        crcs = self._open()[0]["crc32"] if self.meta.get("checksum") else None
        for start in range(lo, hi, 4096):  # the checksums in blocks: one read per 4096 records
            block = crcs[start:min(hi, start + 4096)] if crcs is not None else None
            for i in range(start, min(hi, start + 4096)):
                yield i, self.read_bytes(i), (int(block[i - start]) if block is not None else None)

    def load_image(self, i: int, out: np.ndarray | None) -> np.ndarray:
        images = self._open()[1]
        if self.encoding == "raw":
            if out is None:
                return images[i]
            images.read_direct(out, np.s_[i], np.s_[...])
            return out
        return decode_image(images[i].tobytes(), "jpeg", out)

    def crc(self, i: int) -> int:
        return int(self._open()[0]["crc32"][i])


# -------------------------------------------------------------------------------------- format
class Hdf5Format(StoreFormat):
    name, title, suffix = "hdf5", "HDF5", ".h5"

    def read_meta(self, path: Path) -> dict:
        import h5py

        check_regular(path)
        with h5py.File(path, "r") as f:
            return parse_meta(f.attrs["meta"], path)

    def open(self, path: Path, readahead: bool = False) -> Hdf5Split:
        meta, labels, names = open_hdf5(path)
        return Hdf5Split(path, self.name, meta, labels, names, readahead)

    def convert(self, staging, tmp: Path, meta: dict, progress) -> None:
        import h5py

        n, raw = staging.written, meta["encoding"] == "raw"
        with h5py.File(tmp, "w") as f:
            if raw:  # maxshape: HDF5 refuses a (1, ...) chunk on a dataset of 0 images unless it may grow
                shape = image_shape(meta_size(meta))
                images = f.create_dataset("images", shape=(n, *shape), dtype=np.uint8,
                                          chunks=(1, *shape), maxshape=(None, *shape))
            else:
                images = f.create_dataset("images", shape=(n,), dtype=h5py.vlen_dtype(np.uint8))
            labels, crcs, names = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.uint32), []
            for i, (data, label, name, crc) in enumerate(staging.scan()):  # each checked against its crc32
                if raw:
                    images.id.write_direct_chunk((i, 0, 0, 0), data)
                else:
                    images[i] = np.frombuffer(data, dtype=np.uint8)
                labels[i], crcs[i] = label, crc
                names.append(name)
                if progress is not None:
                    progress.update(1)
            f.create_dataset("labels", data=labels)
            f.create_dataset("name_bytes", data=np.frombuffer(join_names(names), dtype=np.uint8))
            f.create_dataset("crc32", data=crcs)
            f.attrs["meta"] = json.dumps(meta)
            f.flush()


FORMAT = register(Hdf5Format())


def lmdb_to_hdf5(staging, dest: Path, meta: dict, progress=None) -> None:
    """Convert a complete staged split to `dest` atomically (via dest.tmp), checking each staged record against
    its checksum on the way (FORMAT.finalize)."""
    FORMAT.finalize(staging, Path(dest), meta, progress)

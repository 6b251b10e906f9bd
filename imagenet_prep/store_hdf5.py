"""The HDF5 half of the packed-split format (store.py has the layout): converting a complete staged LMDB split
into `<split>.h5`, and the checks made before an HDF5 file is read (by open_split, and by stats.py for stats.h5).

HDF5 has no crash consistency of its own, so a split is staged in a crash-safe LMDB first and converted in one
pass to `<split>.h5.tmp`, renamed into place once synced. Reading refuses what h5py would otherwise follow or
read without end: a FIFO or a link to a device, external links, external raw storage, virtual datasets, another
dtype or shape, and a contiguous dataset whose stored size does not match its shape.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np

from imagenet_prep.atomic import os_reason
from imagenet_prep.errors import ImgnetError
from imagenet_prep.store import (IMAGE_SHAPE, RAW_BYTES, LmdbWriter, _check_index, _check_meta, _join_names,
                                 _parse_meta, _split_names, record_crc)


# ------------------------------------------------------------------------------- conversion
def lmdb_to_hdf5(staging: LmdbWriter, dest: Path, meta: dict, progress=None) -> None:
    """Convert a complete staged split to `dest` atomically (via dest.tmp), checking each staged record against
    its checksum on the way. A full or read-only disk is an ImgnetError naming `dest`, and leaves no dest.tmp;
    the staged split is kept, so a rerun converts again."""
    dest = Path(dest)
    tmp = dest.with_name(dest.name + ".tmp")
    try:
        _write_hdf5(staging, tmp, meta, progress)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except (OSError, RuntimeError, ValueError) as e:  # h5py reports some failed writes as Runtime/ValueError
        _remove_quietly(tmp)
        raise ImgnetError(f"cannot write {dest} ({os_reason(e)}); the staged split {staging.path} is kept: free "
                          "some space (or make the folder writable) and rerun the same command") from e
    except BaseException:  # ImgnetError from a bad staged record, Ctrl-C
        _remove_quietly(tmp)
        raise


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:  # a read-only disk (where none could be created anyway)
        pass


def _write_hdf5(staging: LmdbWriter, tmp: Path, meta: dict, progress) -> None:
    import h5py

    n, raw = staging.written, meta["encoding"] == "raw"
    with h5py.File(tmp, "w") as f:
        if raw:  # maxshape: HDF5 refuses a (1, ...) chunk on a dataset of 0 images unless it may grow
            images = f.create_dataset("images", shape=(n, *IMAGE_SHAPE), dtype=np.uint8, chunks=(1, *IMAGE_SHAPE),
                                      maxshape=(None, *IMAGE_SHAPE))
        else:
            images = f.create_dataset("images", shape=(n,), dtype=h5py.vlen_dtype(np.uint8))
        labels, crcs, names = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.uint32), []
        for i, (data, label, name, crc) in enumerate(staging._scan()):
            if record_crc(data, label, name) != crc:
                raise ImgnetError(f"staged record {i} ({name.decode('utf-8', 'surrogateescape')!r}) of {staging.path} "
                                  "fails its checksum: the disk returned other bytes than were written; rerun "
                                  "`imgnet prep` with --force")
            if raw:
                images.id.write_direct_chunk((i, 0, 0, 0), data)
            else:
                images[i] = np.frombuffer(data, dtype=np.uint8)
            labels[i], crcs[i] = label, crc
            names.append(name)
            if progress is not None:
                progress.update(1)
        f.create_dataset("labels", data=labels)
        f.create_dataset("name_bytes", data=np.frombuffer(_join_names(names), dtype=np.uint8))
        f.create_dataset("crc32", data=crcs)
        f.attrs["meta"] = json.dumps(meta)
        f.flush()


# ---------------------------------------------------------------------------------- reading
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
    import h5py

    try:
        check_regular(path)
        with h5py.File(path, "r") as f:
            meta = _parse_meta(f.attrs["meta"], path)
            n = _check_meta(path, meta)
            raw = meta["encoding"] == "raw"
            images = dataset(f, "images", path, "uint8" if raw else "vlen uint8", (n, *IMAGE_SHAPE) if raw else (n,))
            if raw and images.id.get_storage_size() != n * RAW_BYTES:
                raise ImgnetError(f"{path}: the images dataset stores {images.id.get_storage_size():,} bytes, not "
                                  f"{n} x {RAW_BYTES:,}; rebuild it with `imgnet prep --force`")
            labels_ds = dataset(f, "labels", path, "integer", (n,))
            labels = contiguous(labels_ds, path, labels_ds.dtype.itemsize).astype(np.int64)
            if meta["format_version"] >= 2:
                dataset(f, "crc32", path, "uint32", (n,))
                blob = contiguous(dataset(f, "name_bytes", path, "uint8", None), path, 1).tobytes()
                names = _split_names(blob, n)
            else:
                blob = b""
                names = [s.decode("utf-8", "surrogateescape") if isinstance(s, bytes) else s
                         for s in dataset(f, "names", path, "string", (n,))[()]]
    except (OSError, KeyError) as e:
        raise ImgnetError(f"cannot read {path} ({os_reason(e)}); rerun `imgnet prep --force` to rebuild it") from e
    _check_index(path, meta, n, labels, blob, len(names))
    return meta, labels, names

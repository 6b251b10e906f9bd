"""Tiny CIFAR downloads in the four official layouts, made on the fly (tests only).

`write(root, key, ...)` writes `root/<archive>` (or the extracted folder) exactly as the official download
is laid out, with a few images per batch, and returns what a reader must give back: the class names and,
per split, the (name, label, image) records in order. The python batches are protocol-2 pickles as
Python 2 wrote them (byte strings as SHORT_BINSTRING/BINSTRING, numpy under numpy.core), as in
../shared/data/cifar10/make_official.py; `py3=True` writes them with Python 3's own pickler at protocol 2
instead (byte strings through _codecs.encode, numpy under numpy._core).
"""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np

NAMES10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FINE = [f"fine_{i:02d}" for i in range(100)]
COARSE = [f"coarse_{i:02d}" for i in range(20)]
ARCHIVES = {"cifar-10-python": ("cifar-10-python.tar.gz", "cifar-10-batches-py"),
            "cifar-10-binary": ("cifar-10-binary.tar.gz", "cifar-10-batches-bin"),
            "cifar-100-python": ("cifar-100-python.tar.gz", "cifar-100-python"),
            "cifar-100-binary": ("cifar-100-binary.tar.gz", "cifar-100-binary")}


class Py2Pickler(pickle._Pickler):
    """Protocol 2 as Python 2 wrote it: every str/bytes a byte string, numpy under numpy.core."""

    def save_bytes(self, obj, memo_key=None):
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)) + obj)
        self.memoize(obj if memo_key is None else memo_key)

    def save_str(self, obj):
        self.save_bytes(obj.encode("latin-1"), memo_key=obj)  # the str is what later references repeat

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", None) or ""
        name = name or obj.__qualname__
        if module.startswith("numpy"):
            self.write(pickle.GLOBAL + f"{module.replace('numpy._core', 'numpy.core')}\n{name}\n".encode())
            self.memoize(obj)
            return
        super().save_global(obj, name)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def py2_pickle(obj) -> bytes:
    b = io.BytesIO()
    Py2Pickler(b, protocol=2).dump(obj)
    return b.getvalue()


def py3_pickle(obj) -> bytes:
    """Python 3 at protocol 2, keys as bytes (what pickle.dump of a py2-loaded dict gives)."""
    def as_bytes(v):
        if isinstance(v, dict):
            return {k.encode() if isinstance(k, str) else k: as_bytes(x) for k, x in v.items()}
        if isinstance(v, list):
            return [as_bytes(x) for x in v]
        return v.encode() if isinstance(v, str) else v
    return pickle.dumps(as_bytes(obj), protocol=2)


def images(rng, n: int) -> np.ndarray:
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def rows(imgs: np.ndarray) -> np.ndarray:
    """(n, 32, 32, 3) HWC -> (n, 3072): R plane, G plane, B plane, each row-major (the format's order)."""
    return np.ascontiguousarray(imgs.transpose(0, 3, 1, 2).reshape(len(imgs), 3072))


def _add(t: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode = len(data), 1244000000, 0o644
    t.addfile(ti, io.BytesIO(data))


def write(root, key: str, per_batch: int = 3, n_test: int = 3, archive: bool = True, seed: int = 0,
          py3: bool = False, override: dict | None = None) -> dict:
    """Write the download `key` under `root`; return {"path", "classes", "coarse", "train", "test"} where a
    split is a list of (name, label, coarse_label or None, image). `override` replaces a member's bytes."""
    rng = np.random.default_rng(seed)
    arch_name, folder = ARCHIVES[key]
    hundred, binary = key.startswith("cifar-100"), key.endswith("binary")
    dump = py3_pickle if py3 else py2_pickle
    batches = ([("train", 5 * per_batch)] if hundred else [(f"data_batch_{k}", per_batch) for k in range(1, 6)])
    batches += [("test" if hundred else "test_batch", n_test)]
    files, out = {}, {"classes": FINE if hundred else NAMES10, "coarse": COARSE if hundred else None,
                      "train": [], "test": []}
    for bname, n in batches:
        imgs = images(rng, n)
        fine = [int(v) for v in rng.integers(0, 100 if hundred else 10, n)]
        coarse = [int(v) for v in rng.integers(0, 20, n)] if hundred else [None] * n
        split = "test" if bname.startswith("test") else "train"
        if binary:
            fname = bname + ".bin"
            labels = np.array([coarse, fine] if hundred else [fine], np.uint8).T
            files[fname] = np.concatenate([labels, rows(imgs)], 1).tobytes()
            names = [f"{fname}:{i:05d}" for i in range(n)]
        else:
            fname = bname
            names = [f"{NAMES10[f] if not hundred else 'img'}_s_{rng.integers(1e6):06d}.png" for f in fine]
            d = {"batch_label": f"{split}ing batch", "data": rows(imgs), "filenames": names}
            d.update({"fine_labels": fine, "coarse_labels": coarse} if hundred else {"labels": fine})
            files[fname] = dump(d)
        out[split] += list(zip(names, fine, coarse, imgs))
    if binary and hundred:
        files["fine_label_names.txt"] = ("\n".join(FINE) + "\n").encode()
        files["coarse_label_names.txt"] = ("\n".join(COARSE) + "\n").encode()
    elif binary:
        files["batches.meta.txt"] = ("\n".join(NAMES10) + "\n\n").encode()
        files["readme.html"] = b"<html></html>\n"
    elif hundred:
        files["meta"] = dump({"fine_label_names": FINE, "coarse_label_names": COARSE})
        files["file.txt~"] = b""
    else:
        files["batches.meta"] = dump({"num_cases_per_batch": per_batch, "label_names": NAMES10, "num_vis": 3072})
        files["readme.html"] = b"<html></html>\n"
    files.update(override or {})
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    order = sorted(files, key=lambda f: (sum(f.encode()) * 31 % 17, f))  # not in batch order, as the real archives
    if archive:
        out["path"] = root / arch_name
        with tarfile.open(out["path"], "w:gz") as t:
            ti = tarfile.TarInfo(folder)
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            t.addfile(ti)
            for f in order:
                if files[f] is not None:
                    _add(t, f"{folder}/{f}", files[f])
    else:
        out["path"] = root / folder
        out["path"].mkdir()
        for f in order:
            if files[f] is not None:
                (out["path"] / f).write_bytes(files[f])
    return out

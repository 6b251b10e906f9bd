"""Find the ILSVRC2012 source layout in SRC and list its images as `Item`s, without reading or extracting them.

Layouts (DESIGN.md `imgnet prep`):
    archives     ILSVRC2012_img_train.tar (a tar of <wnid>.tar), ILSVRC2012_img_val.tar (flat),
                 ILSVRC2012_devkit_t12.tar.gz (a split whose archive is absent may be an extracted folder)
    extracted    train/<wnid>/*.JPEG; val/ flat (labels from a devkit) or val/<wnid>/
    kaggle       ILSVRC/Data/CLS-LOC/{train,val}, LOC_synset_mapping.txt, LOC_val_solution.csv
    imagefolder  train/<class>/..., val/<class>/... with any folder names

An Item names a byte range: a whole file, or a member of a tar located by its absolute offset in the
outer file (members of the per-class tars too), so any process can read it with `read_item`.

Listing the train tar reads 1.28M tar headers; with a `cache_dir`, each official tar's listing is kept in
cache_dir/.listing-<key>.npz, keyed by the tar's absolute path, size and mtime, and reused while those match.

Classes: a source with a flat val has the classes of the ground truth that labels it (the 1000 of the
devkit or of LOC_synset_mapping.txt), so that its indices are the standard ones; any other source has
the class folders (or class tars) it holds, as ImageFolder does.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from imagenet_prep.errors import ImgnetError
from imagenet_prep.labels import ClassMeta, LabelMap, build_label_map, is_wnid, load_class_meta, parse_meta_mat

SPLITS = ("train", "val")
TRAIN_TAR, VAL_TAR = "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"
DEVKIT_TGZ = "ILSVRC2012_devkit_t12.tar.gz"
DEVKIT_DIRS = ("ILSVRC2012_devkit_t12", "devkit_t12")
GROUND_TRUTH, META = "data/ILSVRC2012_validation_ground_truth.txt", "data/meta.mat"
KAGGLE_ROOT, KAGGLE_SYNSETS, KAGGLE_VAL = "ILSVRC/Data/CLS-LOC", "LOC_synset_mapping.txt", "LOC_val_solution.csv"
VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})\.JPEG")
LISTING_VERSION = 1  # of the cached tar listings; a new value makes every older cache file unused

# Files that operating systems and file managers leave in image folders; anything else is an image
# candidate, whatever its extension: decoding by content happens in resize.py.
_JUNK_FILES = {"thumbs.db", "ehthumbs.db", "desktop.ini", "icon\r"}
_JUNK_DIRS = {"__MACOSX", "@eaDir", "$RECYCLE.BIN", "System Volume Information", "lost+found"}


@dataclass(frozen=True, slots=True)
class Item:
    """One source image: bytes path[offset:offset + size] (size -1: the whole file)."""

    name: str   # source file name, e.g. n01440764_10026.JPEG or ILSVRC2012_val_00000001.JPEG
    label: int  # index in the label map
    path: str
    offset: int = 0
    size: int = -1


def read_item(item: Item) -> bytes:
    """The bytes of an Item; safe in any process (opens the file itself, reads only the item's range)."""
    with open(item.path, "rb", buffering=0) as f:
        if item.size < 0:
            return f.read()
        f.seek(item.offset)
        data = f.read(item.size)
    if len(data) != item.size:
        raise ImgnetError(f"{item.path}: {item.name} should be {item.size} bytes at offset {item.offset}, "
                          f"read {len(data)}; the file changed or is truncated since it was listed")
    return data


@dataclass
class Source:
    """What `discover` found: items per split in deterministic order, and what it skipped."""

    src: Path
    layout: str                         # archives | extracted | kaggle | imagefolder
    label_map: LabelMap
    splits: dict[str, list[Item]]       # "train" sorted by (label, name), "val" by name
    skipped: dict[str, list[dict]]      # per split: [{"name", "reason"}] (system files, unlabelled val images)
    origin: dict[str, str] = field(default_factory=dict)  # where each split and the class metadata came from


# ------------------------------------------------------------------------------------- helpers
def _junk(name: str, is_dir: bool) -> str | None:
    """Why `name` is not an image candidate, or None."""
    if name.startswith("."):
        return f"hidden {'folder' if is_dir else 'file'}"
    if not is_dir and name.lower() in _JUNK_FILES:
        return "system file"
    if is_dir and name in _JUNK_DIRS:
        return "system folder"
    return None


def _skip(name: str, reason: str) -> dict:
    return {"name": name, "reason": reason}


@dataclass
class _Split:
    where: str                       # the folder or tar, for messages
    classes: list[str] | None        # class folders / class tars; None: flat, labelled by ground truth
    # () -> (entries, skipped); an entry is (name, class or None when flat, path, offset, size)
    entries: Callable[[], tuple[list[tuple], list[dict]]]


class _Window(io.RawIOBase):
    """A read-only view of bytes [start, start + size) of an open file, for tarfile to scan a nested tar."""

    def __init__(self, f, start: int, size: int):
        self._f, self._start, self._size, self._pos = f, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        self._pos = max(0, pos + (0, self._pos, self._size)[whence])
        return self._pos

    def readinto(self, b) -> int:
        n = max(0, min(len(b), self._size - self._pos))
        self._f.seek(self._start + self._pos)
        got = self._f.readinto(memoryview(b)[:n]) if n else 0
        self._pos += got
        return got


def _tar_files(tf: tarfile.TarFile, where: str, limit: int) -> tuple[list[tarfile.TarInfo], list[dict]]:
    """Regular members of an open tar (headers only), checked to lie within `limit` bytes; junk skipped."""
    files, skipped = [], []
    try:
        for m in tf:
            base = m.name.rsplit("/", 1)[-1]
            if m.isdir():
                continue
            reason = _junk(base, False) if m.isreg() else "not a regular file in the tar"
            if reason:
                skipped.append(_skip(m.name, reason))
            elif m.offset_data + m.size > limit:
                raise ImgnetError(f"{where}: member {m.name} ends at byte {m.offset_data + m.size} but the tar has "
                                  f"{limit}; expected a complete archive (re-download it)")
            else:
                files.append(m)
    except tarfile.TarError as e:
        raise ImgnetError(f"{where}: not a readable tar ({e}); expected an uncompressed tar archive") from e
    return files, skipped


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:")
    except (tarfile.TarError, OSError) as e:
        raise ImgnetError(f"{path}: not a readable tar ({e}); expected the official uncompressed archive") from e


# ---------------------------------------------------------------------------------- enumerators
def _dir_split(root: Path) -> _Split:
    """A split folder: class folders (each walked recursively), or flat files when it has no folders."""
    dirs, files, skipped = [], [], []
    with os.scandir(root) as it:
        for e in it:
            is_dir = e.is_dir()
            reason = _junk(e.name, is_dir)
            if reason:
                skipped.append(_skip(e.name + "/" * is_dir, reason))
            elif is_dir:
                dirs.append(e.name)
            elif e.is_file():
                files.append(e)
            else:
                skipped.append(_skip(e.name, "not a regular file (a broken link?)"))
    if dirs and files:
        raise ImgnetError(f"{root} holds both image files (e.g. {min(e.name for e in files)}) and folders "
                          f"(e.g. {min(dirs)}/); expected either class folders only or images only (a flat val)")
    if files:
        def flat():
            return [(e.name, None, e.path, 0, -1) for e in files], list(skipped)
        return _Split(str(root), None, flat)

    def walk():
        entries, skipped_all = [], list(skipped)
        for cls in dirs:
            stack = [(os.path.join(root, cls), "")]
            while stack:  # depth-first; nested folders give names "sub/x.JPEG"
                folder, prefix = stack.pop()
                with os.scandir(folder) as it:
                    for e in it:
                        rel = prefix + e.name
                        is_dir = e.is_dir()
                        reason = _junk(e.name, is_dir)
                        if reason:
                            skipped_all.append(_skip(f"{cls}/{rel}" + "/" * is_dir, reason))
                        elif is_dir:
                            stack.append((e.path, rel + "/"))
                        elif e.is_file():
                            entries.append((rel, cls, e.path, 0, -1))
                        else:
                            skipped_all.append(_skip(f"{cls}/{rel}", "not a regular file (a broken link?)"))
        return entries, skipped_all
    return _Split(str(root), sorted(dirs), walk)


def _train_tar_split(path: Path, cache_dir=None) -> _Split:
    """ILSVRC2012_img_train.tar: the outer tar lists the class tars; their members are found at
    outer offset_data + inner offset_data."""
    st = path.stat()
    cache = _listing_file(cache_dir, path, st)
    cached = _load_listing(cache, path)
    if cached is not None:
        return _Split(str(path), cached[0], lambda: (cached[1], list(cached[2])))  # discover sorts `skipped` in place
    with _open_tar(path) as tf:
        members, skipped = _tar_files(tf, str(path), st.st_size)
    class_tars = {}
    for m in members:
        base = m.name.rsplit("/", 1)[-1]
        if base.endswith(".tar") and len(base) > 4:
            class_tars[base[:-4]] = m
        else:
            skipped.append(_skip(m.name, "not a class tar (<class>.tar) in the train archive"))

    def entries():
        out, skipped_all = [], list(skipped)
        p = str(path)
        with open(path, "rb") as f:
            for cls, m in class_tars.items():
                where = f"{path}:{m.name}"
                try:
                    inner_tf = tarfile.open(fileobj=_Window(f, m.offset_data, m.size), mode="r:")
                except tarfile.TarError as e:
                    raise ImgnetError(f"{where}: not a readable tar ({e}); expected a tar of one class's images") from e
                with inner_tf:
                    inner, sk = _tar_files(inner_tf, where, m.size)
                skipped_all += [_skip(f"{cls}/{s['name']}", s["reason"]) for s in sk]
                out += [(i.name.removeprefix("./"), cls, p, m.offset_data + i.offset_data, i.size) for i in inner]
        _save_listing(cache, path, sorted(class_tars), out, skipped_all)
        return out, skipped_all
    return _Split(str(path), sorted(class_tars), entries)


def _val_tar_split(path: Path, cache_dir=None) -> _Split:
    def entries():
        st = path.stat()
        cache = _listing_file(cache_dir, path, st)
        cached = _load_listing(cache, path)
        if cached is not None:
            return cached[1:]
        with _open_tar(path) as tf:
            members, skipped = _tar_files(tf, str(path), st.st_size)
        p = str(path)
        out = [(m.name.rsplit("/", 1)[-1], None, p, m.offset_data, m.size) for m in members]
        _save_listing(cache, path, None, out, skipped)
        return out, skipped
    return _Split(str(path), None, entries)


# -------------------------------------------------------------------------------- listing cache
# One .npz per tar: names and skipped entries as newline-joined UTF-8 blobs (uint8), each entry's class
# as an index into `classes` (int32, -1: flat), offsets and sizes in bytes (int64). 1.28M entries: ~8 MB.
def _listing_file(cache_dir, path: Path, st: os.stat_result) -> Path | None:
    """Where the listing of the tar at `path` (as it is now: `st`) is cached; None without a cache_dir."""
    if cache_dir is None:
        return None
    key = f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}\0{LISTING_VERSION}"
    return Path(cache_dir) / f".listing-{hashlib.sha256(key.encode('utf-8', 'surrogatepass')).hexdigest()}.npz"


def _join(strings) -> np.ndarray:
    """Strings -> one uint8 blob; ValueError when one holds a newline (it could not be split back)."""
    strings = list(strings)
    blob = "\n".join(strings).encode("utf-8", "surrogatepass")  # surrogatepass: tar names with undecodable bytes
    if blob.count(b"\n") != max(len(strings) - 1, 0):
        raise ValueError("a name holds a newline")
    return np.frombuffer(blob, np.uint8)


def _split(blob: np.ndarray, n: int) -> list[str]:
    strings = blob.tobytes().decode("utf-8", "surrogatepass").split("\n") if n else []
    if len(strings) != n:
        raise ValueError(f"{len(strings)} strings, expected {n}")
    return strings


def _save_listing(file: Path | None, path: Path, classes: list[str] | None, entries: list[tuple],
                  skipped: list[dict]) -> None:
    """Write the listing atomically (tmp + rename); best effort: a listing that cannot be written (full disk,
    a name with a newline) is only rescanned next time."""
    if file is None:
        return
    index = {c: i for i, c in enumerate(classes or ())}
    tmp = file.with_name(f"{file.name}.{os.getpid()}.tmp")
    try:
        arrays = {
            "classes": _join(classes or ()), "names": _join(e[0] for e in entries),
            "labels": np.array([-1 if e[1] is None else index[e[1]] for e in entries], np.int32),
            "offsets": np.array([e[3] for e in entries], np.int64), "sizes": np.array([e[4] for e in entries], np.int64),
            "skipped_names": _join(s["name"] for s in skipped), "skipped_reasons": _join(s["reason"] for s in skipped)}
        head = {"version": LISTING_VERSION, "tar": os.path.abspath(path), "flat": classes is None,
                "counts": [len(classes or ()), len(entries), len(skipped)]}
        arrays["head"] = np.frombuffer(json.dumps(head).encode("utf-8", "surrogatepass"), np.uint8)
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.replace(tmp, file)
    except (OSError, ValueError):
        tmp.unlink(missing_ok=True)


def _load_listing(file: Path | None, path: Path) -> tuple[list[str] | None, list[tuple], list[dict]] | None:
    """(classes, entries, skipped) as the scan gives them, or None when `file` is absent or unreadable."""
    if file is None or not file.is_file():
        return None
    try:
        with np.load(file, allow_pickle=False) as z:
            head = json.loads(z["head"].tobytes().decode("utf-8", "surrogatepass"))
            n_classes, n, n_skipped = head["counts"]
            if head["version"] != LISTING_VERSION or head["tar"] != os.path.abspath(path):
                return None
            classes = _split(z["classes"], n_classes)
            names = _split(z["names"], n)
            labels, offsets, sizes = z["labels"], z["offsets"], z["sizes"]
            if not (labels.dtype == np.int32 and offsets.dtype == sizes.dtype == np.int64
                    and len(labels) == len(offsets) == len(sizes) == n
                    and (n == 0 or (labels.min() >= -1 and labels.max() < n_classes))):
                return None
            lookup = [*classes, None]  # label -1 (flat) -> None
            skipped = [_skip(a, b) for a, b in zip(_split(z["skipped_names"], n_skipped),
                                                   _split(z["skipped_reasons"], n_skipped))]
    except Exception:  # noqa: BLE001 - a damaged cache (truncated, overwritten, another format) is only rescanned
        return None
    p = str(path)
    entries = list(zip(names, [lookup[i] for i in labels.tolist()], [p] * n, offsets.tolist(), sizes.tolist()))
    return (None if head["flat"] else classes), entries, skipped


# --------------------------------------------------------------------------------- ground truth
@dataclass
class _Devkit:
    where: str
    read: Callable[[str], bytes | None]  # devkit-relative path -> bytes, None when absent

    def meta(self) -> ClassMeta:
        data = self.read(META)
        if data is None:
            raise ImgnetError(f"{self.where} has no {META}; expected the ILSVRC2012 devkit")
        return parse_meta_mat(data, origin=f"{self.where}/{META}")


def _find_devkit(src: Path) -> _Devkit | None:
    """A devkit folder (ILSVRC2012_devkit_t12/, devkit_t12/, any folder one level down, or SRC itself) holding
    data/meta.mat, else ILSVRC2012_devkit_t12.tar.gz in SRC (read into memory, never extracted)."""
    named = [src / d for d in DEVKIT_DIRS]
    others = sorted(p for p in src.iterdir() if p.is_dir() and p not in named and not p.name.startswith("."))
    for d in [*named, *others, src]:
        if (d / META).is_file():
            return _Devkit(str(d), lambda rel, d=d: (d / rel).read_bytes() if (d / rel).is_file() else None)
    tgz = src / DEVKIT_TGZ
    if tgz.is_file():
        wanted, found = (META, GROUND_TRUTH), {}
        try:
            with tarfile.open(tgz, "r:gz") as tf:
                for m in tf:
                    rel = next((w for w in wanted if m.name == w or m.name.endswith("/" + w)), None)
                    if rel and m.isreg():
                        found[rel] = tf.extractfile(m).read()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise ImgnetError(f"{tgz}: not a readable .tar.gz ({e}); expected the official ILSVRC2012 devkit") from e
        return _Devkit(str(tgz), found.get)
    return None


# The labels of a flat val: `wnid(name)` gives an image's class, `wnids` is the class list, `origin` the file.
class _DevkitTruth:
    """ILSVRC2012_val_%08d.JPEG takes line n of the ground-truth file (an ILSVRC2012_ID, mapped by meta.mat)."""

    def __init__(self, devkit: _Devkit, meta: ClassMeta):
        self.origin = f"{devkit.where}/{GROUND_TRUTH}"
        data = devkit.read(GROUND_TRUTH)
        if data is None:
            raise ImgnetError(f"{devkit.where} has no {GROUND_TRUTH}; expected the ILSVRC2012 devkit, whose "
                              "ground truth labels the flat val")
        self._ids = []
        for n, line in enumerate(data.decode("ascii", "replace").splitlines(), start=1):
            i = int(line) if line.strip().isdigit() else 0
            if i not in meta.wnid_of_id:
                raise ImgnetError(f"{self.origin} line {n} is {line!r}; expected an ILSVRC2012_ID from 1 to 1000")
            self._ids.append(i)
        self._meta = meta
        self.wnids = [c["wnid"] for c in meta.classes]

    def wnid(self, name: str) -> str:
        m = VAL_NAME.fullmatch(name)
        if not m:
            raise ImgnetError(f"val image {name!r} does not match ILSVRC2012_val_%08d.JPEG; expected the "
                              f"official val file names, whose number is their line in {self.origin}")
        n = int(m[1])
        if not 1 <= n <= len(self._ids):
            raise ImgnetError(f"val image {name} has number {n}, past the end of {self.origin} "
                              f"({len(self._ids)} lines); expected numbers 1 to {len(self._ids)}")
        return self._meta.wnid_of_id[self._ids[n - 1]]


class _CsvTruth:
    """Kaggle LOC_val_solution.csv: ImageId (file name without extension) -> first token of PredictionString."""

    def __init__(self, path: Path, src: Path):
        self.origin = str(path)
        self._wnid = {}
        with open(path, newline="", encoding="utf-8") as f:
            rows = csv.reader(f)
            if next(rows, None) != ["ImageId", "PredictionString"]:
                raise ImgnetError(f"{path}: expected the header ImageId,PredictionString of Kaggle's LOC_val_solution.csv")
            for row in rows:
                if len(row) != 2 or not is_wnid(row[1].split(" ", 1)[0]):
                    raise ImgnetError(f"{path}: row {row!r}; expected ImageId,<wnid> x0 y0 x1 y1 ...")
                self._wnid[row[0]] = row[1].split(" ", 1)[0]
        synsets = src / KAGGLE_SYNSETS
        if synsets.is_file():
            self.wnids = [ln.split(" ", 1)[0] for ln in synsets.read_text(encoding="utf-8").splitlines() if ln.strip()]
        else:
            self.wnids = [c["wnid"] for c in load_class_meta().classes]

    def wnid(self, name: str) -> str:
        key = name.rsplit(".", 1)[0]
        if key not in self._wnid:
            raise ImgnetError(f"val image {name!r} has no row {key!r} in {self.origin}; expected an ImageId "
                              "listed there (ILSVRC2012_val_%08d)")
        return self._wnid[key]


def _find_truth(src: Path, devkit: _Devkit | None, meta: ClassMeta, prefer_csv: bool,
                where: str) -> _DevkitTruth | _CsvTruth:
    csv_path = src / KAGGLE_VAL
    if csv_path.is_file() and (prefer_csv or devkit is None):
        return _CsvTruth(csv_path, src)
    if devkit is not None:
        return _DevkitTruth(devkit, meta)
    raise ImgnetError(f"{where} is a flat val (images, no class folders) but SRC has no labels for it; expected a "
                      f"devkit (a folder such as {src / DEVKIT_DIRS[0]}/ with {GROUND_TRUTH} and {META}, or "
                      f"{src / DEVKIT_TGZ}) or {csv_path}")


# ----------------------------------------------------------------------------------- detection
def _layout_help(src: Path) -> str:
    try:
        found = sorted(p.name + "/" * p.is_dir() for p in src.iterdir())
    except OSError as e:
        found = [f"(unreadable: {e.strerror})"]
    shown = ", ".join(found[:12]) + (f" and {len(found) - 12} more" if len(found) > 12 else "") if found else "nothing"
    hint = ""
    if sum(is_wnid(f.rstrip("/")) for f in found) > len(found) // 2 > 0:
        hint = " (these look like class folders: pass the folder above them, which holds train/ and val/)"
    return (f"{src} matches no known source layout; it holds {shown}{hint}. Expected one of: official archives "
            f"({TRAIN_TAR} and/or {VAL_TAR}, with {DEVKIT_TGZ} for val labels); extracted folders "
            "(train/<wnid>/*.JPEG and val/ either flat with the devkit or val/<wnid>/); Kaggle "
            f"({KAGGLE_ROOT}/{{train,val}} with {KAGGLE_SYNSETS} and {KAGGLE_VAL}); an ImageFolder tree "
            "(train/<class>/..., val/<class>/...)")


def _detect(src: Path, cache_dir=None) -> tuple[str, dict[str, _Split]]:
    from imagenet_prep import hf  # Hugging Face downloads: parquet or the script-era tar.gz shards

    if (found := hf.detect(src, cache_dir)) is not None:
        return found
    kaggle = src / KAGGLE_ROOT
    if kaggle.is_dir():
        return "kaggle", {s: _dir_split(kaggle / s) for s in SPLITS if (kaggle / s).is_dir()}
    if (src / TRAIN_TAR).is_file() or (src / VAL_TAR).is_file():
        splits = {}
        for s, tar, make in (("train", TRAIN_TAR, _train_tar_split), ("val", VAL_TAR, _val_tar_split)):
            if (src / tar).is_file():
                splits[s] = make(src / tar, cache_dir)
            elif (src / s).is_dir():  # one archive kept, the other already extracted
                splits[s] = _dir_split(src / s)
        return "archives", splits
    splits = {s: _dir_split(src / s) for s in SPLITS if (src / s).is_dir()}
    if not splits:
        raise ImgnetError(_layout_help(src))
    names = {c for sp in splits.values() for c in sp.classes or ()}
    return "extracted" if all(map(is_wnid, names)) else "imagefolder", splits


def _first_per_class(items: list[Item], n: int) -> list[Item]:
    count: dict[int, int] = {}
    kept = []
    for i in items:
        count[i.label] = count.get(i.label, 0) + 1
        if count[i.label] <= n:
            kept.append(i)
    return kept


def discover(src, label_order: str = "sorted", classes: int | None = None, per_class: int | None = None,
             splits=None, cache_dir=None) -> Source:
    """Find the layout of `src` and list its images.

    label_order "sorted" | "devkit"; `classes=N` keeps the first N classes in label order (renumbered from 0);
    `per_class=N` the first N names of each class in each split; `splits` limits the listing to those splits
    (default: every split found). The classes depend on the whole source, whatever `splits` is, so that
    every run over the same source gets the same label map (see the module docstring). `cache_dir`: a writable
    folder where the listings of the official tars are kept for the next run over the same unchanged tars."""
    src = Path(src)
    if not src.is_dir():
        raise ImgnetError(f"source {src} is not a folder; expected the folder holding the ILSVRC2012 download")
    if per_class is not None and (not isinstance(per_class, int) or isinstance(per_class, bool) or per_class < 1):
        raise ImgnetError(f"per_class={per_class!r}; expected a positive number of images per class")
    layout, found = _detect(src, cache_dir)
    wanted = list(found) if splits is None else list(splits)
    for s in wanted:
        if s not in SPLITS:
            raise ImgnetError(f"split {s!r} is not supported; expected one of {', '.join(SPLITS)}")
        if s not in found:
            raise ImgnetError(f"{src} ({layout} layout) has no {s} split; it has {', '.join(found) or 'none'}")
    if "train" in found and found["train"].classes is None:
        raise ImgnetError(f"{found['train'].where} holds images but no class folders; expected train/<class>/ folders")

    devkit = _find_devkit(src)
    meta = devkit.meta() if devkit else load_class_meta()
    origin = {"class_metadata": meta.origin}

    names = sorted({c for sp in found.values() for c in sp.classes or ()})
    flat = [sp.where for sp in found.values() if sp.classes is None]
    truth = _find_truth(src, devkit, meta, layout == "kaggle", flat[0]) if flat else None
    if truth:  # the ground truth's classes, so that a subset of class folders keeps the standard indices
        extra = sorted(set(names) - set(truth.wnids))
        if extra:
            raise ImgnetError(f"class folders {', '.join(map(repr, extra[:5]))} are not among the "
                              f"{len(truth.wnids)} classes of {truth.origin}, which labels {flat[0]}; expected "
                              "ILSVRC2012 wnids as class folders, or val/<class>/ folders instead of a flat val")
        names = truth.wnids
    label_map = build_label_map(names, order=label_order, classes=classes, meta=meta)

    items, skipped = {}, {}
    for s in wanted:
        sp = found[s]
        entries, skipped[s] = sp.entries()
        if sp.classes is None:
            origin[s] = f"{sp.where} (labels: {truth.origin})"
            labelled = []
            for name, _, path, off, size in entries:
                wnid = truth.wnid(name)
                if wnid in label_map:
                    labelled.append((name, wnid, path, off, size))
                else:
                    skipped[s].append(_skip(name, f"its class {wnid} (from {truth.origin}) is not among the "
                                                  f"{len(label_map.all_names)} classes of the source"))
            entries = labelled
        else:
            origin[s] = f"{sp.where} (labels: class {'tars' if sp.where.endswith('.tar') else 'folders'})"
        its = [Item(name, label_map.index_of(cls), path, off, size) for name, cls, path, off, size in entries
               if label_map.index_of(cls) is not None]
        its.sort(key=(lambda i: (i.label, i.name)) if s == "train" else (lambda i: (i.name, i.label)))
        if per_class is not None:
            its = _first_per_class(its, per_class)
        items[s] = its
        skipped[s].sort(key=lambda d: d["name"])
    return Source(src, layout, label_map, items, skipped, origin)

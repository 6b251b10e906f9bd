"""Find the ILSVRC2012 source layout in SRC and list its images as `Item`s, without reading or extracting them.

Layouts (docs/design.md `imgnet prep`):
    archives     ILSVRC2012_img_train.tar (a tar of <wnid>.tar), ILSVRC2012_img_val.tar (flat),
                 ILSVRC2012_devkit_t12.tar.gz (a split whose archive is absent may be an extracted folder)
    extracted    train/<wnid>/*.JPEG; val/ flat or val/<wnid>/
    kaggle       ILSVRC/Data/CLS-LOC/{train,val}, LOC_synset_mapping.txt, LOC_val_solution.csv
    kaggle-zip   imagenet-object-localization-challenge.zip, still zipped (kaggle_zip.py)
    timm-wds     imagenet1k-{train-NNNN,validation-NN}.tar webdataset shards and _info.json (wds.py)
    imagefolder  train/<class>/..., val/<class>/... with any folder names

An Item names a byte range: a whole file, or a member of a tar located by its absolute offset in the
outer file (members of the per-class tars and of the shards too), or a zip member (its local header's
offset, compressed size, method and CRC-32), so any process can read it with `read_item`.

Listing the train tar reads 1.28M tar headers; with a `cache_dir`, each listing (an official tar, the shards
of a split, the zip's central directory) is kept in cache_dir/.listing-<key>.npz, keyed by the absolute path,
size and mtime of the files listed, and reused while those match.

Val labels: a flat val is labelled by a --val-labels file, else by the Kaggle CSV or the devkit found in SRC,
else by the ground truth shipped in imagenet_prep/data/. What SRC carries (devkit, CSV, class folders, val
shards) must agree with the shipped ground truth: a disagreement is an error, not a silent relabelling.

Classes: a source with a flat val has the classes of the ground truth that labels it (the 1000 of the
devkit or of LOC_synset_mapping.txt), so that its indices are the standard ones; the shards carry the
1000 (their .cls is a sorted-wnid index); any other source has the class folders (or class tars) it
holds, as ImageFolder does.
"""

from __future__ import annotations

import csv
import errno
import gzip
import hashlib
import io
import json
import os
import re
import tarfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from imagenet_prep import kaggle_zip, wds
from imagenet_prep.errors import ImgnetError
from imagenet_prep.labels import (GROUND_TRUTH_FILE, ClassMeta, LabelMap, build_label_map, is_wnid, load_class_meta,
                                  load_val_ground_truth, parse_ground_truth, parse_meta_mat, read_val_labels)

SPLITS = ("train", "val")
TRAIN_TAR, VAL_TAR = "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"
DEVKIT_TGZ = "ILSVRC2012_devkit_t12.tar.gz"
DEVKIT_DIRS = ("ILSVRC2012_devkit_t12", "devkit_t12")
GROUND_TRUTH, META = "data/ILSVRC2012_validation_ground_truth.txt", "data/meta.mat"
KAGGLE_ROOT, KAGGLE_SYNSETS, KAGGLE_VAL = "ILSVRC/Data/CLS-LOC", "LOC_synset_mapping.txt", "LOC_val_solution.csv"
VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})\.JPEG")
# the largest source image read: a 179-megapixel (twice Pillow's limit) 16-bit RGBA TIFF is ~1.4 GB; a zip
# member inflates to at most kaggle_zip.MAX_MEMBER_BYTES, the same bound
MAX_IMAGE_BYTES = 2 << 30
MAX_SMALL_FILE_BYTES = 256 << 20  # labels, devkit and its contents: LOC_val_solution.csv is the largest, ~10 MB
LISTING_VERSION = 4  # of the cached listings (4: skipped files named where they are, Source.locate); a new value makes every older cache file unused

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
    method: int = -1  # a zip member: compression method (0 stored, 8 deflate), offset = its local header
    crc: int = -1     # a zip member: CRC-32 of the uncompressed bytes, checked on reading


def shown(text) -> str:
    """A name or path for a one-line message: as is, or repr() where it holds a newline, another control
    character or undecodable bytes (surrogateescape), so that the message stays one printable line."""
    text = os.fsdecode(text) if isinstance(text, bytes) else str(text)
    return text if text.isprintable() else repr(text)


def os_failure(what: str, e: OSError, hint: str = "fix the source (drive, network share, permissions) and rerun "
               "the same command to continue") -> ImgnetError:
    """An I/O failure while reading the source, as a one-line error naming `what` and the errno: it stops
    the run (skipping the image or folder would silently lose it)."""
    code = errno.errorcode.get(e.errno, "no errno") if e.errno is not None else "no errno"
    return ImgnetError(f"cannot read {shown(what)} ({code}: {e.strerror or e}); an I/O failure, not a bad image: "
                       f"{hint}")


def read_failure(path: str, name: str, e: OSError) -> ImgnetError:
    """os_failure for the bytes of one image: nothing is recorded for it, the rerun reads it again."""
    if path.endswith(name):
        where = path if name.isprintable() else f"{shown(name)} in {shown(path[:len(path) - len(name)])}"
    else:
        where = f"{shown(name)} in {shown(path)}"
    return os_failure(where, e, "nothing was recorded for it; fix the source (drive, network share, permissions) "
                      "and rerun the same command to continue")


def too_large(size: int):
    """BadImage for source bytes over MAX_IMAGE_BYTES: a content rejection, decided before anything is read."""
    from imagenet_prep.resize import BadImage

    return BadImage(f"{size:,} bytes, over the {MAX_IMAGE_BYTES:,} of the largest image the toolkit reads "
                    "(twice Pillow's pixel limit, uncompressed)")


def read_item(item: Item) -> bytes:
    """The bytes of an Item; safe in any process (opens the file itself, reads only the item's range). BadImage
    (a rejection) for a file or member over MAX_IMAGE_BYTES, which would only exhaust the memory."""
    if item.method >= 0:
        from imagenet_prep.kaggle_zip import read_member

        return read_member(item.path, item.name, item.offset, item.size, item.method, item.crc)
    if item.size > MAX_IMAGE_BYTES:
        raise too_large(item.size)
    with open(item.path, "rb", buffering=0) as f:
        if item.size < 0:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_IMAGE_BYTES:
                raise too_large(size)
            return f.read(MAX_IMAGE_BYTES + 1)
        f.seek(item.offset)
        data = f.read(item.size)
    if len(data) != item.size:
        raise ImgnetError(f"{item.path}: {item.name} should be {item.size} bytes at offset {item.offset}, "
                          f"read {len(data)}; the file changed or is truncated since it was listed")
    return data


@dataclass
class Source:
    """What `discover` found: items per split in deterministic order, and what it skipped.

    Every file that `skipped`, `differs` and the prep report name is named in one form, where it is in SRC
    (`locate`): a file in a folder by its path relative to SRC (train/n01440764/n01440764_10026.JPEG); a member
    of an archive by the archive's path relative to SRC, ":" and the member's name, nested archives in turn
    (ILSVRC2012_img_train.tar:n01440764.tar:n01440764_10026.JPEG, imagenet-object-localization-challenge.zip:
    ILSVRC/Data/CLS-LOC/val/ILSVRC2012_val_00000001.JPEG). In the shards that carry no per-image member name
    (webdataset, Hugging Face) the part after ":" is the sample key or the image.path that the shard lists."""

    src: Path
    layout: str                         # archives | extracted | kaggle | imagefolder
    label_map: LabelMap
    splits: dict[str, list[Item]]       # "train" sorted by (label, name), "val" by name
    skipped: dict[str, list[dict]]      # per split: [{"name", "reason"}] (system files, unlabelled val images)
    origin: dict[str, str] = field(default_factory=dict)  # where each split and the class metadata came from
    # per split: [{"name", "reason"}] images whose source bytes differ from the official tars' (re-encoded copies)
    differs: dict[str, list[dict]] = field(default_factory=dict)
    locators: dict[str, Callable[[tuple], str]] = field(default_factory=dict)  # per split: entry -> location

    def locate(self, split: str, item: Item) -> str:
        """Where `item` is in SRC, in the one form of the class docstring."""
        cls = self.label_map.classes[item.label]["wnid"] if item.label >= 0 else None
        find = self.locators.get(split, locate_entry)
        return relative(self.src, find((item.name, cls, item.path, item.offset, item.size)))


def locate_entry(entry: tuple) -> str:
    """A listing entry (name, class, path, offset, size, ...) -> the file (a whole file: size -1) or
    `<archive>:<member>`."""
    name, _, path, _, size = entry[:5]
    return path if size < 0 else f"{path}:{name}"


def relative(src, where: str) -> str:
    """`where` (a path under SRC, or `<archive under SRC>:<member>`) relative to SRC."""
    root = os.path.join(os.fspath(src), "")
    return where[len(root):] if where.startswith(root) else where


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
    # () -> (entries, skipped); an entry is (name, class or None when flat, *the rest of its Item: path, offset,
    # size[, method, crc]))
    entries: Callable[[], tuple[list[tuple], list[dict]]]
    labelled_by: str = ""            # where the classes of a split that is not flat come from, for `origin`
    relabel: bool = False            # a val that labels itself (shards) but that --val-labels may relabel
    problem: str | None = None       # why the split cannot be listed (an incomplete archive): its classes are partial
    locate: Callable[[tuple], str] = locate_entry  # an entry -> where it is (Source.locate)


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


def _tar_files(tf: tarfile.TarFile, where: str, limit: int, at: str | None = None) -> tuple[list[tarfile.TarInfo],
                                                                                         list[dict]]:
    """Regular members of an open tar (headers only), checked to lie within `limit` bytes; junk skipped
    (named `<at>:<member>`; `at`: the tar's location, by default `where`)."""
    files, skipped, at = [], [], where if at is None else at
    try:
        for m in tf:
            base = m.name.rsplit("/", 1)[-1]
            if m.isdir():
                continue
            reason = _junk(base, False) if m.isreg() else "not a regular file in the tar"
            if m.issparse():  # its stored bytes are not its content: it cannot be read in place by byte range
                reason = "a sparse member (GNU tar -S), which is not read in place; re-create the tar without -S"
            if reason:
                skipped.append(_skip(f"{at}:{m.name}", reason))
            elif m.offset_data + m.size > limit:
                raise ImgnetError(f"{where}: member {shown(m.name)} ends at byte {m.offset_data + m.size} but the tar has "
                                  f"{limit}; expected a complete archive (re-download it)")
            else:
                files.append(m)
    except tarfile.TarError as e:
        raise ImgnetError(f"{where}: not a readable tar ({e}); expected an uncompressed tar archive") from e
    except OSError as e:
        raise os_failure(where, e) from e
    check_tar_end(tf, where, limit)
    return files, skipped


def check_tar_end(tf: tarfile.TarFile, where: str, limit: int | None = None) -> None:
    """A tar ends with two zero blocks: tarfile ends its iteration without a word at a header cut short, at
    a damaged header and at a cut exactly between members, so the bytes where it stopped must be those
    blocks. `limit`: the tar's size (a nested tar: its declared size), None for a stream (read on)."""
    at = tf.offset
    try:
        if limit is not None and at + 2 * tarfile.BLOCKSIZE > limit:
            tail = b"\1"  # cut short: no room for the end blocks
        else:
            tf.fileobj.seek(at)
            tail = tf.fileobj.read(2 * tarfile.BLOCKSIZE)
    except OSError as e:
        raise os_failure(where, e) from e
    if len(tail) != 2 * tarfile.BLOCKSIZE or tail.count(0) != len(tail):
        raise ImgnetError(f"{where}: the tar ends early or is damaged at byte {at} (after {len(tf.members)} "
                          "members, where two zero blocks or the next header should be); expected a complete "
                          "archive (re-download it)")


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:")
    except tarfile.TarError as e:
        raise ImgnetError(f"{path}: not a readable tar ({e}); expected the official uncompressed archive") from e
    except OSError as e:
        raise os_failure(str(path), e) from e


# ---------------------------------------------------------------------------------- enumerators
def _scan(folder) -> list[os.DirEntry]:
    """The entries of a folder; an unreadable folder is an I/O failure that stops the run (skipping it would
    silently lose a class)."""
    try:
        with os.scandir(folder) as it:
            return list(it)
    except OSError as e:
        raise os_failure(f"folder {folder}", e) from e


def _kind(e: os.DirEntry) -> str:
    """"dir", "file" or why the entry is neither (a broken link, a link loop, a device ...)."""
    try:
        if e.is_dir():
            return "dir"
        if e.is_file():
            return "file"
        e.stat()  # follows links: ELOOP, ENOENT for a loop or a dangling link
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "a symbolic link loop"
        if err.errno == errno.ENOENT:
            return "a broken symbolic link"
        raise os_failure(e.path, err) from err
    return "not a regular file nor a folder"


def _dir_split(root: Path) -> _Split:
    """A split folder: class folders (each walked recursively), or flat files when it has no folders."""
    dirs, files, skipped = [], [], []
    for e in _scan(root):
        kind = _kind(e)
        reason = _junk(e.name, kind == "dir")
        if reason:
            skipped.append(_skip(e.path + "/" * (kind == "dir"), reason))
        elif kind == "dir":
            dirs.append(e.name)
        elif kind == "file":
            files.append(e)
        else:
            skipped.append(_skip(e.path, kind))
    if dirs and files:
        raise ImgnetError(f"{root} holds both image files (e.g. {min(e.name for e in files)!r}) and folders "
                          f"(e.g. {min(dirs)!r}); expected either class folders only or images only (a flat val)")
    if files:
        def flat():
            return [(e.name, None, e.path, 0, -1) for e in files], list(skipped)
        return _Split(str(root), None, flat)

    def walk():
        entries, skipped_all = [], list(skipped)
        for cls in dirs:
            top = os.path.join(root, cls)
            stack, seen = [(top, "")], set()
            while stack:  # depth-first; nested folders give names "sub/x.JPEG"
                folder, prefix = stack.pop()
                st = _stat(folder)
                if (st.st_dev, st.st_ino) in seen:  # a link back to a folder above: walked once
                    skipped_all.append(_skip(folder + "/", "a symbolic link loop (a folder already listed)"))
                    continue
                seen.add((st.st_dev, st.st_ino))
                for e in _scan(folder):
                    rel = prefix + e.name
                    kind = _kind(e)
                    reason = _junk(e.name, kind == "dir")
                    if reason:
                        skipped_all.append(_skip(e.path + "/" * (kind == "dir"), reason))
                    elif kind == "dir":
                        stack.append((e.path, rel + "/"))
                    elif kind == "file":
                        entries.append((rel, cls, e.path, 0, -1))
                    else:
                        skipped_all.append(_skip(e.path, kind))
        return entries, skipped_all
    return _Split(str(root), sorted(dirs), walk, "class folders")


def _stat(path: str) -> os.stat_result:
    try:
        return os.stat(path)
    except OSError as e:
        raise os_failure(f"folder {path}", e) from e


_WNID_LIKE = re.compile(r"[nN]\d{8}")


def check_class_names(classes, where: str) -> None:
    """Among wnid class folders, one that looks like a wnid but is not one (other case, a suffix such as
    "n01440764 (copy)") is an error: it would be an extra class and switch the layout to ImageFolder."""
    classes = list(classes)
    if not any(map(is_wnid, classes)):
        return
    odd = sorted(c for c in classes if not is_wnid(c) and _WNID_LIKE.match(c))
    if odd:
        raise ImgnetError(f"{where}: class {odd[0]!r} looks like a wnid but is not one (other case or a suffix: a "
                          f"copy?){f' and {len(odd) - 1} more' if len(odd) > 1 else ''}; expected n + 8 digits "
                          "(e.g. n01440764): rename or remove it")
    # mostly wnids: an ILSVRC layout, where any other class folder ("tmp", a typo "n0144076", "Backup", which
    # sorts first and would shift every index) would be an extra class and a silent switch to ImageFolder
    others = sorted(c for c in classes if not is_wnid(c))
    if others and 2 * (len(classes) - len(others)) > len(classes):
        raise ImgnetError(f"{where}: class folder {others[0]!r} is not a wnid"
                          f"{f' (and {len(others) - 1} more)' if len(others) > 1 else ''}, beside "
                          f"{len(classes) - len(others)} wnid class folders; expected only wnids (n + 8 digits) in an "
                          "ILSVRC layout: move it out of the split folder (or tar)")


def _train_tar_split(path: Path, cache_dir=None) -> _Split:
    """ILSVRC2012_img_train.tar: the outer tar lists the class tars; their members are found at
    outer offset_data + inner offset_data."""
    st = path.stat()
    cache = _listing_file(cache_dir, [path])
    cached = _load_listing(cache, [path])
    if cached is not None:
        return _Split(str(path), cached[0], lambda: (cached[1], list(cached[2])),  # discover sorts `skipped` in place
                      "class tars", locate=_in_class_tar)
    problem = None
    try:
        with _open_tar(path) as tf:
            members, skipped = _tar_files(tf, str(path), st.st_size)
    except ImgnetError as e:  # an incomplete train tar: an error for train only (--split val still works)
        problem, members, skipped = str(e), [], []
    class_tars: dict[str, tarfile.TarInfo] = {}
    for m in members:
        base = m.name.rsplit("/", 1)[-1]
        if base.endswith(".tar") and len(base) > 4:
            if base[:-4] in class_tars:
                raise ImgnetError(f"{path}: class tar {base} is there twice ({class_tars[base[:-4]].name} and "
                                  f"{shown(m.name)}); expected each class once (re-download the archive)")
            class_tars[base[:-4]] = m
        else:
            skipped.append(_skip(f"{path}:{m.name}", "not a class tar (<class>.tar) in the train archive"))

    def entries():
        if problem:
            raise ImgnetError(problem)
        try:
            return _list_class_tars(path, class_tars, skipped, cache)
        except OSError as e:
            raise os_failure(str(path), e) from e
    return _Split(str(path), sorted(class_tars), entries, "class tars", problem=problem, locate=_in_class_tar)


def _in_class_tar(e: tuple) -> str:
    """A train tar member: the class tar (by its name, <class>.tar) between the train tar and the image."""
    return f"{e[2]}:{e[1]}.tar:{e[0]}"


def _list_class_tars(path: Path, class_tars: dict, skipped: list[dict], cache) -> tuple[list[tuple], list[dict]]:
    """The members of each class tar inside the train tar (headers only), cached."""
    out, skipped_all = [], list(skipped)
    p = str(path)
    with open(path, "rb") as f:
        for cls, m in class_tars.items():
            where = f"{path}:{shown(m.name)}"
            try:
                inner_tf = tarfile.open(fileobj=_Window(f, m.offset_data, m.size), mode="r:")
            except tarfile.TarError as e:
                raise ImgnetError(f"{where}: not a readable tar ({e}); expected a tar of one class's images") from e
            except OSError as e:
                raise os_failure(where, e) from e
            with inner_tf:
                inner, sk = _tar_files(inner_tf, where, m.size, at=f"{path}:{cls}.tar")
            skipped_all += sk
            out += [(i.name.removeprefix("./"), cls, p, m.offset_data + i.offset_data, i.size) for i in inner]
    _save_listing(cache, [path], sorted(class_tars), out, skipped_all)
    return out, skipped_all


def _val_tar_split(path: Path, cache_dir=None) -> _Split:
    def entries():
        st = path.stat()
        cache = _listing_file(cache_dir, [path])
        cached = _load_listing(cache, [path])
        if cached is not None:
            return cached[1:]
        with _open_tar(path) as tf:
            members, skipped = _tar_files(tf, str(path), st.st_size)
        p = str(path)
        out = [(m.name.rsplit("/", 1)[-1], None, p, m.offset_data, m.size) for m in members]
        _save_listing(cache, [path], None, out, skipped)
        return out, skipped
    return _Split(str(path), None, entries)


# -------------------------------------------------------------------------------- listing cache
# One .npz per listing (a tar, a split of shards, a part of a zip): names and skipped entries as length-prefixed
# UTF-8 blobs (uint8), each entry's class as an index into `classes` (int32, -1: flat), its file as an index
# into `files` (int32), offsets and sizes in bytes (int64), zip method (int16) and CRC-32 (int64; -1: not a
# zip member). 1.28M entries: ~10 MB.
def _listing_file(cache_dir, files: list[Path], part: str = "") -> Path | None:
    """Where the listing of `files` (as they are now) is cached; None without a cache_dir. The key holds each
    file's absolute path, size and mtime, so that a changed file is listed again."""
    if cache_dir is None:
        return None
    key = "\0".join(f"{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}" for p, st in ((p, p.stat()) for p in files))
    key += f"\0{part}\0{LISTING_VERSION}"
    return Path(cache_dir) / f".listing-{hashlib.sha256(key.encode('utf-8', 'surrogatepass')).hexdigest()}.npz"


def _join(strings) -> np.ndarray:
    """Strings -> one uint8 blob: each string's UTF-8 bytes (surrogateescape: a name's undecodable bytes, as
    os.fsdecode and tarfile give them) after its length as 4 little-endian bytes, so that any name (a newline
    in it too) is split back unchanged."""
    parts = []
    for s in strings:
        b = s.encode("utf-8", "surrogateescape")
        parts += [len(b).to_bytes(4, "little"), b]
    return np.frombuffer(b"".join(parts), np.uint8)


def _split(blob: np.ndarray, n: int) -> list[str]:
    data, strings, i = blob.tobytes(), [], 0
    for _ in range(n):
        k = int.from_bytes(data[i:i + 4], "little")
        if i + 4 + k > len(data):
            raise ValueError("the blob ends inside a string")
        strings.append(data[i + 4:i + 4 + k].decode("utf-8", "surrogateescape"))
        i += 4 + k
    if i != len(data):
        raise ValueError(f"{len(data) - i} bytes after {n} strings")
    return strings


def _save_listing(file: Path | None, files: list[Path], classes: list[str] | None, entries: list[tuple],
                  skipped: list[dict]) -> None:
    """Write the listing atomically (tmp + rename); best effort: a listing that cannot be written (full disk,
    a name with a newline) is only rescanned next time."""
    if file is None:
        return
    index = {c: i for i, c in enumerate(classes or ())}
    paths = [str(p) for p in files]
    file_id = {p: i for i, p in enumerate(paths)}
    tmp = file.with_name(f"{file.name}.{os.getpid()}.tmp")
    try:
        arrays = {
            "classes": _join(classes or ()), "names": _join(e[0] for e in entries), "files": _join(paths),
            "labels": np.array([-1 if e[1] is None else index[e[1]] for e in entries], np.int32),
            "file_ids": np.array([file_id[e[2]] for e in entries], np.int32),
            "offsets": np.array([e[3] for e in entries], np.int64), "sizes": np.array([e[4] for e in entries], np.int64),
            "methods": np.array([e[5] if len(e) > 5 else -1 for e in entries], np.int16),
            "crcs": np.array([e[6] if len(e) > 6 else -1 for e in entries], np.int64),
            "skipped_names": _join(s["name"] for s in skipped), "skipped_reasons": _join(s["reason"] for s in skipped)}
        head = {"version": LISTING_VERSION, "files": [os.path.abspath(p) for p in paths], "flat": classes is None,
                "counts": [len(classes or ()), len(entries), len(skipped)]}
        arrays["head"] = np.frombuffer(json.dumps(head).encode("utf-8", "surrogatepass"), np.uint8)
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.replace(tmp, file)
    except (OSError, ValueError, KeyError):
        tmp.unlink(missing_ok=True)


def _load_listing(file: Path | None, files: list[Path]) -> tuple[list[str] | None, list[tuple], list[dict]] | None:
    """(classes, entries, skipped) as the scan gave them, or None when `file` is absent or unreadable."""
    if file is None or not file.is_file():
        return None
    try:
        with np.load(file, allow_pickle=False) as z:
            head = json.loads(z["head"].tobytes().decode("utf-8", "surrogatepass"))
            n_classes, n, n_skipped = head["counts"]
            if head["version"] != LISTING_VERSION or head["files"] != [os.path.abspath(p) for p in files]:
                return None
            classes = _split(z["classes"], n_classes)
            names = _split(z["names"], n)
            labels, ids, offsets, sizes, methods, crcs = (z[k] for k in ("labels", "file_ids", "offsets", "sizes",
                                                                        "methods", "crcs"))
            if not (labels.dtype == ids.dtype == np.int32 and offsets.dtype == sizes.dtype == crcs.dtype == np.int64
                    and len(labels) == len(ids) == len(offsets) == len(sizes) == len(methods) == len(crcs) == n
                    and (n == 0 or (labels.min() >= -1 and labels.max() < n_classes
                                    and ids.min() >= 0 and ids.max() < len(files)))):
                return None
            lookup = [*classes, None]  # label -1 (flat) -> None
            skipped = [_skip(a, b) for a, b in zip(_split(z["skipped_names"], n_skipped),
                                                   _split(z["skipped_reasons"], n_skipped))]
    except Exception:  # noqa: BLE001 - a damaged cache (truncated, overwritten, another format) is only rescanned
        return None
    paths = [str(p) for p in files]
    entries = list(zip(names, [lookup[i] for i in labels.tolist()], [paths[i] for i in ids.tolist()],
                       offsets.tolist(), sizes.tolist(), methods.tolist(), crcs.tolist()))
    return (None if head["flat"] else classes), entries, skipped


def _cached_parts(cache_dir, files: list[Path], parts: list[str], scan: Callable[[], dict]) -> dict:
    """{part: (classes, entries, skipped)} from the cached listings of `files`, or from `scan()` (then cached)."""
    caches = {p: _listing_file(cache_dir, files, p) for p in parts}
    loaded = {p: _load_listing(caches[p], files) for p in parts}
    if all(v is not None for v in loaded.values()):
        return loaded
    scanned = scan()
    for p in parts:
        _save_listing(caches[p], files, *scanned[p])
    return scanned


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
            return _Devkit(str(d), lambda rel, d=d: _reader(d / rel, f"the devkit's {rel}")()
                           if (d / rel).exists() else None)
    tgz = src / DEVKIT_TGZ
    if tgz.exists():
        return _Devkit(str(tgz), _read_devkit_tgz(tgz).get)
    return None


def _read_devkit_tgz(tgz: Path) -> dict[str, bytes]:
    """meta.mat and the ground truth from the devkit .tar.gz (2.5 MB): the gzip stream is read to its end so
    that its CRC and length are checked (a flipped bit is an error), and the tar must end with its end blocks."""
    wanted, found = (META, GROUND_TRUTH), {}
    try:
        raw = _gunzip(_reader(tgz, "the ILSVRC2012 devkit (2.5 MB)")(), MAX_SMALL_FILE_BYTES, str(tgz))
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tf:
            for m in tf:
                rel = next((w for w in wanted if m.name == w or m.name.endswith("/" + w)), None)
                if rel and m.isreg():
                    found[rel] = tf.extractfile(m).read()
            check_tar_end(tf, str(tgz), len(raw))
    except OSError as e:
        if isinstance(e, gzip.BadGzipFile) or e.errno is None:
            raise ImgnetError(f"{tgz}: not a readable .tar.gz ({e}); expected the official ILSVRC2012 devkit "
                              "(re-download it)") from e
        raise os_failure(str(tgz), e) from e
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise ImgnetError(f"{tgz}: not a readable .tar.gz ({type(e).__name__}: {e}); expected the official "
                          "ILSVRC2012 devkit (re-download it)") from e
    return found


def _reader(path: Path, what: str) -> Callable[[], bytes]:
    """() -> the bytes of a small file of SRC (labels, devkit), read bounded: a link to /dev/zero or a FIFO, or a
    file over MAX_SMALL_FILE_BYTES, is a one-line error instead of a hang or a MemoryError."""
    from imagenet_prep.atomic import read_bounded

    def read() -> bytes:
        try:
            return read_bounded(path, MAX_SMALL_FILE_BYTES, what)
        except FileNotFoundError as e:
            raise os_failure(str(path), e) from e
    return read


def _gunzip(data: bytes, limit: int, where: str) -> bytes:
    """Every member of a gzip file inflated, each checked against its CRC-32 and length (zlib checks the trailer),
    refused when they inflate past `limit` (a crafted file); zero padding after the last member is allowed."""
    out = b""
    while data.strip(b"\0"):
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out += d.decompress(data, limit + 1 - len(out))
        if d.unconsumed_tail or len(out) > limit:
            raise ImgnetError(f"{where} inflates to more than {limit:,} bytes; expected the ILSVRC2012 devkit "
                              "(about 15 MB)")
        out += d.flush()
        if not d.eof:
            raise EOFError("the gzip stream ends early")
        data = d.unused_data
    return out


class _Truth:
    """The labels of a flat val: `wnid(name)` gives an image's class, `wnids` is the class list, `origin` the file.

    By number (the devkit's ground truth, shipped or found): ILSVRC2012_val_%08d.JPEG takes line n. By name (a
    Kaggle CSV, a --val-labels file): the image's name, or its stem, is looked up."""

    def __init__(self, origin: str, wnids: list[str], by_number: list[str] | None = None,
                 by_name: dict[str, str] | None = None):
        self.origin, self.wnids, self.by_number, self.by_name = origin, wnids, by_number, by_name

    def wnid(self, name: str) -> str:
        if self.by_name is not None:
            wnid = self.by_name.get(name) or self.by_name.get(name.rsplit(".", 1)[0])
            if wnid is None:
                raise ImgnetError(f"val image {name!r} has no row {name.rsplit('.', 1)[0]!r} in {self.origin}; "
                                  "expected every val image listed there")
            return wnid
        m = VAL_NAME.fullmatch(name)
        if not m:
            raise ImgnetError(f"val image {name!r} does not match ILSVRC2012_val_%08d.JPEG; expected the "
                              f"official val file names, whose number is their line in {self.origin}")
        n = int(m[1])
        if not 1 <= n <= len(self.by_number):
            raise ImgnetError(f"val image {name} has number {n}, past the end of {self.origin} "
                              f"({len(self.by_number)} lines); expected numbers 1 to {len(self.by_number)}")
        return self.by_number[n - 1]


def _shipped_truth() -> _Truth:
    return _Truth(f"imagenet_prep/data/{GROUND_TRUTH_FILE} (shipped)", sorted(c["wnid"] for c in load_class_meta().classes),
                  by_number=load_val_ground_truth())


def _disagree(origin: str, name: str, wnid: str, official: str, shipped: _Truth) -> ImgnetError:
    return ImgnetError(f"{origin} labels {name} as {wnid}, but the ILSVRC2012 ground truth ({shipped.origin}) "
                       f"has {official}; expected the official labels (pass --val-labels FILE to use others on purpose)")


def _check_item(name: str, wnid: str, shipped: _Truth, origin: str) -> None:
    """An official val image labelled by its source (class folder, shard) must have its official class."""
    m = VAL_NAME.fullmatch(name)
    if m and 1 <= int(m[1]) <= len(shipped.by_number) and is_wnid(wnid):
        official = shipped.by_number[int(m[1]) - 1]
        if official != wnid:
            raise _disagree(origin, name, wnid, official, shipped)


def _check_truth(truth: _Truth, shipped: _Truth) -> _Truth:
    """A devkit's or a Kaggle CSV's labels must be the shipped ones wherever both label an image."""
    if truth.by_number is not None:
        if len(truth.by_number) != len(shipped.by_number):
            raise ImgnetError(f"{truth.origin} has {len(truth.by_number)} lines; expected the {len(shipped.by_number)} "
                              f"of the ILSVRC2012 ground truth ({shipped.origin})")
        for n, (w, official) in enumerate(zip(truth.by_number, shipped.by_number), start=1):
            if w != official:
                raise _disagree(f"{truth.origin} (line {n})", f"ILSVRC2012_val_{n:08d}.JPEG", w, official, shipped)
    else:
        for key, w in truth.by_name.items():
            _check_item(key if key.endswith(".JPEG") else f"{key}.JPEG", w, shipped, truth.origin)
    return truth


def _csv_truth(data: bytes, origin: str, synsets: bytes | None) -> _Truth:
    """Kaggle LOC_val_solution.csv: ImageId (file name without extension) -> first token of PredictionString;
    the classes are LOC_synset_mapping.txt's (else the 1000 of the shipped metadata)."""
    text = data.decode("utf-8-sig", "replace")  # -sig: a byte-order mark that a spreadsheet saved in front
    rows = csv.reader(io.StringIO(text, newline=""))
    header = next(rows, None)
    if [h.strip() for h in header or ()] != ["ImageId", "PredictionString"]:
        raise ImgnetError(f"{origin} line 1 is {header!r}; expected the header ImageId,PredictionString of "
                          "Kaggle's LOC_val_solution.csv")
    by_name = {}
    for row in rows:
        if not row or not "".join(row).strip():  # blank lines (at the end, or a spreadsheet's)
            continue
        if len(row) != 2 or not row[0].strip() or not is_wnid(row[1].strip().split(" ", 1)[0]):
            raise ImgnetError(f"{origin} line {rows.line_num}: {row!r}; expected ImageId,<wnid> x0 y0 x1 y1 ...")
        by_name[row[0].strip()] = row[1].strip().split(" ", 1)[0]
    if synsets is not None:
        wnids = [ln.split(" ", 1)[0] for ln in synsets.decode("utf-8", "replace").splitlines() if ln.strip()]
    else:
        wnids = [c["wnid"] for c in load_class_meta().classes]
    return _Truth(origin, wnids, by_name=by_name)


def _devkit_truth(devkit: _Devkit, meta: ClassMeta) -> _Truth:
    origin = f"{devkit.where}/{GROUND_TRUTH}"
    data = devkit.read(GROUND_TRUTH)
    if data is None:
        raise ImgnetError(f"{devkit.where} has no {GROUND_TRUTH}; expected the ILSVRC2012 devkit, whose "
                          "ground truth labels the flat val")
    return _Truth(origin, [c["wnid"] for c in meta.classes], by_number=parse_ground_truth(data, meta, origin))


def _find_truth(kaggle: dict, devkit: _Devkit | None, meta: ClassMeta, prefer_csv: bool,
                val_labels, shipped: _Truth) -> _Truth:
    """The labels of a flat val: a --val-labels file; else the Kaggle CSV (preferred in the Kaggle layouts) or the
    devkit, each checked against the shipped ground truth; else the shipped ground truth itself."""
    if val_labels is not None:
        return _Truth(f"--val-labels {val_labels}", shipped.wnids, by_name=read_val_labels(val_labels, shipped.wnids))
    csv_file = kaggle.get(KAGGLE_VAL)
    if csv_file and (prefer_csv or devkit is None):
        synsets = kaggle.get(KAGGLE_SYNSETS)
        return _check_truth(_csv_truth(csv_file[1](), csv_file[0], synsets[1]() if synsets else None), shipped)
    if devkit is not None:
        return _check_truth(_devkit_truth(devkit, meta), shipped)
    return shipped


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


def _list_shards(src: Path, split: str, paths: list[Path], wnids: list[str], expected: dict[str, int]) -> tuple:
    """(classes, entries, skipped) of one split's shards: every tar header, and each sample's .cls and .json."""
    entries, skipped = [], []
    for p in tqdm(paths, desc=f"list {split} shards", unit="shard", disable=None, leave=False):
        with _open_tar(p) as tf:
            members, sk = _tar_files(tf, str(p), p.stat().st_size)
        skipped += sk
        entries += wds.list_shard(p, members, wnids, expected.get(p.name))
    names = Counter(e[0] for e in entries)
    if len(names) != len(entries):
        dup = next(n for n, k in names.items() if k > 1)
        raise ImgnetError(f"{src}: {shown(dup)} is a sample of two {split} shards (or twice in one); expected each image "
                          "once (shards of two downloads mixed?)")
    return wnids, entries, skipped


def _in_shard(e: tuple) -> str:
    """A webdataset sample: the shard and the sample key (the original stem)."""
    return f"{e[2]}:{e[0].rsplit('.', 1)[0]}"


def _wds_splits(src: Path, shards: dict[str, list[Path]], cache_dir) -> dict[str, _Split]:
    """timm's imagenet-1k-wds shards: each split's listing (all its shards) is cached as one."""
    info = wds.read_info(src)
    wnids = sorted(c["wnid"] for c in load_class_meta().classes)  # .cls is a sorted-wnid index of the 1000
    splits = {}
    for split, paths in shards.items():
        expected = wds.expected_lengths(src, info, split, paths)

        def entries(split=split, paths=paths, expected=expected):
            part = f"wds-{split}"
            listed = _cached_parts(cache_dir, paths, [part],
                                   lambda: {part: _list_shards(src, split, paths, wnids, expected)})[part]
            return listed[1], list(listed[2])
        where = f"{src}/imagenet1k-{'train' if split == 'train' else 'validation'}-*.tar ({len(paths)} shards)"
        splits[split] = _Split(where, wnids, entries, "the shards' .cls", relabel=split == "val", locate=_in_shard)
    return splits


def _zip_splits(path: Path, cache_dir) -> tuple[dict[str, _Split], dict]:
    """Kaggle's zip: its central directory parsed once (cached), train and val and the two label files."""
    try:
        parts = _cached_parts(cache_dir, [path], ["train", "val", "labels"], lambda: kaggle_zip.list_zip(path, _junk))
    except OSError as e:
        raise os_failure(str(path), e) from e
    splits = {}
    (classes, train, skipped_t), (_, val, skipped_v) = parts["train"], parts["val"]
    if train or classes:
        splits["train"] = _Split(f"{path}:{kaggle_zip.CLS_LOC}train", classes, lambda: (train, list(skipped_t)),
                                 "class folders", locate=kaggle_zip.member_of("train"))
    if val:
        splits["val"] = _Split(f"{path}:{kaggle_zip.CLS_LOC}val", None, lambda: (val, list(skipped_v)),
                               locate=kaggle_zip.member_of("val"))
    def reader(item: Item):
        def read() -> bytes:
            from imagenet_prep.resize import BadImage

            try:
                return read_item(item)
            except BadImage as e:
                raise ImgnetError(f"{path}: {shown(item.name)}: {e}; expected an intact Kaggle zip") from e
            except OSError as e:
                raise os_failure(f"{item.name} in {path}", e) from e
        return read
    files = {e[0]: (f"{path}:{e[0]}", reader(Item(e[0], -1, *e[2:]))) for e in parts["labels"][1]}
    return splits, files


def _detect(src: Path, cache_dir=None) -> tuple[str, dict[str, _Split], dict]:
    """(layout, splits, Kaggle label files {name: (origin, () -> bytes)})."""
    from imagenet_prep import hf  # Hugging Face downloads: parquet or the script-era tar.gz shards

    if (found := hf.detect(src, cache_dir)) is not None:
        return (*found, {})
    files = {n: (str(src / n), _reader(src / n, f"Kaggle's {n}")) for n in (KAGGLE_SYNSETS, KAGGLE_VAL)
             if (src / n).exists()}
    kaggle = src / KAGGLE_ROOT
    if kaggle.is_dir():
        return "kaggle", {s: _dir_split(kaggle / s) for s in SPLITS if (kaggle / s).is_dir()}, files
    if (src / TRAIN_TAR).is_file() or (src / VAL_TAR).is_file():
        splits = {}
        for s, tar, make in (("train", TRAIN_TAR, _train_tar_split), ("val", VAL_TAR, _val_tar_split)):
            if (src / tar).is_file():
                splits[s] = make(src / tar, cache_dir)
            elif (src / s).is_dir():  # one archive kept, the other already extracted
                splits[s] = _dir_split(src / s)
        return "archives", splits, files
    shards = wds.find_shards(src)
    if shards:
        return "timm-wds", _wds_splits(src, shards, cache_dir), files
    if (src / kaggle_zip.ZIP_NAME).is_file():
        splits, inside = _zip_splits(src / kaggle_zip.ZIP_NAME, cache_dir)
        if not splits:
            raise ImgnetError(f"{src / kaggle_zip.ZIP_NAME} holds no {kaggle_zip.CLS_LOC}train/ nor val/ images; "
                              "expected Kaggle's imagenet-object-localization-challenge.zip")
        return "kaggle-zip", splits, {**files, **inside}
    splits = {s: _dir_split(src / s) for s in SPLITS if (src / s).is_dir()}
    if not splits:
        raise ImgnetError(_layout_help(src))
    names = {c for sp in splits.values() for c in sp.classes or ()}
    return "extracted" if all(map(is_wnid, names)) else "imagefolder", splits, files


def _first_per_class(items: list[Item], n: int) -> list[Item]:
    count: dict[int, int] = {}
    kept = []
    for i in items:
        count[i.label] = count.get(i.label, 0) + 1
        if count[i.label] <= n:
            kept.append(i)
    return kept


def discover(src, label_order: str = "sorted", classes: int | None = None, per_class: int | None = None,
             splits=None, cache_dir=None, val_labels=None) -> Source:
    """Find the layout of `src` and list its images (see _discover). An OSError while listing (EIO, EACCES,
    ESTALE on a file or folder) is an I/O failure: a one-line error naming the file and errno."""
    try:
        return _discover(src, label_order, classes, per_class, splits, cache_dir, val_labels)
    except OSError as e:
        raise os_failure(os.fsdecode(e.filename) if e.filename else str(src), e) from e


def _discover(src, label_order: str = "sorted", classes: int | None = None, per_class: int | None = None,
              splits=None, cache_dir=None, val_labels=None) -> Source:
    """Find the layout of `src` and list its images.

    label_order "sorted" | "devkit"; `classes=N` keeps the first N classes in label order (renumbered from 0);
    `per_class=N` the first N names of each class in each split; `splits` limits the listing to those splits
    (default: every split found). The classes depend on the whole source, whatever `splits` is, so that
    every run over the same source gets the same label map (see the module docstring). `cache_dir`: a writable
    folder where the listings of the archives, shards and zip are kept for the next run over the same files.
    `val_labels`: a file of `<name> <index or wnid>` lines that labels a flat val (or the val shards) instead
    of the ground truth."""
    src = Path(os.path.abspath(src))  # item paths and the names in reports are found under it (Source.locate)
    if not src.is_dir():
        raise ImgnetError(f"source {src} is not a folder; expected the folder holding the ILSVRC2012 download")
    if per_class is not None and (not isinstance(per_class, int) or isinstance(per_class, bool) or per_class < 1):
        raise ImgnetError(f"per_class={per_class!r}; expected a positive number of images per class")
    layout, found, kaggle = _detect(src, cache_dir)
    check_class_names({c for sp in found.values() for c in sp.classes or ()}, str(src))
    wanted = list(found) if splits is None else list(splits)
    for s in wanted:
        if s not in SPLITS:
            raise ImgnetError(f"split {s!r} is not supported; expected one of {', '.join(SPLITS)}")
        if s not in found:
            raise ImgnetError(f"{src} ({layout} layout) has no {s} split; it has {', '.join(found) or 'none'}")
    for s, sp in found.items():  # an incomplete split not asked for matters only where its classes count
        if sp.problem and (s in wanted or all(x.classes is not None for x in found.values())):
            raise ImgnetError(sp.problem)
    if "train" in found and found["train"].classes is None:
        raise ImgnetError(f"{found['train'].where} holds images but no class folders; expected train/<class>/ folders")
    val = found.get("val")
    if val_labels is not None and val is not None and val.classes is not None and not val.relabel:
        raise ImgnetError(f"--val-labels {val_labels} labels a flat val, but {val.where} is sorted into class folders, "
                          "which label it; expected a flat val (or leave out --val-labels)")

    devkit = _find_devkit(src)
    meta = devkit.meta() if devkit else load_class_meta()
    origin = {"class_metadata": meta.origin}

    shipped = _shipped_truth()
    names = sorted({c for sp in found.values() for c in sp.classes or ()})
    flat = [sp.where for sp in found.values() if sp.classes is None]
    relabel = val is not None and val.relabel and val_labels is not None
    truth = None
    if flat or relabel:
        truth = _find_truth(kaggle, devkit, meta, layout.startswith("kaggle"), val_labels, shipped)
    if flat:  # the ground truth's classes, so that a subset of class folders keeps the standard indices
        extra = sorted(set(names) - set(truth.wnids))
        if extra:
            raise ImgnetError(f"class folders {', '.join(map(repr, extra[:5]))} are not among the "
                              f"{len(truth.wnids)} classes of {truth.origin}, which labels {flat[0]}; expected "
                              "ILSVRC2012 wnids as class folders, or val/<class>/ folders instead of a flat val")
        names = truth.wnids
    label_map = build_label_map(names, order=label_order, classes=classes, meta=meta)

    items, skipped, differs = {}, {}, {}
    for s in wanted:
        sp = found[s]
        entries, skipped[s] = sp.entries()
        if sp.classes is None or (s == "val" and relabel):
            origin[s] = f"{sp.where} (labels: {truth.origin})"
            entries = _label_flat(entries, truth, label_map, skipped[s], sp.locate)
        else:
            origin[s] = f"{sp.where} (labels: {sp.labelled_by})"
            if s == "val":  # official val images in class folders or shards keep their official classes
                for e in entries:
                    _check_item(e[0], e[1], shipped, sp.where if sp.relabel else f"{sp.where}/{e[1]}")
        its = [Item(e[0], label_map.index_of(e[1]), *e[2:]) for e in entries if label_map.index_of(e[1]) is not None]
        its.sort(key=(lambda i: (i.label, i.name)) if s == "train" else (lambda i: (i.name, i.label)))
        if per_class is not None:
            its = _first_per_class(its, per_class)
        items[s] = its
        skipped[s] = sorted((_skip(relative(src, d["name"]), d["reason"]) for d in skipped[s]), key=lambda d: d["name"])
    source = Source(src, layout, label_map, items, skipped, origin, differs, {s: found[s].locate for s in wanted})
    if layout == "timm-wds":
        for s in wanted:
            differs[s] = [{"name": source.locate(s, i), "reason": "re-encoded in the shards (the official file is a "
                           "CMYK JPEG or a PNG); its pixels match within the image policy's tolerance"}
                          for i in items[s] if i.name.rsplit(".", 1)[0] in wds.REENCODED]
    return source


def _label_flat(entries: list[tuple], truth: _Truth, label_map: LabelMap, skipped: list[dict],
                locate: Callable[[tuple], str]) -> list[tuple]:
    """Entries labelled by the ground truth; an image whose class the source lacks is skipped (with the reason)."""
    labelled = []
    for e in entries:
        wnid = truth.wnid(e[0])
        if wnid in label_map:
            labelled.append((e[0], wnid, *e[2:]))
        else:
            skipped.append(_skip(locate(e), f"its class {wnid} (from {truth.origin}) is not among the "
                                       f"{len(label_map.all_names)} classes of the source"))
    return labelled

"""Caffe's list files (what `convert_imageset` takes): SRC holds train.txt and/or val.txt with lines
`<relpath> <label>` (the path relative to SRC, the label an integer), and synset_words.txt or synsets.txt
beside them, whose line k is the class of label k (Caffe's ilsvrc12 files: the wnids in sorted order).

A record is named by the file name of its path (n01440764/n01440764_10026.JPEG -> n01440764_10026.JPEG) and
labelled by the class of its label, so that the same images give the records of the extracted layout; the
classes are those of the synsets file. A val listed here labels itself, as class folders do (official val
names must keep their official class; --val-labels relabels it). A malformed line is an error naming the
file and the line; a listed file that is missing or is no regular file is skipped with the reason, as the
extracted layout skips a broken link.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from imagenet_prep.errors import ImgnetError
from imagenet_prep.sources.base import Entry, Layout, ListedSplit, Listing, junk, os_failure, shown, skip, small_file_reader

LISTS = {"train": "train.txt", "val": "val.txt"}
SYNSET_FILES = ("synset_words.txt", "synsets.txt")


def _lines(path: Path, what: str) -> list[str]:
    """The lines of a small text file of SRC (UTF-8; undecodable bytes kept as os.fsdecode keeps them)."""
    return small_file_reader(path, what)().decode("utf-8", "surrogateescape").splitlines()


def read_synsets(src: Path) -> tuple[Path, list[str]]:
    """(the synsets file, its classes in label order): the first word of each line, each class once."""
    path = next(src / n for n in SYNSET_FILES if (src / n).is_file())
    classes: dict[str, int] = {}
    for n, line in enumerate(_lines(path, "Caffe's synsets file (line k: the class of label k)"), start=1):
        cls = line.split(maxsplit=1)[0] if line.strip() else ""
        if not cls or cls in classes:
            raise ImgnetError(f"{path} line {n} is {line.strip()!r}; expected one class per line, each once"
                              f"{f' ({cls} is line {classes[cls] + 1} already)' if cls in classes else ''}")
        classes[cls] = len(classes)
    if not classes:
        raise ImgnetError(f"{path} holds no classes; expected one class (wnid) per line, line k naming label k")
    return path, list(classes)


def _parse(line: str, n: int, where: Path, classes: list[str]) -> tuple[str, str]:
    """(relative path, class) of one `<relpath> <label>` line; a one-line error naming the file and line."""
    rel, _, label = line.rstrip().rpartition(" ")  # the label follows the last space, as convert_imageset reads it
    expected = f"expected '<path relative to {where.parent}> <label>' with a label from 0 to {len(classes) - 1}"
    if not rel.strip():
        raise ImgnetError(f"{where} line {n} is {shown(line.strip())}: no label; {expected}")
    if not (label.isascii() and label.isdigit()):
        raise ImgnetError(f"{where} line {n}: label {shown(label)} is not an integer; {expected}")
    if int(label) >= len(classes):
        raise ImgnetError(f"{where} line {n}: label {int(label)} is past the {len(classes)} classes of the synsets "
                          f"file; {expected}")
    parts = rel.replace("\\", "/").split("/")
    if rel.startswith("/") or ".." in parts or not parts[-1]:
        raise ImgnetError(f"{where} line {n}: path {shown(rel)} is not a file inside {where.parent}; {expected}")
    return "/".join(p for p in parts if p not in ("", ".")), classes[int(label)]


def _why_not(path: str, rel: str) -> str | None:
    """Why the listed file is not an image candidate (junk, missing, not a regular file), or None."""
    parts = rel.split("/")
    reason = next((r for i, p in enumerate(parts) if (r := junk(p, i < len(parts) - 1))), None)
    if reason:
        return reason
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a symbolic link loop"
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return "a broken symbolic link" if os.path.lexists(path) else "listed but not found"
        raise os_failure(path, e) from e
    return None if stat.S_ISREG(mode) else "not a regular file"


def _list(src: Path, list_file: Path, classes: list[str]) -> tuple[list[Entry], list[dict]]:
    """The entries of one list file, in its order, and the files skipped."""
    entries, skipped, seen = [], [], {}
    for n, line in enumerate(_lines(list_file, "a Caffe list file ('<relpath> <label>' lines)"), start=1):
        if not line.strip():
            continue
        rel, cls = _parse(line, n, list_file, classes)
        name = rel.rsplit("/", 1)[-1]
        if (cls, name) in seen:
            raise ImgnetError(f"{list_file} line {n}: {shown(name)} of class {cls} is line {seen[cls, name]} already; "
                              "expected each image once")
        seen[cls, name] = n
        path = os.path.join(src, rel)
        reason = _why_not(path, rel)
        if reason:
            skipped.append(skip(path, reason))
        else:
            entries.append(Entry(name, cls, path, 0, -1))
    return entries, skipped


class CaffeLists(Layout):
    name = "caffe"
    description = ("Caffe list files (train.txt and/or val.txt of '<relpath> <label>' lines, with synset_words.txt "
                   "or synsets.txt naming label k on line k)")

    def detect(self, src: Path) -> bool:
        return any((src / f).is_file() for f in LISTS.values()) and any((src / f).is_file() for f in SYNSET_FILES)

    def list(self, src: Path, cache_dir=None) -> Listing:
        synsets, classes = read_synsets(src)
        splits = {}
        for split, file in LISTS.items():
            if (src / file).is_file():
                splits[split] = ListedSplit(str(src / file), classes, lambda f=src / file: _list(src, f, classes),
                                            f"{file} ({synsets.name})", relabel=split == "val")
        return Listing(splits)


LAYOUT = CaffeLists()

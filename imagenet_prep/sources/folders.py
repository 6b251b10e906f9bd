"""Image folders read in place: a split folder of class folders (each walked recursively) or of flat
files, as the extracted, Kaggle and ImageFolder layouts (and an archive layout's extracted split) hold them."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from imagenet_prep.errors import ImgnetError
from imagenet_prep.labels import is_wnid
from imagenet_prep.sources.base import Entry, ListedSplit, junk, os_failure, skip

_WNID_LIKE = re.compile(r"[nN]\d{8}")


def scan(folder) -> list[os.DirEntry]:
    """The entries of a folder; an unreadable folder is an I/O failure that stops the run (skipping it would
    silently lose a class)."""
    try:
        with os.scandir(folder) as it:
            return list(it)
    except OSError as e:
        raise os_failure(f"folder {folder}", e) from e


def kind(e: os.DirEntry) -> str:
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


def _sort_entries(folder, skipped: list[dict]) -> tuple[list[os.DirEntry], list[os.DirEntry]]:
    """(folders, files) of `folder`; junk and what is neither go to `skipped`."""
    dirs, files = [], []
    for e in scan(folder):
        k = kind(e)
        reason = junk(e.name, k == "dir")
        if reason:
            skipped.append(skip(e.path + "/" * (k == "dir"), reason))
        elif k == "dir":
            dirs.append(e)
        elif k == "file":
            files.append(e)
        else:
            skipped.append(skip(e.path, k))
    return dirs, files


def dir_split(root: Path) -> ListedSplit:
    """A split folder: class folders (each walked recursively), or flat files when it has no folders."""
    skipped: list[dict] = []
    dir_entries, files = _sort_entries(root, skipped)
    dirs = [e.name for e in dir_entries]
    if dirs and files:
        raise ImgnetError(f"{root} holds both image files (e.g. {min(e.name for e in files)!r}) and folders "
                          f"(e.g. {min(dirs)!r}); expected either class folders only or images only (a flat val)")
    if files:
        def flat():
            return [Entry(e.name, None, e.path, 0, -1) for e in files], list(skipped)
        return ListedSplit(str(root), None, flat)

    def walk():
        entries, skipped_all = [], list(skipped)
        for cls in dirs:
            entries += _walk_class(os.path.join(root, cls), cls, skipped_all)
        return entries, skipped_all
    return ListedSplit(str(root), sorted(dirs), walk, "class folders")


def _walk_class(top: str, cls: str, skipped: list[dict]) -> list[Entry]:
    """The images under one class folder, depth-first; nested folders give names "sub/x.JPEG"."""
    entries, stack, seen = [], [(top, "")], set()
    while stack:
        folder, prefix = stack.pop()
        st = _stat(folder)
        if (st.st_dev, st.st_ino) in seen:  # a link back to a folder above: walked once
            skipped.append(skip(folder + "/", "a symbolic link loop (a folder already listed)"))
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs, files = _sort_entries(folder, skipped)
        stack += [(e.path, prefix + e.name + "/") for e in dirs]
        entries += [Entry(prefix + e.name, cls, e.path, 0, -1) for e in files]
    return entries


def _stat(path: str) -> os.stat_result:
    try:
        return os.stat(path)
    except OSError as e:
        raise os_failure(f"folder {path}", e) from e


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


def split_folders(src: Path) -> dict[str, ListedSplit]:
    """{split: dir_split} of SRC's train/ and val/ folders."""
    return {s: dir_split(src / s) for s in ("train", "val") if (src / s).is_dir()}


def folder_classes(splits: dict[str, ListedSplit]) -> set[str]:
    """Every class folder name of the splits."""
    return {c for sp in splits.values() for c in sp.classes or ()}

"""The official archives, read in place: ILSVRC2012_img_train.tar (a tar of <wnid>.tar), ILSVRC2012_img_val.tar
(flat) and ILSVRC2012_devkit_t12.tar.gz for the val labels; a split whose archive is absent may be an extracted
folder beside the other archive. A member of a class tar is found at the outer offset_data + the inner one."""

from __future__ import annotations

import tarfile
from pathlib import Path

from imagenet_prep.errors import ImgnetError
from imagenet_prep.sources.base import Entry, Layout, ListedSplit, Listing, os_failure, shown, skip
from imagenet_prep.sources.cache import listing_file, load_listing, save_listing
from imagenet_prep.sources.folders import dir_split
from imagenet_prep.sources.tarscan import Window, list_tar, tar_files

TRAIN_TAR, VAL_TAR = "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"


def _in_class_tar(e: Entry) -> str:
    """A train tar member: the class tar (by its name, <class>.tar) between the train tar and the image."""
    return f"{e.path}:{e.cls}.tar:{e.name}"


def _class_tars(path: Path, members: list[tarfile.TarInfo], skipped: list[dict]) -> dict[str, tarfile.TarInfo]:
    """{class: member} of the outer train tar's <class>.tar members; anything else is skipped."""
    class_tars: dict[str, tarfile.TarInfo] = {}
    for m in members:
        base = m.name.rsplit("/", 1)[-1]
        if base.endswith(".tar") and len(base) > 4:
            if base[:-4] in class_tars:
                raise ImgnetError(f"{path}: class tar {base} is there twice ({class_tars[base[:-4]].name} and "
                                  f"{shown(m.name)}); expected each class once (re-download the archive)")
            class_tars[base[:-4]] = m
        else:
            skipped.append(skip(f"{path}:{m.name}", "not a class tar (<class>.tar) in the train archive"))
    return class_tars


def train_tar_split(path: Path, cache_dir=None) -> ListedSplit:
    """ILSVRC2012_img_train.tar: the outer tar lists the class tars; their members are listed on demand."""
    cache = listing_file(cache_dir, [path])
    cached = load_listing(cache, [path])
    if cached is not None:
        return ListedSplit(str(path), cached[0], lambda: (cached[1], list(cached[2])),  # discover sorts `skipped`
                           "class tars", locate=_in_class_tar)
    problem = None
    try:
        members, skipped = list_tar(path)
    except ImgnetError as e:  # an incomplete train tar: an error for train only (--split val still works)
        problem, members, skipped = str(e), [], []
    class_tars = _class_tars(path, members, skipped)

    def entries():
        if problem:
            raise ImgnetError(problem)
        try:
            return _list_class_tars(path, class_tars, skipped, cache)
        except OSError as e:
            raise os_failure(str(path), e) from e
    return ListedSplit(str(path), sorted(class_tars), entries, "class tars", problem=problem, locate=_in_class_tar)


def _list_class_tars(path: Path, class_tars: dict, skipped: list[dict], cache) -> tuple[list[Entry], list[dict]]:
    """The members of each class tar inside the train tar (headers only), cached."""
    out, skipped_all = [], list(skipped)
    p = str(path)
    with open(path, "rb") as f:
        for cls, m in class_tars.items():
            where = f"{path}:{shown(m.name)}"
            try:
                inner_tf = tarfile.open(fileobj=Window(f, m.offset_data, m.size), mode="r:")
            except tarfile.TarError as e:
                raise ImgnetError(f"{where}: not a readable tar ({e}); expected a tar of one class's images") from e
            except OSError as e:
                raise os_failure(where, e) from e
            with inner_tf:
                inner, sk = tar_files(inner_tf, where, m.size, at=f"{path}:{cls}.tar")
            skipped_all += sk
            out += [Entry(i.name.removeprefix("./"), cls, p, m.offset_data + i.offset_data, i.size) for i in inner]
    save_listing(cache, [path], sorted(class_tars), out, skipped_all)
    return out, skipped_all


def val_tar_split(path: Path, cache_dir=None) -> ListedSplit:
    """ILSVRC2012_img_val.tar: flat, labelled by the ground truth."""
    def entries():
        cache = listing_file(cache_dir, [path])
        cached = load_listing(cache, [path])
        if cached is not None:
            return cached[1:]
        members, skipped = list_tar(path)
        out = [Entry(m.name.rsplit("/", 1)[-1], None, str(path), m.offset_data, m.size) for m in members]
        save_listing(cache, [path], None, out, skipped)
        return out, skipped
    return ListedSplit(str(path), None, entries)


class Archives(Layout):
    name = "archives"
    description = (f"official archives ({TRAIN_TAR} and/or {VAL_TAR}; a flat val is labelled by the shipped "
                   "ground truth, or by ILSVRC2012_devkit_t12.tar.gz where SRC has it)")

    def detect(self, src: Path) -> bool:
        return (src / TRAIN_TAR).is_file() or (src / VAL_TAR).is_file()

    def list(self, src: Path, cache_dir=None) -> Listing:
        splits = {}
        for s, tar, make in (("train", TRAIN_TAR, train_tar_split), ("val", VAL_TAR, val_tar_split)):
            if (src / tar).is_file():
                splits[s] = make(src / tar, cache_dir)
            elif (src / s).is_dir():  # one archive kept, the other already extracted
                splits[s] = dir_split(src / s)
        return Listing(splits)


LAYOUT = Archives()

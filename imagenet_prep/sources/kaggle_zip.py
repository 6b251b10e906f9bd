"""Kaggle's `imagenet-object-localization-challenge.zip`, read in place: never extracted.

The zip holds ILSVRC/Data/CLS-LOC/{train/<wnid>/,val/,test/}, the localisation annotations and, at its
top, LOC_synset_mapping.txt and LOC_val_solution.csv. Its central directory has about 2M entries
(ZIP64: the file is about 155 GB). `list_zip` parses that directory once (zipscan.py) and keeps the images
of train and val and the two label files as entries; they are cached in DATA as the tar listings are. A
worker then reads one member with `read_item` (zipscan.read_member).
"""

from __future__ import annotations

from pathlib import Path

from imagenet_prep.errors import ImgnetError
from imagenet_prep.sources import zipscan
from imagenet_prep.sources.base import Entry, Item, Layout, ListedSplit, Listing, junk, os_failure, read_item, shown
from imagenet_prep.sources.cache import cached_parts
from imagenet_prep.sources.zipscan import DEFLATED, STORED

ZIP_NAME = "imagenet-object-localization-challenge.zip"
CLS_LOC = "ILSVRC/Data/CLS-LOC/"
LABEL_FILES = ("LOC_synset_mapping.txt", "LOC_val_solution.csv")


def _kaggle_member(raw: bytes) -> bool:
    """The members worth parsing: the images under Data/CLS-LOC/ and the label files."""
    return b"Data/CLS-LOC/" in raw or raw.endswith(b".txt") or raw.endswith(b".csv")


def central_directory(path: Path):
    """(name, local header offset, compressed size, method, crc, flags) of the images and label files."""
    return zipscan.central_directory(path, _kaggle_member)


def list_zip(path: Path) -> dict[str, tuple[list[str] | None, list[Entry], list[dict]]]:
    """{"train": (classes, entries, skipped), "val": (None, entries, skipped), "labels": (None, entries, [])}:
    entries in central-directory order."""
    parts = {"train": (set(), [], []), "val": (None, [], []), "labels": (None, [], [])}
    p = str(path)
    for name, offset, csize, method, crc, flags in central_directory(path):
        base = name.rsplit("/", 1)[-1]
        at = name.find(CLS_LOC)
        if at < 0:
            if base in LABEL_FILES and name.count("/") <= 1:  # the zip's top, or one folder down
                parts["labels"][1].append(Entry(base, None, p, offset, csize, method, crc))
            continue
        split, _, rel = name[at + len(CLS_LOC):].partition("/")
        if split not in ("train", "val") or not rel or name.endswith("/"):
            continue  # test/, folder entries
        cls, _, inner = rel.partition("/") if split == "train" else (None, "", rel)
        if split == "train" and not inner:
            reason = "not in a class folder (train/<wnid>/)"
        elif split == "val" and "/" in rel:
            reason = "in a subfolder of the flat val/"
        else:
            reason = next((r for part in rel.split("/") if (r := junk(part, False))), None)
        if reason is None and flags & 1:
            reason = "an encrypted zip member"
        if reason is None and method not in (STORED, DEFLATED):
            reason = f"compressed with zip method {method}; expected stored (0) or deflate (8)"
        classes, entries, skipped = parts[split]
        if reason:
            skipped.append({"name": f"{p}:{name}", "reason": reason})
            continue
        if split == "train":
            classes.add(cls)
        entries.append(Entry(inner if split == "train" else rel, cls, p, offset, csize, method, crc))
    classes, entries, skipped = parts["train"]
    return {**parts, "train": (sorted(classes), entries, skipped)}


def member_of(split: str):
    """Entry -> `<zip>:<member>` for the images of `split` (Source.locate)."""
    def locate(e: Entry) -> str:
        return f"{e.path}:{CLS_LOC}{split}/{e.cls + '/' if split == 'train' else ''}{e.name}"
    return locate


def _reader(path: Path, item: Item):
    """() -> the bytes of a label file inside the zip."""
    def read() -> bytes:
        from imagenet_prep.resize import BadImage

        try:
            return read_item(item)
        except BadImage as e:
            raise ImgnetError(f"{path}: {shown(item.name)}: {e}; expected an intact Kaggle zip") from e
        except OSError as e:
            raise os_failure(f"{item.name} in {path}", e) from e
    return read


class KaggleZip(Layout):
    name = "kaggle-zip"
    description = f"Kaggle's {ZIP_NAME}, still zipped"
    prefers_csv = True

    def detect(self, src: Path) -> bool:
        return (src / ZIP_NAME).is_file()

    def list(self, src: Path, cache_dir=None) -> Listing:
        """The zip's central directory parsed once (cached): train and val and the two label files."""
        path = src / ZIP_NAME
        try:
            parts = cached_parts(cache_dir, [path], ["train", "val", "labels"], lambda: list_zip(path))
        except OSError as e:
            raise os_failure(str(path), e) from e
        splits = {}
        (classes, train, skipped_t), (_, val, skipped_v) = parts["train"], parts["val"]
        if train or classes:
            splits["train"] = ListedSplit(f"{path}:{CLS_LOC}train", classes, lambda: (train, list(skipped_t)),
                                          "class folders", locate=member_of("train"))
        if val:
            splits["val"] = ListedSplit(f"{path}:{CLS_LOC}val", None, lambda: (val, list(skipped_v)),
                                        locate=member_of("val"))
        if not splits:
            raise ImgnetError(f"{path} holds no {CLS_LOC}train/ nor val/ images; "
                              "expected Kaggle's imagenet-object-localization-challenge.zip")
        files = {e.name: (f"{path}:{e.name}", _reader(path, Item(e.name, -1, e.path, e.offset, e.size, e.method, e.crc)))
                 for e in parts["labels"][1]}
        return Listing(splits, files)


LAYOUT = KaggleZip()

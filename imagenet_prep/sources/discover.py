"""`discover`: find the layout of SRC (registry.py) and list its images as `Item`s, labelled in one label map,
without reading or extracting them.

Val labels: a flat val is labelled by a --val-labels file, else by the Kaggle CSV or the devkit found in SRC,
else by the ground truth shipped in imagenet_prep/data/ (truth.py). What SRC carries (devkit, CSV, class
folders, val shards) must agree with the shipped ground truth: a disagreement is an error.

Classes: a source with a flat val has the classes of the ground truth that labels it (the 1000 of the
devkit or of LOC_synset_mapping.txt), so that its indices are the standard ones; the shards carry the
1000; any other source has the class folders (or class tars, or listed classes) it holds, as ImageFolder does.

Leaks: where both splits are listed, an image in train and in val (checks.check_no_leak: the same name without
its extension) is an error, in every layout whose names identify images (all but ImageFolder).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from imagenet_prep.errors import ImgnetError
from imagenet_prep.labels import LabelMap, build_label_map, load_class_meta
from imagenet_prep.sources import registry, truth
from imagenet_prep.sources.base import (LAYOUT_SPLITS, Entry, Item, Layout, ListedSplit, locate_entry, os_failure,
                                        relative, skip)
from imagenet_prep.sources.checks import check_no_leak
from imagenet_prep.sources.folders import check_class_names, folder_classes


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
    layout: str                         # the layout's name (registry.LAYOUTS), e.g. archives | extracted
    label_map: LabelMap
    splits: dict[str, list[Item]]       # "train" sorted by (label, name), "val" by name
    skipped: dict[str, list[dict]]      # per split: [{"name", "reason"}] (system files, unlabelled val images)
    origin: dict[str, str] = field(default_factory=dict)  # where each split and the class metadata came from
    # per split: [{"name", "reason"}] images whose source bytes differ from the official tars' (re-encoded copies)
    differs: dict[str, list[dict]] = field(default_factory=dict)
    locators: dict[str, Callable[[Entry], str]] = field(default_factory=dict)  # per split: entry -> location

    def locate(self, split: str, item: Item) -> str:
        """Where `item` is in SRC, in the one form of the class docstring."""
        cls = self.label_map.classes[item.label]["wnid"] if item.label >= 0 else None
        find = self.locators.get(split, locate_entry)
        return relative(self.src, find(Entry(item.name, cls, item.path, item.offset, item.size)))


def discover(src, label_order: str = "sorted", classes: int | None = None, per_class: int | None = None,
             splits=None, cache_dir=None, val_labels=None, coarse: bool = False) -> Source:
    """Find the layout of `src` and list its images.

    label_order "sorted" | "devkit"; `classes=N` keeps the first N classes in label order (renumbered from 0);
    `per_class=N` the first N names of each class in each split; `splits` limits the listing to those splits
    (default: every split found). The classes depend on the whole source, whatever `splits` is, so that
    every run over the same source gets the same label map (see the module docstring). `cache_dir`: a writable
    folder where the listings of the archives, shards and zip are kept for the next run over the same files.
    `val_labels`: a file of `<name> <index or wnid>` lines that labels a flat val (or the val shards) instead
    of the ground truth. `coarse`: CIFAR-100's 20 coarse labels (a layout with the "coarse" option). An OSError
    while listing (EIO, EACCES, ESTALE on a file or folder) is an I/O failure:
    a one-line error naming the file and errno."""
    try:
        return _discover(src, label_order, classes, per_class, splits, cache_dir, val_labels, coarse)
    except OSError as e:
        raise os_failure(os.fsdecode(e.filename) if e.filename else str(src), e) from e


def _discover(src, label_order, classes, per_class, splits, cache_dir, val_labels, coarse=False) -> Source:
    src = Path(os.path.abspath(src))  # item paths and the names in reports are found under it (Source.locate)
    if not src.is_dir():
        raise ImgnetError(f"source {src} is not a folder; expected the folder holding the ILSVRC2012 download")
    if per_class is not None and (not isinstance(per_class, int) or isinstance(per_class, bool) or per_class < 1):
        raise ImgnetError(f"per_class={per_class!r}; expected a positive number of images per class")
    layout = registry.detect(src)
    listing = layout.list(src, cache_dir, **_options(src, layout, coarse=coarse))
    found = listing.splits
    check_class_names(folder_classes(found), str(src))
    wanted = list(found) if splits is None else list(splits)
    _check_wanted(src, layout, found, wanted, val_labels)
    devkit = truth.find_devkit(src)
    meta = devkit.meta() if devkit else load_class_meta()
    origin = {"class_metadata": meta.origin}
    shipped = truth.shipped_truth()
    names = sorted(folder_classes(found))
    flat = [sp.where for sp in found.values() if sp.classes is None]
    val = found.get("val")
    relabel = val is not None and val.relabel and val_labels is not None
    labels = None
    if flat or relabel:
        files = {**truth.label_files(src), **listing.files}
        labels = truth.find_truth(files, devkit, meta, layout.prefers_csv, val_labels, shipped)
    if flat:  # the ground truth's classes, so that a subset of class folders keeps the standard indices
        names = _truth_classes(names, labels, flat[0])
    label_map = build_label_map(names, order=label_order, classes=classes, meta=meta)
    items, skipped = {}, {}
    for s in wanted:
        relabelled = found[s].classes is None or (s == "val" and relabel)
        items[s], skipped[s], origin[s] = _list_split(s, found[s], labels if relabelled else None, label_map, shipped,
                                                      per_class, layout.in_listed_order)
        skipped[s] = sorted((skip(relative(src, d["name"]), d["reason"]) for d in skipped[s]), key=lambda d: d["name"])
    source = Source(src, layout.name, label_map, items, skipped, origin, {}, {s: found[s].locate for s in wanted})
    if layout.names_identify and "train" in items and "val" in items:
        check_no_leak(items["train"], items["val"], source.locate)
    for s in wanted:
        source.differs[s] = [{"name": source.locate(s, i), "reason": why} for i in items[s]
                             if (why := layout.differs(i)) is not None]
    return source


def _options(src: Path, layout: Layout, **asked) -> dict:
    """The options asked for (those not at their default, False), each one the layout takes; another is refused."""
    given = {k: v for k, v in asked.items() if v}
    for k in given:
        if k not in layout.options:
            with_it = [x.name for x in registry.LAYOUTS if k in x.options]
            raise ImgnetError(f"--{k} applies to {' and '.join(with_it) or 'no'} layouts; {src} is the {layout.name} "
                              f"layout: leave --{k} out")
    return given


def _check_wanted(src: Path, layout: Layout, found: dict[str, ListedSplit], wanted: list[str], val_labels) -> None:
    """The splits asked for exist and can be listed; a listing that --val-labels cannot relabel is refused."""
    for s in wanted:
        if s not in LAYOUT_SPLITS:
            raise ImgnetError(f"split {s!r} is not supported; expected one of {', '.join(LAYOUT_SPLITS)}")
        if s not in found:
            raise ImgnetError(f"{src} ({layout.name} layout) has no {s} split; it has {', '.join(found) or 'none'}")
    for s, sp in found.items():  # an incomplete split not asked for matters only where its classes count
        if sp.problem and (s in wanted or all(x.classes is not None for x in found.values())):
            raise ImgnetError(sp.problem)
    if "train" in found and found["train"].classes is None:
        raise ImgnetError(f"{found['train'].where} holds images but no class folders; expected train/<class>/ folders")
    val = found.get("val")
    if val_labels is not None and val is not None and val.classes is not None and not val.relabel:
        raise ImgnetError(f"--val-labels {val_labels} labels a flat val, but {val.where} is sorted into class folders, "
                          "which label it; expected a flat val (or leave out --val-labels)")


def _truth_classes(names: list[str], labels: truth.Truth, flat_where: str) -> list[str]:
    """The classes of a source with a flat val: the ground truth's, which must hold every class folder."""
    extra = sorted(set(names) - set(labels.wnids))
    if extra:
        raise ImgnetError(f"class folders {', '.join(map(repr, extra[:5]))} are not among the "
                          f"{len(labels.wnids)} classes of {labels.origin}, which labels {flat_where}; expected "
                          "ILSVRC2012 wnids as class folders, or val/<class>/ folders instead of a flat val")
    return labels.wnids


def _list_split(s: str, sp: ListedSplit, labels: truth.Truth | None, label_map: LabelMap, shipped: truth.Truth,
                per_class: int | None, listed_order: bool = False) -> tuple[list[Item], list[dict], str]:
    """(items in record order, skipped, origin) of one split; `labels`: the ground truth that labels it (a flat
    or relabelled split), else its own classes label it. `listed_order`: records in the listing's order
    (a download's own), else train by (label, name) and the others by name."""
    entries, skipped = sp.entries()
    if labels is not None:
        origin = f"{sp.where} (labels: {labels.origin})"
        entries = _label_flat(entries, labels, label_map, skipped, sp.locate)
    else:
        origin = f"{sp.where} (labels: {sp.labelled_by})"
        if s == "val":  # official val images in class folders or shards keep their official classes
            for e in entries:
                truth.check_item(e.name, e.cls, shipped, sp.where if sp.relabel else f"{sp.where}/{e.cls}")
    its = [Item(e.name, label, e.path, e.offset, e.size, e.method, e.crc) for e in entries
           if (label := label_map.index_of(e.cls)) is not None]
    if not listed_order:
        its.sort(key=(lambda i: (i.label, i.name)) if s == "train" else (lambda i: (i.name, i.label)))
    if per_class is not None:
        its = _first_per_class(its, per_class)
    return its, skipped, origin


def _first_per_class(items: list[Item], n: int) -> list[Item]:
    count: dict[int, int] = {}
    kept = []
    for i in items:
        count[i.label] = count.get(i.label, 0) + 1
        if count[i.label] <= n:
            kept.append(i)
    return kept


def _label_flat(entries: list[Entry], labels: truth.Truth, label_map: LabelMap, skipped: list[dict],
                locate: Callable[[Entry], str]) -> list[Entry]:
    """Entries labelled by the ground truth; an image whose class the source lacks, and a stray file that the
    ground truth does not label (notes.txt), are skipped (with the reason)."""
    labelled = []
    for e in entries:
        if why := labels.stray(e.name):
            skipped.append(skip(locate(e), why))
            continue
        wnid = labels.wnid(e.name)
        if wnid in label_map:
            labelled.append(Entry(e.name, wnid, e.path, e.offset, e.size, e.method, e.crc))
        else:
            skipped.append(skip(locate(e), f"its class {wnid} (from {labels.origin}) is not among the "
                                       f"{len(label_map.all_names)} classes of the source"))
    return labelled

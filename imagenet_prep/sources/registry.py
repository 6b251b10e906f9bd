"""Every source layout, in detection order: discovery asks each in turn whether SRC holds it, and the first
that does lists it. A new layout is one module defining a `Layout` (base.py) and one line here; place it
before any layout that would also claim its sources (the more specific first)."""

from __future__ import annotations

import os
from pathlib import Path

from imagenet_prep.errors import ImgnetError
from imagenet_prep.labels import is_wnid
from imagenet_prep.sources import (archives, caffe, cifar, extracted, hf_parquet, hf_targz, imagefolder, kaggle,
                                   kaggle_zip, wds)
from imagenet_prep.sources.base import Layout

LAYOUTS: list[Layout] = [
    hf_parquet.LAYOUT,   # SRC or SRC/data: {train,validation}-NNNNN-of-NNNNN.parquet
    hf_targz.LAYOUT,     # SRC or SRC/data: train_images_{0..4}.tar.gz, val_images.tar.gz
    kaggle.LAYOUT,       # ILSVRC/Data/CLS-LOC/
    archives.LAYOUT,     # ILSVRC2012_img_{train,val}.tar
    wds.LAYOUT,          # imagenet1k-{train,validation}-NN.tar
    kaggle_zip.LAYOUT,   # imagenet-object-localization-challenge.zip
    caffe.LAYOUT,        # train.txt / val.txt '<relpath> <label>' with synset_words.txt or synsets.txt
    extracted.LAYOUT,    # train/<wnid>/, val/ (wnid class folders or flat)
    imagefolder.LAYOUT,  # train/<class>/, val/<class>/
    *cifar.LAYOUTS,      # cifar-{10,100}-{python,binary}.tar.gz or their extracted folders
]

_SHARDED = {x.name: x.sharded for x in LAYOUTS}  # unit_key, once per item: a dict, not a search


def by_name(name: str) -> Layout:
    """The layout recorded as `name` (a split's fingerprint and metadata)."""
    for layout in LAYOUTS:
        if layout.name == name:
            return layout
    raise ImgnetError(f"layout {name!r} is not known; expected one of {', '.join(x.name for x in LAYOUTS)}")


def is_sharded(layout: str) -> bool:
    """Whether a split of `layout` is read shard by shard (a name not in LAYOUTS, imagenetv2: not)."""
    return _SHARDED.get(layout, False)


def unit_key(layout: str, item) -> str:
    """Where an item of a sharded layout is, beyond its name, label and size: its shard's file name and unit
    ("<shard>:<unit>"), which a split's fingerprint records (units_sha256), since a resumed run finds the units
    it has done by those (two shards that swapped names between a kill and the rerun must not pass for the same
    source); "" for any other layout."""
    return f"{os.path.basename(item.path)}:{item.offset}" if is_sharded(layout) else ""


def detect(src: Path) -> Layout:
    """The first layout that SRC (an absolute folder) holds; an error listing what SRC holds and every layout."""
    for layout in LAYOUTS:
        if layout.detect(src):
            return layout
    raise ImgnetError(unknown_layout(src))


def unknown_layout(src: Path) -> str:
    """The one-line message for a SRC that no layout claims: what it holds, then every layout's description."""
    try:
        found = sorted(p.name + "/" * p.is_dir() for p in src.iterdir())
    except OSError as e:
        found = [f"(unreadable: {e.strerror})"]
    held = ", ".join(found[:12]) + (f" and {len(found) - 12} more" if len(found) > 12 else "") if found else "nothing"
    hint = ""
    if sum(is_wnid(f.rstrip("/")) for f in found) > len(found) // 2 > 0:
        hint = " (these look like class folders: pass the folder above them, which holds train/ and val/)"
    return (f"{src} matches no known source layout; it holds {held}{hint}. Expected one of: "
            + "; ".join(layout.description for layout in LAYOUTS))

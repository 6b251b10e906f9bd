"""Extracted folders: train/<wnid>/*.JPEG and val/ either flat (labelled by the shipped ground truth, or by a
devkit or Kaggle's CSV in SRC) or sorted into val/<wnid>/. Folders whose class names are not all wnids are
an ImageFolder tree (imagefolder.py), detected after this layout."""

from __future__ import annotations

from pathlib import Path

from imagenet_prep.labels import is_wnid
from imagenet_prep.sources.base import Layout, Listing
from imagenet_prep.sources.folders import folder_classes, split_folders


class Extracted(Layout):
    name = "extracted"
    description = "extracted folders (train/<wnid>/*.JPEG; val/ flat or sorted into val/<wnid>/)"

    def detect(self, src: Path) -> bool:
        splits = split_folders(src)
        return bool(splits) and all(map(is_wnid, folder_classes(splits)))

    def list(self, src: Path, cache_dir=None) -> Listing:
        return Listing(split_folders(src))


LAYOUT = Extracted()

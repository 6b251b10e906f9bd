"""Any ImageFolder tree: train/<class>/..., val/<class>/...; the classes are the folder names (with WordNet
names where they are wnids)."""

from __future__ import annotations

from pathlib import Path

from imagenet_prep.sources.base import Layout, Listing
from imagenet_prep.sources.folders import split_folders


class ImageFolder(Layout):
    name = "imagefolder"
    description = "an ImageFolder tree (train/<class>/..., val/<class>/...)"
    names_identify = False  # train/cat/1.jpg and val/cat/1.jpg are two images

    def detect(self, src: Path) -> bool:
        return (src / "train").is_dir() or (src / "val").is_dir()

    def list(self, src: Path, cache_dir=None) -> Listing:
        return Listing(split_folders(src))


LAYOUT = ImageFolder()

"""Kaggle's extracted download: ILSVRC/Data/CLS-LOC/{train/<wnid>/, val/} with LOC_synset_mapping.txt and
LOC_val_solution.csv (which labels the flat val) in SRC."""

from __future__ import annotations

from pathlib import Path

from imagenet_prep.sources.base import SPLITS, Layout, Listing
from imagenet_prep.sources.folders import dir_split

KAGGLE_ROOT = "ILSVRC/Data/CLS-LOC"


class KaggleFolders(Layout):
    name = "kaggle"
    description = (f"Kaggle's extracted folders ({KAGGLE_ROOT}/{{train,val}} with LOC_synset_mapping.txt and "
                   "LOC_val_solution.csv)")
    prefers_csv = True

    def detect(self, src: Path) -> bool:
        return (src / KAGGLE_ROOT).is_dir()

    def list(self, src: Path, cache_dir=None) -> Listing:
        root = src / KAGGLE_ROOT
        return Listing({s: dir_split(root / s) for s in SPLITS if (root / s).is_dir()})


LAYOUT = KaggleFolders()

"""Offline ILSVRC2012 pipeline: find the source layout, resize to 256x256, pack, label maps, statistics."""

from imagenet_prep.errors import ImgnetError
from imagenet_prep.store import Record, Split, open_split

__all__ = ["ImgnetError", "Record", "Split", "open_split"]

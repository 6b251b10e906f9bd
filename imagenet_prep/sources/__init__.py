"""Source layouts as plug-ins: find the ILSVRC2012 layout in SRC and list its images as `Item`s, without
reading or extracting them.

    base.py       the records (Entry, Item, ListedSplit, Listing), the Layout protocol, shared helpers
    registry.py   every layout in detection order; the "unknown layout" message
    discover.py   discover(): detect, list, label (Source)
    truth.py      the labels of a flat val (devkit, Kaggle CSV, --val-labels, the shipped ground truth)
    cache.py      listings kept in DATA; tarscan.py, zipscan.py, folders.py: reading tars, zips, folders in place
    checks.py     declared counts against what is there, names listed twice, train/val leaks (every reader alike)
    parquet_pages.py  the rows a parquet column chunk holds, from its page headers (a footer's counts are claims)
    one module per layout: archives, extracted, kaggle, kaggle_zip, wds, hf_parquet, hf_targz, imagefolder, caffe;
    cifar (the four CIFAR downloads, one Layout each: splits train and test)

An Item names a byte range: a whole file, or a member of a tar located by its absolute offset in the
outer file (members of the per-class tars and of the shards too), or a zip member (its local header's
offset, compressed size, method and CRC-32), so any process can read it with `read_item`; the items of a
streamed layout (Hugging Face) name a position in a unit of a shard instead (Layout.read_unit).
"""

from imagenet_prep.sources.base import (MAX_IMAGE_BYTES, MAX_SMALL_FILE_BYTES, SPLITS, Entry, Item, Layout,
                                        ListedSplit, Listing, junk, locate_entry, os_failure, read_failure, read_item,
                                        relative, shown, skip, too_large)
from imagenet_prep.sources.discover import Source, discover
from imagenet_prep.sources.folders import check_class_names
from imagenet_prep.sources.registry import LAYOUTS, by_name
from imagenet_prep.sources.tarscan import check_tar_end

__all__ = ["LAYOUTS", "MAX_IMAGE_BYTES", "MAX_SMALL_FILE_BYTES", "SPLITS", "Entry", "Item", "Layout", "ListedSplit",
           "Listing", "Source", "by_name", "check_class_names", "check_tar_end", "discover", "junk", "locate_entry",
           "os_failure", "read_failure", "read_item", "relative", "shown", "skip", "too_large"]

"""Label sets of the ILSVRC2012 val beyond its original labels: ImageNet ReaL (real.py) and the 2015
blacklist (blacklist.py), registered in registry.py; base.py says what a label set is; sets.py scores a split
against them. The names below stay importable from `trainer.labelsets`."""

from trainer.labelsets.base import VAL_IMAGES, VAL_NAME, ilsvrc2012_val, sorted_wnids, val_numbers
from trainer.labelsets.blacklist import BLACKLIST_FILE, blacklisted, load_blacklist
from trainer.labelsets.real import REAL_FILE, RealLists, load_real, real_lists
from trainer.labelsets.sets import LabelSets, figure_table, image_values, label_sets, rates

__all__ = ["BLACKLIST_FILE", "REAL_FILE", "VAL_IMAGES", "VAL_NAME", "LabelSets", "RealLists", "blacklisted",
           "figure_table", "ilsvrc2012_val", "image_values", "label_sets", "load_blacklist", "load_real", "rates",
           "real_lists", "sorted_wnids", "val_numbers"]

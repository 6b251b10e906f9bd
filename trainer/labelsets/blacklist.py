"""The ILSVRC2015 blacklist: 1,762 val images that ILSVRC2015 left out of localisation scoring.
Classification scoring keeps all 50,000, so leaving them out is an option (`--exclude-blacklist`), never the
default. The numbers ship as imagenet_prep/data/ILSVRC2015_clsloc_validation_blacklist.txt."""

from __future__ import annotations

import functools

import numpy as np

from imagenet_prep.errors import ImgnetError
from trainer.labelsets.base import VAL_IMAGES, Exclusion, shipped_text, val_numbers

BLACKLIST_FILE = "ILSVRC2015_clsloc_validation_blacklist.txt"


@functools.lru_cache(maxsize=1)
def load_blacklist() -> frozenset[int]:
    """The 1-based val image numbers of the shipped ILSVRC2015 blacklist (1,762 of them)."""
    numbers = frozenset(int(line) for line in shipped_text(BLACKLIST_FILE).split())
    assert numbers and min(numbers) >= 1 and max(numbers) <= VAL_IMAGES, "damaged blacklist"
    return numbers


def blacklisted(names) -> np.ndarray:
    """bool (N,): True for records among the 1,762 images of the 2015 blacklist. ImgnetError when a record
    is not an ILSVRC2012 val image: the blacklist numbers only those."""
    numbers, reason = val_numbers(names)
    if numbers is None:
        raise ImgnetError(f"the 2015 blacklist numbers ILSVRC2012 val images only, but {reason}; expected "
                          "the val split of an ILSVRC2012 DATA folder (leave out --exclude-blacklist)")
    return np.isin(numbers, np.fromiter(load_blacklist(), np.int64))


class Blacklist(Exclusion):
    name = "blacklist"
    help = ("Leave the 1,762 val images of the ILSVRC2015 blacklist out of every figure [default: all 50,000 "
            "count, as classification scoring does].")

    def excluded(self, names) -> np.ndarray:
        return blacklisted(names)

    def describe(self, n: int) -> str:
        return f"blacklist: {n:,} image{'s' * (n != 1)} of the ILSVRC2015 val blacklist left out of every figure"


ENTRY = Blacklist()  # trainer/labelsets/registry.py

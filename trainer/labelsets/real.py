"""ReaL (Beyer et al. 2020, "Are we done with ImageNet?"): reassessed labels of the ILSVRC2012 val, a list
per image holding every class the raters saw (often two or more), or none where they agreed on no label.
Scoring follows the paper: images with an empty list are left out; a top-1 guess is right when it is in the
list, top-5 when any of the five is. The lists ship as imagenet_prep/data/real.json (sorted-wnid indices)."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import numpy as np

from imagenet_prep.labels import NUM_CLASSES
from trainer.labelsets.base import VAL_IMAGES, LabelList, ilsvrc2012_val, shipped_text, sorted_wnids

REAL_FILE = "real.json"


@functools.lru_cache(maxsize=1)
def load_real() -> tuple[tuple[int, ...], ...]:
    """The shipped real.json as it is: 50,000 tuples of sorted-wnid indices, val file-name order."""
    lists = json.loads(shipped_text(REAL_FILE))
    assert len(lists) == VAL_IMAGES and all(0 <= c < NUM_CLASSES for ls in lists for c in ls), "damaged real.json"
    return tuple(tuple(ls) for ls in lists)


@dataclass(frozen=True)
class RealLists:
    """ReaL labels of one split's records, in the split's label indices.

    rows: int64 (N, L), row i the ReaL classes of record i padded with -1 (a row of -1: no ReaL label)."""

    rows: np.ndarray

    @property
    def n(self) -> int:
        """Records with a non-empty ReaL list: the n of the ReaL figures."""
        return int((self.rows >= 0).any(axis=1).sum())


def real_lists(names, labels_json: dict) -> tuple[RealLists | None, str | None]:
    """ReaL labels for the records of a split (names in record order), mapped through wnids onto its
    labels.json, so that they hold for any label order; (None, reason) when the split is not the ILSVRC2012
    val (see `ilsvrc2012_val`)."""
    numbers, reason = ilsvrc2012_val(names, labels_json)
    if numbers is None:
        return None, reason
    index = {c["wnid"]: c["index"] for c in labels_json["classes"]}
    to_data = np.array([index[w] for w in sorted_wnids()], np.int64)  # sorted-wnid index -> DATA index
    real = load_real()
    width = max(1, max(len(real[n - 1]) for n in numbers.tolist()))
    rows = np.full((len(numbers), width), -1, np.int64)
    for i, n in enumerate(numbers.tolist()):
        ls = real[n - 1]
        rows[i, :len(ls)] = to_data[list(ls)]
    return RealLists(rows), None


class ReaL(LabelList):
    name = "real"
    title = "ReaL"

    def lists(self, names, labels_json: dict):
        real, reason = real_lists(names, labels_json)
        return (None, reason) if real is None else (real.rows, None)


ENTRY = ReaL()  # trainer/labelsets/registry.py

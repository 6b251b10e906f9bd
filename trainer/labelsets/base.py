"""What an evaluation label set is, and the ILSVRC2012 val facts the shipped sets share.

Two kinds, each one module under trainer/labelsets/ and one line in registry.ENTRIES:
- `LabelList`: for each record, every class that counts as right (ReaL). Its figures are `<name>_top1_err`,
  `<name>_top5_err` over `<name>_n`, the records whose list is not empty: in training validation (log.jsonl
  as val_<name>_...), the `imgnet test` table and JSON, and `imgnet compare`.
- `Exclusion`: records left out of every figure on request (`imgnet test --exclude-<name>`; the blacklist).
"""

from __future__ import annotations

from importlib import resources

import numpy as np

from imagenet_prep.labels import NUM_CLASSES, VAL_NAME, sorted_wnids

VAL_IMAGES = 50_000  # ILSVRC2012 val


class LabelList:
    """A label set with a list of right classes per record. `name` prefixes its figures, `title` heads its
    rows in tables."""

    name = ""
    title = ""

    def lists(self, names, labels_json: dict) -> tuple[np.ndarray | None, str | None]:
        """(int64 (N, L): the right classes of each record (names in record order) in the split's label
        indices, padded with -1, a row of -1 leaving the record out of this set's figures; None), or (None,
        one line saying why the set does not apply to this split)."""
        raise NotImplementedError


class Exclusion:
    """Records left out of every figure on request. `help` is its `imgnet test --exclude-<name>` help."""

    name = ""
    help = ""

    def excluded(self, names) -> np.ndarray:
        """bool (N,): True for the records left out; ImgnetError where the split is not one it applies to."""
        raise NotImplementedError

    def describe(self, n: int) -> str:
        """The table's line about the n records left out."""
        return f"{self.name}: {n:,} image{'s' * (n != 1)} left out of every figure"


def shipped_text(name: str) -> str:
    """A file of imagenet_prep/data/ (sources and licences: imagenet_prep/data/SOURCES.md)."""
    return resources.files("imagenet_prep").joinpath("data", name).read_text(encoding="utf-8")


def val_numbers(names) -> tuple[np.ndarray | None, str | None]:
    """(1-based val numbers as int64 (N,), None) when every record is named ILSVRC2012_val_%08d.JPEG with a
    number in 1..50,000, else (None, a one-line reason)."""
    out = np.empty(len(names), np.int64)
    for i, name in enumerate(names):
        m = VAL_NAME.fullmatch(name)
        n = int(m[1]) if m else 0
        if not 1 <= n <= VAL_IMAGES:
            return None, (f"record {name!r} is not an ILSVRC2012 val image (ILSVRC2012_val_%08d.JPEG, "
                          f"1 to {VAL_IMAGES:,})")
        out[i] = n
    if len(names) == 0:
        return None, "the split is empty"
    return out, None


def ilsvrc2012_val(names, labels_json: dict) -> tuple[np.ndarray | None, str | None]:
    """Is this split (record names, its labels.json dict) the ILSVRC2012 val, or a subset of its images?

    It is when every record is named ILSVRC2012_val_%08d.JPEG and the label map holds the 1000 ILSVRC2012
    classes (in any order). Returns (val numbers (N,), None), or (None, a one-line reason): a --classes
    subset, another dataset, or another split, where a val label set would score the wrong images."""
    wnids = [c.get("wnid") for c in labels_json.get("classes", ())]
    if len(wnids) != NUM_CLASSES:
        return None, (f"the label map has {len(wnids)} classes, not the {NUM_CLASSES} of ILSVRC2012 "
                      "(a --classes subset or another dataset)")
    other = sorted(set(wnids) - set(sorted_wnids()), key=str)
    if other:
        return None, (f"the label map holds classes that are not ILSVRC2012's ({', '.join(map(repr, other[:3]))}"
                      f"{', ...' if len(other) > 3 else ''}): another dataset")
    return val_numbers(names)


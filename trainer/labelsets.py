"""Label sets of the ILSVRC2012 val beyond its original labels: ImageNet ReaL and the 2015 blacklist.

ReaL (Beyer et al. 2020, "Are we done with ImageNet?"): reassessed labels, a list per val image that holds
every class the raters saw (often two or more) or none where they agreed on no label. Scoring follows the
paper: images with an empty list are left out; a top-1 prediction is right when it is in the list, top-5
when any of the five is. The 2015 blacklist: 1,762 val images that ILSVRC2015 left out of localisation
scoring; classification scoring keeps all 50,000, so leaving them out is an option, never the default.
Both files ship in imagenet_prep/data/ (sources and licences: imagenet_prep/data/SOURCES.md).

Everything is per image, so that an evaluation loop can sum it under names and divide at the end:

    sets = label_sets(split.names, labels_json, exclude_blacklist=False)   # once per split
    for x, y in loader:                                 # records in split order (no shuffle)
        top = model(x).topk(5, dim=1).indices           # (B, 5) best first
        v = sets.batch(top, y, start)                   # records start .. start + B - 1
        sums = {k: sums.get(k, 0) + t.sum() for k, t in v.items()}
        start += len(y)
    figures = rates(sums)  # n, top1_err, top5_err and, on the 2012 val, real_n, real_top1_err, real_top5_err
    sets.real_reason       # one line where ReaL is absent; sets.info() for the report JSON

`image_values` (what `batch` calls) takes numpy arrays or torch tensors alike (same ops), so the sums can
stay on the device. ReaL indices are sorted-wnid indices; `real_lists` maps them through wnids onto the
DATA label map, so that they hold for any label order (`--label-order devkit` too).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from importlib import resources

import numpy as np

from imagenet_prep.errors import ImgnetError
from imagenet_prep.labels import NUM_CLASSES, load_class_meta

REAL_FILE = "real.json"
BLACKLIST_FILE = "ILSVRC2015_clsloc_validation_blacklist.txt"
VAL_IMAGES = 50_000  # ILSVRC2012 val; real.json has one list per image
VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})\.JPEG")
_ERR_KEY = re.compile(r"(\w+_)?top\d+_err")  # real_top1_err -> its count is real_n; top5_err -> n


# --------------------------------------------------------------------------------- shipped files
def _data_text(name: str) -> str:
    return resources.files("imagenet_prep").joinpath("data", name).read_text(encoding="utf-8")


@functools.lru_cache(maxsize=1)
def load_real() -> tuple[tuple[int, ...], ...]:
    """The shipped real.json as it is: 50,000 tuples of sorted-wnid indices, val file-name order."""
    lists = json.loads(_data_text(REAL_FILE))
    assert len(lists) == VAL_IMAGES and all(0 <= c < NUM_CLASSES for ls in lists for c in ls), "damaged real.json"
    return tuple(tuple(ls) for ls in lists)


@functools.lru_cache(maxsize=1)
def load_blacklist() -> frozenset[int]:
    """The 1-based val image numbers of the shipped ILSVRC2015 blacklist (1,762 of them)."""
    numbers = frozenset(int(line) for line in _data_text(BLACKLIST_FILE).split())
    assert numbers and min(numbers) >= 1 and max(numbers) <= VAL_IMAGES, "damaged blacklist"
    return numbers


def sorted_wnids() -> list[str]:
    """The 1000 ILSVRC2012 wnids in sorted order: ReaL's (and ImageNetV2's) class index i is entry i."""
    return sorted(c["wnid"] for c in load_class_meta().classes)


# --------------------------------------------------------------------------------- which split
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
    subset, another dataset, or another split, where ReaL and the blacklist would score the wrong images."""
    wnids = [c.get("wnid") for c in labels_json.get("classes", ())]
    if len(wnids) != NUM_CLASSES:
        return None, (f"the label map has {len(wnids)} classes, not the {NUM_CLASSES} of ILSVRC2012 "
                      "(a --classes subset or another dataset)")
    other = sorted(set(wnids) - set(sorted_wnids()), key=str)
    if other:
        return None, (f"the label map holds classes that are not ILSVRC2012's ({', '.join(map(repr, other[:3]))}"
                      f"{', ...' if len(other) > 3 else ''}): another dataset")
    return val_numbers(names)


# --------------------------------------------------------------------------------------- ReaL
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
    labels.json; (None, reason) when the split is not the ILSVRC2012 val (see `ilsvrc2012_val`)."""
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


# ---------------------------------------------------------------------------------- blacklist
def blacklisted(names) -> np.ndarray:
    """bool (N,): True for records among the 1,762 images of the 2015 blacklist. ImgnetError when a record
    is not an ILSVRC2012 val image: the blacklist numbers only those."""
    numbers, reason = val_numbers(names)
    if numbers is None:
        raise ImgnetError(f"the 2015 blacklist numbers ILSVRC2012 val images only, but {reason}; expected "
                          "the val split of an ILSVRC2012 DATA folder (leave out --exclude-blacklist)")
    return np.isin(numbers, np.fromiter(load_blacklist(), np.int64))


# ------------------------------------------------------------------------------- one split
@dataclass
class LabelSets:
    """The label sets one split is scored against, aligned with its records (see the module docstring)."""

    n_records: int
    real: RealLists | None          # None: no ReaL figures, for `real_reason`
    real_reason: str | None
    keep: np.ndarray | None         # bool (N,): False for a record left out (blacklisted); None: all count
    _device_copies: dict = field(default_factory=dict, repr=False)

    @property
    def excluded(self) -> int:
        return 0 if self.keep is None else int((~self.keep).sum())

    def _rows(self, like, start: int, stop: int):
        """ReaL rows and keep flags of records [start, stop), as numpy or as tensors on `like`'s device."""
        real = None if self.real is None else self.real.rows
        if isinstance(like, np.ndarray):
            return (None if real is None else real[start:stop]), (None if self.keep is None else self.keep[start:stop])
        return tuple(None if t is None else t[start:stop] for t in self.on(like.device))

    def on(self, device) -> tuple:
        """(ReaL rows int64 (N, L), keep bool (N,)) as tensors on `device`, None where absent; copied once per
        device (50,000 x 9 int64: 3.6 MB), so that a loop indexes them there without a host sync."""
        import torch

        device = torch.device(device)
        if device not in self._device_copies:
            real = None if self.real is None else self.real.rows
            self._device_copies[device] = tuple(None if a is None else torch.from_numpy(a).to(device)
                                                for a in (real, self.keep))
        return self._device_copies[device]

    def batch(self, top, y, start: int) -> dict:
        """`image_values` of the records start .. start + len(y) - 1, in the split's record order."""
        stop = start + len(y)
        assert stop <= self.n_records, (start, len(y), self.n_records)
        real, keep = self._rows(top, start, stop)
        return image_values(top, y, real, keep)

    def info(self) -> dict:
        """What the figures were computed over, for a report: {"real", "real_reason", "exclude_blacklist",
        "excluded"}."""
        return {"real": self.real is not None, "real_reason": self.real_reason,
                "exclude_blacklist": self.keep is not None, "excluded": self.excluded}


def label_sets(names, labels_json: dict, exclude_blacklist: bool = False) -> LabelSets:
    """The label sets of a split: ReaL where it is the ILSVRC2012 val (else `real_reason` says why not);
    with `exclude_blacklist`, the 2015 blacklist's records left out of every figure (ImgnetError when the
    split is not ILSVRC2012 val images)."""
    real, reason = real_lists(names, labels_json)
    keep = ~blacklisted(names) if exclude_blacklist else None
    return LabelSets(len(names), real, reason, keep)


# ------------------------------------------------------------------------------------ scoring
def image_values(top, y, real_rows=None, keep=None) -> dict:
    """Per-image 0/1 values to sum over a split (numpy arrays or torch tensors, any device).

    top: int (B, k) predictions best first (k <= 5); y: int (B,) original labels; real_rows: int (B, L)
    ReaL classes padded with -1, or None; keep: bool (B,) (False: left out, e.g. blacklisted), or None.
    Returns {"n", "top1_err", "top5_err"} and, with real_rows, {"real_n", "real_top1_err", "real_top5_err"}:
    each (B,) int64, 1 where the image counts / is wrong and counts."""
    hit = top == y.reshape(-1, 1)  # (B, k)
    n = _ones(hit[:, 0]) if keep is None else keep.reshape(-1) != 0  # (B,) bool: the images that count
    out = {"n": n, "top1_err": n & ~hit[:, 0], "top5_err": n & ~hit.any(1)}
    if real_rows is not None:
        in_list = (top[:, :, None] == real_rows[:, None, :]).any(2)  # (B, k): prediction j is in the list
        real_n = n & (real_rows >= 0).any(1)
        out.update(real_n=real_n, real_top1_err=real_n & ~in_list[:, 0], real_top5_err=real_n & ~in_list.any(1))
    return {k: v.astype(np.int64) if isinstance(v, np.ndarray) else v.long() for k, v in out.items()}


def _ones(like):
    """All-True bool array of the type, shape and device of `like`."""
    if isinstance(like, np.ndarray):
        return np.ones_like(like, dtype=bool)
    import torch

    return torch.ones_like(like, dtype=torch.bool)


def rates(sums: dict) -> dict:
    """Figures from the summed image values: every `<set>_top<k>_err` divided by its `<set>_n` (None where
    n is 0), the counts as ints, other sums unchanged. {"n": 4, "top1_err": 1, "real_n": 3, ...} -> {"top1_err": 0.25, ...}."""
    value = {k: v.item() if hasattr(v, "item") else v for k, v in sums.items()}  # tensors, numpy scalars
    out = {}
    for key, v in value.items():
        m = _ERR_KEY.fullmatch(key)
        if m:
            n = value[f"{m[1] or ''}n"]
            out[key] = v / n if n else None
        else:  # counts as ints; sums of other names (a loss) as they are
            out[key] = int(v) if key == "n" or key.endswith("_n") else v
    return out


# ------------------------------------------------------------------------------------- report
LABEL_SETS = (("", "ILSVRC2012"), ("real_", "ReaL"))  # key prefix in the figures -> name in the table


def figure_table(by_view: dict[str, dict], info: dict | None = None) -> str:
    """The small results table of `imgnet test`: one row per (view, label set) with top-1 and top-5 error
    and n, from `rates` figures per view ({"center": figures, "ten-crop": figures}); then one line for
    ReaL's absence and one for the blacklist, from `LabelSets.info()`."""
    lines = [f"{'view':<9} {'labels':<11} {'top-1 err':>9} {'top-5 err':>9} {'n':>7}"]
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    for view, f in by_view.items():
        for prefix, name in LABEL_SETS:
            if f"{prefix}n" in f:
                lines.append(f"{view:<9} {name:<11} {fmt(f.get(prefix + 'top1_err')):>9} "
                             f"{fmt(f.get(prefix + 'top5_err')):>9} {f[prefix + 'n']:>7,}")
    info = info or {}
    if info.get("real_reason"):
        lines.append(f"ReaL: not computed: {info['real_reason']}")
    if info.get("exclude_blacklist"):
        n = info["excluded"]
        lines.append(f"blacklist: {n:,} image{'s' * (n != 1)} of the ILSVRC2015 val blacklist left out of every "
                     "figure")
    return "\n".join(lines)

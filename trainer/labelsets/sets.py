"""The label sets one split is scored against, aligned with its records, and their per-image values.

Everything is per image, so that an evaluation loop can sum it under names and divide at the end:

    sets = label_sets(split.names, labels_json, exclude=("blacklist",))   # once per split
    for x, y in loader:                                 # records in split order (no shuffle)
        top = model(x).topk(5, dim=1).indices           # (B, 5) best first
        v = sets.batch(top, y, start)                   # records start .. start + B - 1
        sums = {k: sums.get(k, 0) + t.sum() for k, t in v.items()}
        start += len(y)
    figures = rates(sums)  # n, top1_err, top5_err and, where a label list applies, real_n, real_top1_err, ...
    sets.info()            # for the report JSON: which sets applied (or why not), what was left out

`image_values` takes numpy arrays or torch tensors alike (same ops), so the sums can stay on the device.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from imagenet_prep.errors import ImgnetError
from trainer.eval.topk import topk_wrong
from trainer.labelsets import registry

_ERR_KEY = re.compile(r"(\w+_)?top\d+_err")  # real_top1_err -> its count is real_n; top5_err -> n


@dataclass
class LabelSets:
    """The label sets of one split (`label_sets`). lists: {name: int64 (N, L) right classes padded with -1}
    for the label lists that apply; reasons: {name: why not} for those that do not; keep: bool (N,), False
    for a record left out by an exclusion (None: all count); exclude: the exclusions applied."""

    n_records: int
    lists: dict
    reasons: dict
    keep: np.ndarray | None = None
    exclude: tuple = ()
    device_copies: dict = field(default_factory=dict, repr=False)

    @property
    def excluded(self) -> int:
        return 0 if self.keep is None else int((~self.keep).sum())

    def on(self, device) -> tuple:
        """({name: rows int64 (N, L)}, keep bool (N,) or None) as tensors on `device`; copied once per device
        (50,000 x 9 int64: 3.6 MB), so that a loop indexes them there without a host sync."""
        import torch

        device = torch.device(device)
        if device not in self.device_copies:
            lists = {k: torch.from_numpy(v).to(device) for k, v in self.lists.items()}
            self.device_copies[device] = lists, None if self.keep is None else torch.from_numpy(self.keep).to(device)
        return self.device_copies[device]

    def batch(self, top, y, start: int) -> dict:
        """`image_values` of the records start .. start + len(y) - 1, in the split's record order."""
        stop = start + len(y)
        assert stop <= self.n_records, (start, len(y), self.n_records)
        lists, keep = (self.lists, self.keep) if isinstance(top, np.ndarray) else self.on(top.device)
        return image_values(top, y, {k: v[start:stop] for k, v in lists.items()},
                            None if keep is None else keep[start:stop])

    def info(self) -> dict:
        """What the figures were computed over, for a report: per label list {name: applied, name_reason},
        per exclusion {exclude_name: applied}, then "excluded" (records left out)."""
        out = {}
        for s in registry.label_lists():
            out.update({s.name: s.name in self.lists, f"{s.name}_reason": self.reasons.get(s.name)})
        out.update({f"exclude_{e.name}": e.name in self.exclude for e in registry.exclusions()})
        return {**out, "excluded": self.excluded}


def label_sets(names, labels_json: dict, exclude=(), exclude_blacklist: bool = False) -> LabelSets:
    """The label sets of a split: every registered label list that applies (the others with the reason);
    `exclude`, names of registered exclusions whose records are left out of every figure (ImgnetError where
    one does not apply to the split); `exclude_blacklist` adds "blacklist"."""
    exclude = tuple(exclude) + (("blacklist",) if exclude_blacklist else ())
    unknown = sorted(set(exclude) - {e.name for e in registry.exclusions()})
    if unknown:
        raise ImgnetError(f"exclude={unknown}; expected names of {', '.join(e.name for e in registry.exclusions())}")
    lists, reasons = {}, {}
    for s in registry.label_lists():
        rows, reason = s.lists(names, labels_json)
        if rows is None:
            reasons[s.name] = reason
        else:
            lists[s.name] = rows
    keep = None
    for e in registry.exclusions():
        if e.name in exclude:
            out = e.excluded(names)
            keep = ~out if keep is None else keep & ~out
    return LabelSets(len(names), lists, reasons, keep, exclude)


def image_values(top, y, lists: dict | None = None, keep=None) -> dict:
    """Per-image 0/1 values to sum over a split (numpy arrays or torch tensors, any device).

    top: int (B, k) predictions best first (k <= 5); y: int (B,) original labels; lists: {name: int (B, L)
    right classes padded with -1} of label lists, or None; keep: bool (B,) (False: left out), or None.
    Returns {"n", "top1_err", "top5_err"} and per label list {"<name>_n", "<name>_top1_err",
    "<name>_top5_err"}: each (B,) int64, 1 where the image counts / is wrong and counts."""
    n = _ones(top[:, 0]) if keep is None else keep.reshape(-1) != 0  # (B,) bool: the images that count
    out = {"n": n, "top1_err": n & topk_wrong(top, y, 1), "top5_err": n & topk_wrong(top, y)}
    for name, rows in (lists or {}).items():
        counted = n & (rows >= 0).any(1)
        out.update({f"{name}_n": counted, f"{name}_top1_err": counted & topk_wrong(top, rows, 1),
                    f"{name}_top5_err": counted & topk_wrong(top, rows)})
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


def figure_table(by_view: dict[str, dict], info: dict | None = None) -> str:
    """The small results table of `imgnet test`: one row per (view, label set) with top-1 and top-5 error
    and n, from `rates` figures per view ({"center": figures, "ten-crop": figures}); then one line per label
    list that was not computed and per exclusion applied, from `LabelSets.info()`."""
    lines = [f"{'view':<9} {'labels':<11} {'top-1 err':>9} {'top-5 err':>9} {'n':>7}"]
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    for view, f in by_view.items():
        for prefix, name in registry.titles().items():
            if f"{prefix}n" in f:
                lines.append(f"{view:<9} {name:<11} {fmt(f.get(prefix + 'top1_err')):>9} "
                             f"{fmt(f.get(prefix + 'top5_err')):>9} {f[prefix + 'n']:>7,}")
    info = info or {}
    for s in registry.label_lists():
        if info.get(f"{s.name}_reason"):
            lines.append(f"{s.title}: not computed: {info[f'{s.name}_reason']}")
    for e in registry.exclusions():
        if info.get(f"exclude_{e.name}"):
            lines.append(e.describe(info["excluded"]))
    return "\n".join(lines)

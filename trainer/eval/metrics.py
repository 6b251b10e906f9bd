"""The figures of an evaluation, each defined once as a per-batch sum over the images that count; the means
are sum / n. Training validation sums them across processes under their names, log.jsonl writes them as
val_<name>, the `imgnet test` JSON as <name>: a metric added to METRICS needs no other edit. The label lists of
trainer/labelsets (ReaL) add their figures (`label_set_sums`) where they apply to the split."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from trainer.eval.topk import topk_wrong
from trainer.labelsets import registry as labelsets
from trainer.labelsets.sets import image_values, rates


class Scored(NamedTuple):
    """What a metric sees of one batch: the images that count (a record left out, such as a blacklisted one
    with --exclude-blacklist, is already gone from every field). A metric that needs more of each image gets
    a new field here, and the metrics that do not use it stay as they are."""

    logp: torch.Tensor  # float32 (B, C): log of the mean softmax over each image's views
    y: torch.Tensor  # int64 (B,): labels
    top: torch.Tensor  # int64 (B, min(5, C)): classes, best first
    index: torch.Tensor | None = None  # int64 (B,): the images' split indices; None: a loader of unknown order
    lists: dict | None = None  # {label list name: int64 (B, L) right classes padded with -1} (trainer/labelsets)


# name -> the batch's sum over its images (a tensor on the device); the mean is sum / n
METRICS = {
    "top1_err": lambda s: topk_wrong(s.top, s.y, 1).sum(),
    "top5_err": lambda s: topk_wrong(s.top, s.y, 5).sum(),
    "loss": lambda s: F.nll_loss(s.logp, s.y, reduction="sum"),  # NLL of the view-averaged softmax
}


def label_set_figures(names=None) -> tuple[str, ...]:
    """The summed figures of the registered label lists (of those in `names`, when given): real_n,
    real_top1_err, real_top5_err; the two errors are means over <name>_n, the images whose list is not empty."""
    return labelsets.figure_keys(names)


def label_set_sums(s: Scored) -> dict:
    """{name: the batch's sum} of the label lists' figures, {} when the batch has none."""
    if not s.lists:
        return {}
    v = image_values(s.top, s.y, s.lists)
    return {k: v[k].sum() for k in label_set_figures() if k in v}


def figures(sums: dict, n: int) -> dict:
    """Means of summed figures: every METRICS entry over the n images that count, the label lists' over
    their <name>_n (None where that is 0)."""
    out = metric_means({k: sums[k] for k in METRICS}, n)
    sets = {k: sums[k] for k in label_set_figures() if k in sums}
    return {**out, **rates(sets)} if sets else out


def metric_means(sums: dict, n: int) -> dict:
    """{name: sum / n} for the sums of METRICS over n images."""
    return {k: v / n for k, v in sums.items()}


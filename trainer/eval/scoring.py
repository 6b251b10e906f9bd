"""`evaluate`: a model over every batch of an evaluation loader, as the figures of trainer/eval/metrics.py.

    from trainer.evaluate import evaluate
    m = evaluate(model, val_loader)     # Loader(split, transform, train=False, views="center")
    m["top1_err"], m["top5_err"], m["loss"], m["n"]     # fractions in [0, 1], mean NLL, images
    m["sums"]                           # {name: sum over the images}: what processes add up

Beyond the split's own labels (trainer/labelsets): an evaluation Loader delivers the records in split order,
so each batch's split indices are known before it arrives (`Scored.index`). With label sets,

    sets = label_sets(split.names, labels_json, exclude_blacklist=True)
    m = evaluate(model, loader, label_sets=sets)   # blacklisted records count nowhere, not even in n
    m["real_top1_err"], m["real_top5_err"], m["real_n"]   # the label lists that apply (ReaL on the 2012 val)

and with a ten-view loader `center_of_ten=True` adds m["center"], the center crop's figures from the same
batches. The sums stay on the device: the per-record arrays are copied there once and sliced by position.

`evaluate` puts the model in eval mode and restores its previous mode; it runs under
torch.inference_mode (and autocast with `amp`). With a views="ten" loader (rows 10*i..10*i+9 are image
i) it averages the softmax of the ten views, section 4.1 of the paper; the view count is read from the
batch shapes, `ten_crop=True` only asserts it.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from imagenet_prep.errors import ImgnetError
from trainer.amp import autocast
from trainer.eval.metrics import METRICS, Scored, figures, label_set_figures, label_set_sums
from trainer.eval.views import VIEWS, average_views, center_view


def delivery_order(loader) -> np.ndarray | None:
    """Split indices of the records an evaluation loader delivers, in delivery order: a trainer.loader.Loader
    with train=False does not shuffle, so its plan is known before the first batch (and is the same in every
    epoch). None for other iterables."""
    plan = getattr(loader, "plan", None)
    if plan is None or getattr(loader, "train", True):
        return None
    return plan(0).indices


class _Records:
    """The split records behind each batch of an evaluation loader: their split indices, which of them count
    (the label sets' keep flags) and their ReaL rows. Everything per batch is a slice or a gather of tensors
    copied to the device once, at host-known positions: scoring adds no host sync."""

    def __init__(self, loader, sets, device: torch.device):
        order = delivery_order(loader)
        if order is None and sets is not None:
            raise ImgnetError("label sets need the split index of every record; expected a trainer.loader.Loader "
                              "with train=False (it delivers the records in a known order)")
        self.order, self.pos, self.sets = order, 0, sets is not None
        self.index = None if order is None else torch.from_numpy(order).to(device)
        self.lists = {} if sets is None else sets.on(device)[0]  # {label list: rows (N, L)} on the device
        self.keep = None if sets is None or sets.keep is None else sets.keep[order]  # bool, delivery order
        if self.keep is not None:
            self.cum = np.concatenate([[0], np.cumsum(self.keep)])  # records that count before each position
            self.kept = torch.from_numpy(np.flatnonzero(self.keep)).to(device)  # their positions

    def take(self, b: int) -> tuple:
        """(rows, index, lists, counted) of the next b records: rows, the positions in the batch of the records
        that count (None: all of them); index and lists, their split indices and label-list rows (or None); counted,
        how many count."""
        lo, hi = self.pos, self.pos + b
        self.pos = hi
        if self.order is not None and hi > len(self.order):
            raise ImgnetError(f"the loader delivered more than the {len(self.order)} records it planned")
        index = None if self.index is None else self.index[lo:hi]
        rows, counted = None, b
        if self.keep is not None:
            rows = self.kept[self.cum[lo]:self.cum[hi]] - lo
            index, counted = index[rows], int(self.cum[hi] - self.cum[lo])
        return rows, index, ({k: v[index] for k, v in self.lists.items()} or None), counted

    def counted(self, n_records: int) -> np.ndarray:
        """bool (n_records,): the delivered records that count, in delivery order."""
        return np.ones(n_records, bool) if self.keep is None else self.keep[:n_records].copy()


class _Tally:
    """The sums of one way of scoring the batches (the loader's views averaged, or the center view alone)."""

    def __init__(self, device: torch.device, lists, predictions: bool):
        keys = list(METRICS) + list(label_set_figures(lists))  # and those of the label lists that apply
        self.sums = {k: torch.zeros((), dtype=torch.float64, device=device) for k in keys}  # on the device: no sync
        self.tops = [] if predictions else None

    def add(self, logp: torch.Tensor, y: torch.Tensor, take: tuple) -> None:
        rows, index, lists, counted = take
        top = logp.topk(min(5, logp.shape[1]), dim=1).indices  # (B, k) best first
        if self.tops is not None:
            self.tops.append(top)
        if counted == 0:
            return
        if rows is not None:  # leave out the records that do not count, before any metric sees them
            logp, y, top = logp[rows], y[rows], top[rows]
        scored = Scored(logp, y, top, index, lists)
        for k, fn in METRICS.items():
            self.sums[k] += fn(scored).double()
        for k, v in label_set_sums(scored).items():
            self.sums[k] += v.double()

    def result(self, n: int, views: int) -> dict:
        sums = {k: v.item() for k, v in self.sums.items()}
        out = {**figures(sums, n), "sums": sums, "n": n, "views": views}
        if self.tops is not None:
            out["top5"] = torch.cat(self.tops).cpu().numpy().astype(np.int64)
        return out


def _views_of(x: torch.Tensor, y: torch.Tensor, views: int | None, ten_crop: bool | None, center: bool) -> int:
    """Views per image of a batch (read from its shapes), checked against what the caller asked."""
    if views is None:
        views = x.shape[0] // max(1, y.shape[0])
        if ten_crop is not None and (views == VIEWS) != bool(ten_crop):
            raise ImgnetError(f"ten_crop={ten_crop} but the loader gives {views} view(s) per image; "
                              f"expected a Loader with views={'ten' if ten_crop else 'center'!r}")
        if center and views != VIEWS:
            raise ImgnetError(f"center_of_ten needs the ten views, but the loader gives {views} per image; "
                              "expected a Loader with views='ten'")
    if x.shape[0] != views * y.shape[0]:
        raise ImgnetError(f"loader batch of {x.shape[0]} inputs for {y.shape[0]} labels; expected "
                          f"{views} view(s) per image")
    return views


def evaluate(model: torch.nn.Module, loader, ten_crop: bool | None = None, device=None,
             progress: bool | str = False, return_predictions: bool = False, amp: str = "off",
             label_sets=None, center_of_ten: bool = False) -> dict:
    """Top-1/top-5 error and mean loss of `model` over every batch of `loader` (yielding (x, y)).

    Returns the mean of every METRICS entry by name ("top1_err", "top5_err", "loss"), their "sums", "n" and
    "views". `label_sets` (trainer.labelsets.LabelSets of the loader's split; needs a Loader with
    train=False): records it leaves out (blacklisted) count in no figure and not in n, and on the ILSVRC2012
    val the figures of the label lists that apply join (`label_set_figures`: ReaL's). `center_of_ten` (a views="ten" loader): also "center", the
    same result for the plain center crop alone (`center_view`) from the same batches, equal bit for bit to
    a center-crop run's (`_center_logp`). With return_predictions also "y" (int64 (N,)), "top5" (int64
    (N, min(5, C)), best first), "counted" (bool (N,)) and, where known, "index" (split indices) for every
    delivered record, in loader order. `device` defaults to the model's. `progress`: a bar counting the images
    on stderr where it is a terminal (a string: the bar's name)."""
    from tqdm import tqdm

    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    records = _Records(loader, label_sets, device)
    tallies = {"views": _Tally(device, records.lists, return_predictions)}
    if center_of_ten:
        tallies["center"] = _Tally(device, records.lists, return_predictions)
    n, delivered, views, ys = 0, 0, None, []
    # a bar of images on stderr (one update per batch: a ten-crop batch is ten forward passes' worth), off where
    # stderr is no terminal; `progress` a string names it ("val" in training)
    bar = tqdm(total=len(records.order) if records.order is not None else None, unit="img",
               desc=progress if isinstance(progress, str) else "test", dynamic_ncols=True, file=sys.stderr,
               disable=None if progress else True)
    try:
        with torch.inference_mode():
            for x, y in loader:
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
                views = _views_of(x, y, views, ten_crop, center_of_ten)
                with autocast(amp, device.type):
                    logits = model(x)
                take = records.take(y.shape[0])
                tallies["views"].add(average_views(logits, views), y, take)
                if center_of_ten:
                    tallies["center"].add(_center_logp(model, x, views, amp, device), y, take)
                n, delivered = n + take[3], delivered + y.shape[0]
                if return_predictions:
                    ys.append(y)
                bar.update(y.shape[0])
    finally:
        bar.close()
        model.train(was_training)
    _check_delivered(delivered, n, records)
    out = tallies["views"].result(n, views)
    if center_of_ten:
        out["center"] = tallies["center"].result(n, 1)
    if return_predictions:
        extra = {"y": torch.cat(ys).cpu().numpy().astype(np.int64), "counted": records.counted(delivered)}
        if records.order is not None:
            extra["index"] = records.order[:delivered].copy()
        for r in (out, out.get("center", {})):
            r.update(extra)
    return out


def _center_logp(model, x: torch.Tensor, views: int, amp: str, device: torch.device) -> torch.Tensor:
    """The center view's log-probabilities as a center-crop pass computes them: its B input rows (the same
    values a center loader delivers) through the model as a batch of their own. Reading row 4 of the ten-view
    output instead differs in the last bits: matrix-multiply kernels block by the row count (AlexNet's logits
    move by about 2e-6 between a batch of 4 and of 40 rows on the CPU), and the figures are meant to equal a
    center run's exactly. Costs a tenth more forward work; the data is still read once."""
    b = x.shape[0] // views
    center = x.view(b, views, *x.shape[1:])[:, center_view()].contiguous()
    with autocast(amp, device.type):
        return average_views(model(center), 1)


def _check_delivered(delivered: int, n: int, records: _Records) -> None:
    if delivered == 0:
        raise ImgnetError("the loader yielded no images; expected a non-empty labelled split")
    if records.sets and delivered != len(records.order):  # the per-record label sets assume the whole plan
        raise ImgnetError(f"the loader delivered {delivered} of the {len(records.order)} records it planned; "
                          "expected each record once")
    if n == 0:
        raise ImgnetError(f"every one of the {delivered} images was left out (the blacklist); expected at least "
                          "one image to score")


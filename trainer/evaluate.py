"""Evaluation: the ten test views, top-k error, WordNet mistake severity, `imgnet test` and `imgnet predict`.

For the training loop (per-epoch validation):

    from trainer.evaluate import evaluate
    m = evaluate(model, val_loader)     # Loader(split, transform, train=False, views="center")
    m["top1_err"], m["top5_err"], m["loss"], m["n"]     # fractions in [0, 1], mean NLL, images
    m["sums"]                           # {name: sum over the images}: what processes add up

Every metric is defined once, in METRICS, as a sum over images: training validation (log.jsonl as
val_<name>), the per-epoch log and the `imgnet test` JSON all take whatever METRICS holds.

Beyond the 2012 labels (trainer/labelsets.py): an evaluation Loader delivers the records in split order,
so each batch's split indices are known before it arrives (`Scored.index`). With label sets,

    sets = label_sets(split.names, labels_json, exclude_blacklist=True)
    m = evaluate(model, loader, label_sets=sets)   # blacklisted records count nowhere, not even in n
    m["real_top1_err"], m["real_top5_err"], m["real_n"]   # on the ILSVRC2012 val (REAL_FIGURES)

and with a ten-view loader `center_of_ten=True` adds m["center"], the center crop's figures from the same
batches. The sums stay on the device: the per-record arrays are copied there once and sliced by position.

`evaluate` puts the model in eval mode and restores its previous mode; it runs under
torch.inference_mode (and bf16 autocast on CUDA). With a views="ten" loader (rows 10*i..10*i+9 are image
i) it averages the softmax of the ten views, section 4.1 of the paper; the view count is read from the
batch shapes, `ten_crop=True` only asserts it.

Network input at test time is the training input with alpha = 0 (no PCA lighting): x = crop(P - M), the
mean image (or mean RGB) M taken from the checkpoint, cropped and mirrored together with the image.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections import deque
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from imagenet_prep.atomic import write_json, write_text
from imagenet_prep.errors import ImgnetError
from trainer import checkpoint as ck
from trainer.labelsets import image_values, rates
from trainer.data import TEN_CROP_FLIPS, TEN_CROP_OFFSETS, center_crop, ten_crop, view_geometry  # noqa: F401 - ten_crop: the contract's name

VIEWS = 10
TOP_CONFUSIONS = 20


# ---------------------------------------------------------------------------------------- views
def eval_views(image: np.ndarray, ten: bool) -> np.ndarray:
    """uint8 (256, 256, 3) -> the ten views (10, 224, 224, 3), or the center crop as (1, 224, 224, 3)."""
    return ten_crop(image) if ten else center_crop(image)[None]


@functools.cache
def center_view() -> int:
    """Which of the ten views is the plain center crop: the row of TEN_CROP_OFFSETS/TEN_CROP_FLIPS that cuts
    where a center-crop loader cuts (view_geometry("center")), unmirrored. Its figures then equal those of a
    center-crop pass over the same batches."""
    tops, lefts, flips = view_geometry("center", 1)
    at = [i for i, (o, f) in enumerate(zip(TEN_CROP_OFFSETS, TEN_CROP_FLIPS))
          if tuple(o) == (int(tops[0]), int(lefts[0])) and bool(f) == bool(flips[0])]
    assert len(at) == 1, at
    return at[0]


def average_views(logits: torch.Tensor, views: int) -> torch.Tensor:
    """logits (B*views, C), image-major -> log of the mean softmax over each image's views, (B, C).

    log(mean_v softmax(z_v)) = logsumexp_v(log_softmax(z_v)) - log(views), computed without underflow."""
    logp = F.log_softmax(logits.float(), dim=1)
    if views == 1:
        return logp
    b = logp.shape[0] // views
    assert b * views == logp.shape[0], (logp.shape, views)
    return torch.logsumexp(logp.view(b, views, -1), dim=1) - math.log(views)


# -------------------------------------------------------------------------------------- metrics
class Scored(NamedTuple):
    """What a metric sees of one batch: the images that count (a record left out, such as a blacklisted one
    with --exclude-blacklist, is already gone from every field). A metric that needs more of each image gets
    a new field here, and the metrics that do not use it stay as they are."""

    logp: torch.Tensor  # float32 (B, C): log of the mean softmax over each image's views
    y: torch.Tensor  # int64 (B,): labels
    top: torch.Tensor  # int64 (B, min(5, C)): classes, best first
    index: torch.Tensor | None = None  # int64 (B,): the images' split indices; None: a loader of unknown order
    real: torch.Tensor | None = None  # int64 (B, L): ReaL classes padded with -1 (labelsets); None: no ReaL


# name -> the batch's sum over its images (a tensor on the device); the mean is sum / n. A metric added
# here shows up in training validation (summed across processes), log.jsonl (as val_<name>) and the
# `imgnet test` JSON (as <name>) with no other edit.
METRICS = {
    "top1_err": lambda s: (s.top[:, 0] != s.y).sum(),
    "top5_err": lambda s: (s.top != s.y.view(-1, 1)).all(dim=1).sum(),
    "loss": lambda s: F.nll_loss(s.logp, s.y, reduction="sum"),  # NLL of the view-averaged softmax
}
# the ReaL figures (trainer.labelsets.image_values), summed where the split is the ILSVRC2012 val; the two
# errors are means over real_n, the images whose ReaL list is not empty
REAL_FIGURES = ("real_n", "real_top1_err", "real_top5_err")


def real_sums(s: Scored) -> dict:
    """{name: the batch's sum} of REAL_FIGURES, {} when the batch has no ReaL labels."""
    if s.real is None:
        return {}
    v = image_values(s.top, s.y, s.real)
    return {k: v[k].sum() for k in REAL_FIGURES}


def figures(sums: dict, n: int) -> dict:
    """Means of summed figures: every METRICS entry over the n images that count, ReaL's over real_n (None
    where real_n is 0)."""
    out = metric_means({k: sums[k] for k in METRICS}, n)
    real = {k: sums[k] for k in REAL_FIGURES if k in sums}
    return {**out, **rates(real)} if real else out


def metric_means(sums: dict, n: int) -> dict:
    """{name: sum / n} for the sums of METRICS over n images."""
    return {k: v / n for k, v in sums.items()}


def topk_errors(logits: torch.Tensor, y: torch.Tensor, ks=(1, 5)) -> tuple[float, ...]:
    """Fraction of rows whose true class is not among the k highest scores, for each k in `ks`
    (k is capped at the class count)."""
    n, c = logits.shape
    if n == 0:
        raise ImgnetError("top-k error of an empty batch is undefined; expected at least one row")
    top = logits.topk(min(max(ks), c), dim=1).indices
    hit = top == y.view(-1, 1)
    return tuple(1.0 - hit[:, :min(k, c)].any(dim=1).float().mean().item() for k in ks)


def upward_distances(wnid: str, hierarchy: dict) -> dict[str, int]:
    """{ancestor: length of the shortest upward path from `wnid`}, `wnid` itself at 0 (breadth first,
    so a node reached along two parents keeps the shorter path)."""
    dist = {wnid: 0}
    queue = deque([wnid])
    while queue:
        w = queue.popleft()
        for p in hierarchy.get(w, ()):
            if p not in dist:
                dist[p] = dist[w] + 1
                queue.append(p)
    return dist


def wordnet_distance(a: str, b: str, hierarchy: dict, _up: dict | None = None) -> int | None:
    """min over common ancestors c of max(d(a, c), d(b, c)), d the shortest upward path; WordNet is a DAG
    (some classes have two parents), so every common ancestor is a candidate. None when a and b share
    no ancestor in `hierarchy` (e.g. ImageFolder classes that are not wnids)."""
    up = _up if _up is not None else {}
    for w in (a, b):
        if w not in up:
            up[w] = upward_distances(w, hierarchy)
    da, db = up[a], up[b]
    common = da.keys() & db.keys()
    return min(max(da[c], db[c]) for c in common) if common else None


def mistake_severity(y_true: np.ndarray, y_pred: np.ndarray, wnids: list[str], hierarchy: dict) -> dict:
    """Mean WordNet distance (`wordnet_distance`) between true and predicted class over the top-1 mistakes.

    Returns {"mistake_severity": mean or None, "severity_n": mistakes with a defined distance,
    "distances": {(t, p): distance}} for the distinct mistaken pairs."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    wrong = y_true != y_pred
    pairs, counts = np.unique(np.stack([y_true[wrong], y_pred[wrong]], axis=1), axis=0, return_counts=True)
    up: dict = {}
    distances, total, n = {}, 0, 0
    for (t, p), k in zip(pairs.tolist(), counts.tolist()):
        d = wordnet_distance(wnids[t], wnids[p], hierarchy, up) if hierarchy else None
        distances[(t, p)] = d
        if d is not None:
            total += d * k
            n += k
    return {"mistake_severity": total / n if n else None, "severity_n": n, "distances": distances}


# ------------------------------------------------------------------------------------- evaluate
def autocast(amp: str, device_type: str):
    """amp "off": float32; "bf16" or "fp16": autocast on the device (training and evaluation alike)."""
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


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
        real, _ = (None, None) if sets is None else sets.on(device)
        self.real = real
        self.keep = None if sets is None or sets.keep is None else sets.keep[order]  # bool, delivery order
        if self.keep is not None:
            self.cum = np.concatenate([[0], np.cumsum(self.keep)])  # records that count before each position
            self.kept = torch.from_numpy(np.flatnonzero(self.keep)).to(device)  # their positions

    def take(self, b: int) -> tuple:
        """(rows, index, real, counted) of the next b records: rows, the positions in the batch of the records
        that count (None: all of them); index and real, their split indices and ReaL rows (or None); counted,
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
        return rows, index, (None if self.real is None else self.real[index]), counted

    def counted(self, n_records: int) -> np.ndarray:
        """bool (n_records,): the delivered records that count, in delivery order."""
        return np.ones(n_records, bool) if self.keep is None else self.keep[:n_records].copy()


class _Tally:
    """The sums of one way of scoring the batches (the loader's views averaged, or the center view alone)."""

    def __init__(self, device: torch.device, real: bool, predictions: bool):
        keys = list(METRICS) + (list(REAL_FIGURES) if real else [])
        self.sums = {k: torch.zeros((), dtype=torch.float64, device=device) for k in keys}  # on the device: no sync
        self.tops = [] if predictions else None

    def add(self, logp: torch.Tensor, y: torch.Tensor, take: tuple) -> None:
        rows, index, real, counted = take
        top = logp.topk(min(5, logp.shape[1]), dim=1).indices  # (B, k) best first
        if self.tops is not None:
            self.tops.append(top)
        if counted == 0:
            return
        if rows is not None:  # leave out the records that do not count, before any metric sees them
            logp, y, top = logp[rows], y[rows], top[rows]
        scored = Scored(logp, y, top, index, real)
        for k, fn in METRICS.items():
            self.sums[k] += fn(scored).double()
        for k, v in real_sums(scored).items():
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
             progress: bool = False, return_predictions: bool = False, amp: str = "off",
             label_sets=None, center_of_ten: bool = False) -> dict:
    """Top-1/top-5 error and mean loss of `model` over every batch of `loader` (yielding (x, y)).

    Returns the mean of every METRICS entry by name ("top1_err", "top5_err", "loss"), their "sums", "n" and
    "views". `label_sets` (trainer.labelsets.LabelSets of the loader's split; needs a Loader with
    train=False): records it leaves out (blacklisted) count in no figure and not in n, and on the ILSVRC2012
    val the ReaL figures join (REAL_FIGURES). `center_of_ten` (a views="ten" loader): also "center", the
    same result for the plain center crop alone (`center_view`) from the same batches, equal bit for bit to
    a center-crop run's (`_center_logp`). With return_predictions also "y" (int64 (N,)), "top5" (int64
    (N, min(5, C)), best first), "counted" (bool (N,)) and, where known, "index" (split indices) for every
    delivered record, in loader order. `device` defaults to the model's."""
    from tqdm import tqdm

    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    records = _Records(loader, label_sets, device)
    real = records.real is not None
    tallies = {"views": _Tally(device, real, return_predictions)}
    if center_of_ten:
        tallies["center"] = _Tally(device, real, return_predictions)
    n, delivered, views, ys = 0, 0, None, []
    bar = tqdm(total=len(loader), unit="batch", desc="test", dynamic_ncols=True, disable=None if progress else True)
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
                bar.update(1)
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


# ----------------------------------------------------------------------------------- checkpoints
def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def loader_workers(workers: int | None, device) -> int | None:
    """Loader processes for evaluation: none on the CPU, where the forward pass (about 0.1 s per view for
    AlexNet) dwarfs the crop copies and a worker would only compete with torch's threads for the cores;
    the loader's default (all cores but one) on an accelerator."""
    if workers is None and torch.device(device).type == "cpu":
        return 0
    return workers


check_checkpoint_labels = ck.check_labels  # the checks live with the checkpoint schema


def _class_names(labels: dict) -> tuple[list[str], list[str]]:
    return [c["wnid"] for c in labels["classes"]], [c.get("words") or c["wnid"] for c in labels["classes"]]


# ------------------------------------------------------------------------------------ submission
def write_submission(path, names: list[str], top5: np.ndarray, labels: dict) -> int:
    """The devkit's classification format (devkit_t12/evaluation/demo.val.pred.txt): one line per image in
    file-name order, five ILSVRC2012_IDs (1..1000) best first, each followed by a space. Returns the lines."""
    ids = submission_ids(labels, path)
    order = sorted(range(len(names)), key=lambda i: names[i])
    lines = ["".join(f"{ids[int(c)]} " for c in top5[i]) + "\n" for i in order]
    write_text(path, "".join(lines))
    return len(lines)


def submission_ids(labels: dict, path="the submission") -> list[int]:
    """ILSVRC2012_ID of each label index; ImgnetError when the label map lacks them (ImageFolder classes)."""
    ids = [c.get("ilsvrc2012_id") for c in labels["classes"]]
    missing = [c["wnid"] for c, i in zip(labels["classes"], ids) if not isinstance(i, int)]
    if missing:
        raise ImgnetError(f"cannot write {path}: {len(missing)} classes have no ILSVRC2012_ID "
                          f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); the devkit format "
                          "needs ILSVRC2012 wnids as classes")
    if len(ids) < 5:
        raise ImgnetError(f"cannot write {path}: the devkit format needs five guesses per image but the "
                          f"checkpoint has {len(ids)} classes")
    return ids


# ---------------------------------------------------------------------------------------- report
def summarize(y: np.ndarray, top5: np.ndarray, labels: dict) -> dict:
    """per_class top-1 error, the most frequent confusions (with WordNet distances) and mistake severity."""
    wnids, words = _class_names(labels)
    c = len(wnids)
    pred = top5[:, 0]
    n_per = np.bincount(y, minlength=c)
    wrong_per = np.bincount(y[pred != y], minlength=c)
    per_class = [{"index": i, "wnid": wnids[i], "words": words[i], "n": int(n_per[i]),
                  "top1_err": float(wrong_per[i] / n_per[i]) if n_per[i] else None} for i in range(c)]
    sev = mistake_severity(y, pred, wnids, labels.get("hierarchy") or {})
    wrong = pred != y
    pairs, counts = np.unique(np.stack([y[wrong], pred[wrong]], axis=1), axis=0, return_counts=True)
    order = sorted(range(len(counts)), key=lambda j: (-counts[j], *pairs[j]))[:TOP_CONFUSIONS]
    confusions = [{"true": int(t), "true_wnid": wnids[t], "true_words": words[t],
                   "pred": int(p), "pred_wnid": wnids[p], "pred_words": words[p], "count": int(counts[j]),
                   "wordnet_distance": sev["distances"].get((int(t), int(p)))}
                  for j in order for t, p in [pairs[j].tolist()]]
    return {"mistake_severity": sev["mistake_severity"], "severity_n": sev["severity_n"],
            "per_class": per_class, "confusions": confusions}


VIEW_NAMES = ("center", "ten-crop")  # `imgnet test --views`, in the order they are reported


def parse_views(views=None, ten_crop: bool = False) -> tuple[str, ...]:
    """The views to score, in VIEW_NAMES order: `views` "center", "ten-crop" or "center,ten-crop" (or a
    sequence of those names); None: ten-crop with `ten_crop` (the --ten-crop switch), else center."""
    if views is None:
        return ("ten-crop",) if ten_crop else ("center",)
    asked = [v.strip() for v in views.split(",")] if isinstance(views, str) else [str(v) for v in views]
    bad = [v for v in asked if v not in VIEW_NAMES] or ([] if asked else [""])
    if bad:
        raise ImgnetError(f"--views {','.join(asked)}: unknown view {bad[0]!r}; expected center, ten-crop or "
                          "center,ten-crop")
    if ten_crop and "ten-crop" not in asked:
        raise ImgnetError(f"--ten-crop asks for the ten-crop view but --views {','.join(asked)} leaves it out; "
                          "expected --views with ten-crop, or one of the two options")
    return tuple(v for v in VIEW_NAMES if v in asked)


def report_name(split: str, view: str, exclude_blacklist: bool = False) -> str:
    """test-<view>.json for the val split (the names scripts and `imgnet compare` know), test-<split>-<view>.json
    for any other split, test-<split>-no-blacklist-<view>.json without the blacklist's images: no result
    overwrites another's."""
    if exclude_blacklist:
        return f"test-{split}-no-blacklist-{view}.json"
    return f"test-{view}.json" if split == "val" else f"test-{split}-{view}.json"


def _check_labelled(s, split: str, data_dir) -> None:
    unlabelled = int((s.labels < 0).sum())
    if unlabelled:
        raise ImgnetError(f"the {split} split in {data_dir} has no labels for {unlabelled} of {len(s)} "
                          "images; `imgnet test` needs a labelled split (`imgnet predict` takes unlabelled images)")
    if len(s) == 0:
        raise ImgnetError(f"the {split} split in {data_dir} is empty; expected labelled images")


def run_test(data_dir, ckpt_path, ten_crop: bool = False, split: str = "val", batch_size: int = 128,
             workers: int | None = None, device: str | None = None, submission=None,
             progress: bool = True, amp: str = "off", arch: str | None = None, views=None,
             exclude_blacklist: bool = False) -> dict:
    """`imgnet test`: evaluate a checkpoint on a whole packed split in each of `views` (`parse_views`; with
    center and ten-crop, one ten-view pass gives both: the center figures come from its center crops,
    `center_view`, scored as a center run scores them). On the ILSVRC2012 val, or any subset of its images, the ReaL figures come too; elsewhere
    `real_reason` says why not. `exclude_blacklist` leaves the 2015 blacklist's images out of every figure
    (ImgnetError where the split is not ILSVRC2012 val images). Writes one JSON per view beside the
    checkpoint (`report_name`) and, when asked, the devkit submission file, made with the last view asked
    (ten-crop when asked) over every record. Returns the last view's report plus "by_view": {view: report}.
    `arch`: the user's --arch, needed only for a checkpoint of a module:callable model."""
    from imagenet_prep import open_split
    from imagenet_prep.labels import read_labels_json
    from trainer.checkpoint import load_checkpoint, model_from_checkpoint
    from trainer.data import InputTransform, check_split
    from trainer.labelsets import label_sets
    from trainer.loader import Loader

    views = parse_views(views, ten_crop)
    ckpt_path = Path(ckpt_path)
    ckpt = load_checkpoint(ckpt_path, map_location="cpu")
    data_labels = read_labels_json(data_dir)
    check_checkpoint_labels(ckpt, ckpt_path, data_labels, data_dir)
    labels = ckpt["labels"]
    if submission is not None:
        submission_ids(labels, submission)  # refuse before the long run, not after it
    device = torch.device(device or default_device())
    ten = "ten-crop" in views
    s = open_split(data_dir, split)
    try:  # LMDB allows one open environment per path and process: close it so a later open_split succeeds
        _check_labelled(s, split, data_dir)
        names, records = list(s.names), len(s)
        sets = label_sets(names, data_labels, exclude_blacklist=exclude_blacklist)  # refusals before the model
        model = model_from_checkpoint(ckpt, device=str(device), arch=arch)
        check_split(s, ckpt["stats"], len(labels["classes"]), labels)
        transform = InputTransform(ckpt["stats"], mean=ck.mean_mode(ckpt), lighting_std=0.0)
        with Loader(s, transform, batch_size, train=False, views="ten" if ten else "center",
                    workers=loader_workers(workers, device), device=str(device)) as loader:
            t0 = time.perf_counter()
            r = evaluate(model, loader, ten_crop=ten, device=device, progress=progress, return_predictions=True,
                         amp=amp, label_sets=sets, center_of_ten=len(views) > 1)
            seconds = time.perf_counter() - t0
    finally:
        s.close()
    assert r["n"] == records - sets.excluded, (r["n"], records, sets.excluded)  # every image once
    results = {"ten-crop": r, "center": r.get("center")} if ten else {"center": r}
    common = {"checkpoint": str(ckpt_path), "data": str(data_dir), "epoch": ckpt.get("epoch"), "device": str(device),
              "pass": "ten-crop" if ten else "center", "seconds": seconds, "images_per_s": records / seconds}
    by_view = {}
    for view in views:
        report = view_report(results[view], labels, {"split": split, "view": view}, sets.info(), common)
        out = ckpt_path.parent / report_name(split, view, exclude_blacklist)
        write_json(out, report)
        by_view[view] = {**report, "report_path": str(out)}
    main = dict(by_view[views[-1]])
    if submission is not None:
        main.update(submission_lines=write_submission(submission, names, results[views[-1]]["top5"], labels),
                    submission_path=str(submission), submission_view=views[-1])
    return {**main, "by_view": by_view}


def view_report(r: dict, labels: dict, head: dict, info: dict, common: dict) -> dict:
    """The test JSON of one view: its figures (METRICS over the n images that count, REAL_FIGURES where
    computed), what they were computed over (LabelSets.info), mistake severity, per-class errors and the
    confusions over the images that count, then `common` (checkpoint, device, timing)."""
    counted = r["counted"]
    summary = summarize(r["y"][counted], r["top5"][counted], labels)
    figs = {k: r[k] for k in (*METRICS, *REAL_FIGURES) if k in r}
    return {**head, "n": r["n"], **figs, **info, "mistake_severity": summary["mistake_severity"],
            "severity_n": summary["severity_n"], **common, "confusions": summary["confusions"],
            "per_class": summary["per_class"]}


# --------------------------------------------------------------------------------------- predict
def predict(ckpt, images: list, ten_crop: bool = False, device: str | None = None, topk: int = 5,
            batch_images: int = 16, arch: str | None = None) -> list[dict]:
    """`imgnet predict`: classify image files of any size and colour mode, prepared with prep's resize
    policy (shorter side 256, central 256x256, RGB), center crop or the ten views.

    `ckpt`: a checkpoint path or a loaded checkpoint dict. Returns one dict per image, in input order:
    {"file", "from_mode", "top": [{"rank", "index", "wnid", "words", "prob"}...]} or, for a file that cannot
    be read or decoded, {"file", "error": reason}; one bad file never stops the others."""
    from imagenet_prep.resize import BadImage, prepare_image
    from trainer.checkpoint import load_checkpoint, model_from_checkpoint
    from trainer.data import InputTransform

    ckpt_path = ckpt if not isinstance(ckpt, dict) else "checkpoint"
    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt, map_location="cpu")
    check_checkpoint_labels(ckpt, ckpt_path)
    wnids, words = _class_names(ckpt["labels"])
    device = torch.device(device or default_device())
    model = model_from_checkpoint(ckpt, device=str(device), arch=arch)
    transform = InputTransform(ckpt["stats"], mean=ck.mean_mode(ckpt), lighting_std=0.0)
    k = min(topk, len(wnids))

    results: list[dict] = [None] * len(images)  # type: ignore[list-item]
    pending: list[tuple[int, np.ndarray]] = []  # (position, uint8 (V, 224, 224, 3))

    def flush():
        if not pending:
            return
        crops = np.concatenate([v for _, v in pending])  # uint8 (m * views, 224, 224, 3)
        views, m = pending[0][1].shape[0], len(pending)
        tops, lefts, flips = view_geometry("ten" if views == VIEWS else "center", m)
        x = transform(torch.from_numpy(crops).to(device), tops, lefts, flips)  # alphas None: no lighting at test time
        with torch.inference_mode(), autocast("off", device.type):
            logits = model(x)
        probs = average_views(logits, views).exp().cpu()
        p, idx = probs.topk(k, dim=1)
        for (pos, _), pr, ix in zip(pending, p.tolist(), idx.tolist()):
            results[pos]["top"] = [{"rank": r + 1, "index": i, "wnid": wnids[i], "words": words[i], "prob": q}
                                   for r, (q, i) in enumerate(zip(pr, ix))]
        pending.clear()

    for pos, f in enumerate(images):
        try:
            with open(f, "rb") as fh:
                data = fh.read()
            img, from_mode = prepare_image(data)
        except BadImage as e:
            results[pos] = {"file": str(f), "error": f"cannot decode: {e}"}
            continue
        except OSError as e:
            results[pos] = {"file": str(f), "error": f"cannot read: {e.strerror or e}"}
            continue
        results[pos] = {"file": str(f), "from_mode": from_mode}
        pending.append((pos, eval_views(img, ten_crop)))
        if len(pending) >= batch_images:
            flush()
    flush()
    return results

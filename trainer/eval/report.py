"""`imgnet test`: a checkpoint over a whole packed split, in one or both views, with the label sets of
trainer/labelsets; one JSON per view named after the checkpoint (beside it, or in --report-dir) and, when
asked, the devkit submission file.

Network input at test time is the training input with alpha = 0 (no PCA lighting): x = crop(P - M), the
mean image (or mean RGB) M taken from the checkpoint, cropped and mirrored together with the image.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import torch

from imagenet_prep.atomic import check_writable, os_reason
from imagenet_prep.errors import ImgnetError
from trainer import checkpoint as ck
from trainer.eval.metrics import METRICS, label_set_figures
from trainer.eval.mistakes import summarize
from trainer.eval.scoring import evaluate
from trainer.eval.submission import submission_ids, write_submission
from trainer.eval.views import parse_views
from trainer.labelsets import registry as labelsets
from trainer.labelsets.sets import label_sets
from trainer.runfolder import read_record, write_shared


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def loader_workers(workers: int | None, device) -> int | None:
    """Loader processes for evaluation: none on the CPU, where the forward pass (about 0.1 s per view for
    AlexNet) dwarfs the crop copies and a worker would only compete with torch's threads for the cores;
    the loader's default (all cores but one) on an accelerator."""
    if workers is None and torch.device(device).type == "cpu":
        return 0
    return workers



def report_name(split: str, view: str, exclude_blacklist: bool = False, exclude=(), checkpoint="best.pt",
                held_out: str = "val") -> str:
    """The test JSON of a checkpoint, named after it (its stem) so that testing last.pt never takes best.pt's
    name: test-<stem>-<view>.json for the split DATA holds out (`held_out`: val, or test for a CIFAR download),
    test-<stem>-<split>-<view>.json for any other split, test-<stem>-<split>-no-<exclusion>-<view>.json with
    records left out (`exclude`, names of trainer/labelsets exclusions; `exclude_blacklist` adds the
    blacklist): no result overwrites another's."""
    stem = Path(checkpoint).stem
    exclude = tuple(exclude) + (("blacklist",) if exclude_blacklist else ())
    if exclude:
        return f"test-{stem}-{split}-{''.join(f'no-{e}-' for e in exclude)}{view}.json"
    return f"test-{stem}-{view}.json" if split == held_out else f"test-{stem}-{split}-{view}.json"


def data_identity(split: str, names: list[str], labels: dict) -> dict:
    """What a report was computed on, whatever DATA's path: the label map's digest and the split's records."""
    from imagenet_prep.labels import labels_sha256

    digest = hashlib.sha256("\n".join(names).encode("utf-8", "surrogateescape")).hexdigest()
    return {"labels_sha256": labels_sha256(labels), "split": split, "records": len(names), "names_sha256": digest}


def _split_names(data_dir, split: str) -> list[str]:
    from imagenet_prep import open_split

    s = open_split(data_dir, split)
    try:
        return list(s.names)
    finally:
        s.close()


def check_report_dir(folder: Path) -> None:
    """The report folder, made where missing; ImgnetError before any scoring where it cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ImgnetError(f"cannot make the report folder {folder} ({os_reason(e)}); pass --report-dir DIR "
                          "(a folder you can write)") from None
    check_writable(folder, "for the test reports (pass --report-dir DIR to write them elsewhere)")


def check_overwrite(path: Path, identity: dict) -> None:
    """Refuse to replace a report of other data (another DATA, or another copy of this split) with this one."""
    try:
        old = read_record(path, "a test report")
    except ImgnetError:
        return  # none, or one that is no report: replaced
    held = old.get("data_identity")
    if isinstance(held, dict) and held != identity:
        raise ImgnetError(f"{path} holds a report on other data ({old.get('data')}: another label map or other "
                          "images than this DATA's); pass --report-dir DIR to keep both, or remove it")


def _check_submission(submission, split: str, labels: dict) -> None:
    """The devkit's format lists the ILSVRC2012 val images: refused for any other split (an ImageNetV2 one
    above all, whose 10,000 images the devkit would score against the val ground truth) before the run."""
    if submission is None:
        return
    if split != "val":
        raise ImgnetError(f"--submission writes the devkit's ILSVRC2012 val format, which split {split!r} is not "
                          "(its images are not the val images the devkit scores); leave out --submission, or "
                          "test --split val")
    submission_ids(labels, submission)


def _check_labelled(s, split: str, data_dir) -> None:
    unlabelled = int((s.labels < 0).sum())
    if unlabelled:
        raise ImgnetError(f"the {split} split in {data_dir} has no labels for {unlabelled} of {len(s)} "
                          "images; `imgnet test` needs a labelled split (`imgnet predict` takes unlabelled images)")
    if len(s) == 0:
        raise ImgnetError(f"the {split} split in {data_dir} is empty; expected labelled images")



def run_test(data_dir, ckpt_path, ten_crop: bool = False, split: str | None = None, batch_size: int = 128,
             workers: int | None = None, device: str | None = None, submission=None,
             progress: bool = True, amp: str = "off", arch: str | None = None, views=None,
             exclude_blacklist: bool = False, exclude=(), weights: dict | None = None, report_dir=None) -> dict:
    """`imgnet test`: evaluate a checkpoint on a whole packed split in each of `views` (`parse_views`; with
    center and ten-crop, one ten-view pass gives both: the center figures come from its center crops,
    `center_view`, scored as a center run scores them). The label lists that apply (ReaL, on the ILSVRC2012
    val or any subset of its images) add their figures; elsewhere `<name>_reason` says why not. `exclude`
    (names of trainer/labelsets exclusions; `exclude_blacklist` adds the blacklist) leaves their records out
    of every figure (ImgnetError where one does not apply to the split). Writes one JSON per view in
    `report_dir` (default: beside the checkpoint; `report_name`), recording the DATA it came from
    (`data_identity`: a report of other data is never replaced), and, when asked, the devkit submission
    file, made with the last view asked (ten-crop when asked) over every record; only for the val split.
    Returns the last view's report plus "by_view": {view: report}. DATA is held (imagenet_prep.inuse) while
    it is read. `arch`: the user's --arch, needed only for a checkpoint of a module:callable model. `split`
    None: val where DATA holds it, else test (a CIFAR download's test batch). `weights`: plain weights as
    `trainer.weights.load_weights` reads them, scored in place of the checkpoint at `ckpt_path` (their file)."""
    from imagenet_prep.inuse import hold_data
    from trainer.hostmem import keep_freed_memory

    keep_freed_memory()  # each batch's activations reused, not faulted in again
    from imagenet_prep.labels import read_labels_json
    from trainer.data import held_out_split

    held_out = held_out_split(data_dir)
    split = split or held_out
    views = parse_views(views, ten_crop)
    exclude = tuple(exclude) + (("blacklist",) if exclude_blacklist else ())
    ckpt_path = Path(ckpt_path)
    ckpt = ck.load_checkpoint(ckpt_path, map_location="cpu") if weights is None else weights
    data_labels = read_labels_json(data_dir)
    ck.check_labels(ckpt, ckpt_path, data_labels, data_dir)
    labels = ckpt["labels"]
    _check_submission(submission, split, labels)  # refuse before the long run, not after it
    folder = Path(report_dir) if report_dir is not None else ckpt_path.parent
    outs = {v: folder / report_name(split, v, exclude=exclude, checkpoint=ckpt_path, held_out=held_out) for v in views}
    device = torch.device(device or default_device())
    with hold_data(data_dir):
        identity = data_identity(split, _split_names(data_dir, split), data_labels)
        check_report_dir(folder)
        for out in outs.values():
            check_overwrite(out, identity)
        run = score_split(data_dir, split, ckpt, data_labels, views, batch_size=batch_size, workers=workers,
                          device=device, progress=progress, amp=amp, arch=arch, exclude=exclude)
    r, ten = run["result"], "ten-crop" in views
    results = {"ten-crop": r, "center": r.get("center")} if ten else {"center": r}
    common = {"checkpoint": str(ckpt_path), "data": str(data_dir), "data_identity": identity,
              "epoch": ckpt.get("epoch"), "device": str(device), "pass": "ten-crop" if ten else "center",
              "seconds": run["seconds"], "images_per_s": run["records"] / run["seconds"]}
    by_view = {}
    for view in views:
        report = view_report(results[view], labels, {"split": split, "view": view}, run["sets"].info(), common)
        write_shared(outs[view], report)  # two tests of one checkpoint at once: one whole report wins
        by_view[view] = {**report, "report_path": str(outs[view])}
    main = dict(by_view[views[-1]])
    if submission is not None:
        main.update(submission_lines=write_submission(submission, run["names"], results[views[-1]]["top5"], labels),
                    submission_path=str(submission), submission_view=views[-1])
    return {**main, "by_view": by_view}


def score_split(data_dir, split: str, ckpt: dict, data_labels: dict, views: tuple, *, batch_size: int,
                workers, device: torch.device, progress: bool, amp: str, arch, exclude: tuple) -> dict:
    """One evaluation pass of a checkpoint's model over the packed split (ten views when asked): {"result"
    (evaluate's, with predictions), "sets" (the LabelSets), "names", "records", "seconds"}."""
    from imagenet_prep import open_split
    from trainer.data import check_split
    from trainer.loader import Loader
    from trainer.weights import eval_transform

    labels, ten = ckpt["labels"], "ten-crop" in views
    s = open_split(data_dir, split)
    try:  # LMDB allows one open environment per path and process: close it so a later open_split succeeds
        _check_labelled(s, split, data_dir)
        names, records = list(s.names), len(s)
        sets = label_sets(names, data_labels, exclude=exclude)  # refusals before the model
        model = ck.model_from_checkpoint(ckpt, device=str(device), arch=arch)
        check_split(s, ckpt["stats"], len(labels["classes"]), labels)
        transform = eval_transform(ckpt)  # the checkpoint's input convention
        with Loader(s, transform, batch_size, train=False, views="ten" if ten else "center",
                    workers=loader_workers(workers, device), device=str(device)) as loader:
            t0 = time.perf_counter()
            r = evaluate(model, loader, ten_crop=ten, device=device, progress=progress, return_predictions=True,
                         amp=amp, label_sets=sets, center_of_ten=len(views) > 1)
            seconds = time.perf_counter() - t0
    finally:
        s.close()
    assert r["n"] == records - sets.excluded, (r["n"], records, sets.excluded)  # every image once
    return {"result": r, "sets": sets, "names": names, "records": records, "seconds": seconds}


def view_report(r: dict, labels: dict, head: dict, info: dict, common: dict) -> dict:
    """The test JSON of one view: its figures (METRICS over the n images that count, the label lists' where
    computed), what they were computed over (LabelSets.info), mistake severity, per-class errors and the
    confusions over the images that count, then `common` (checkpoint, device, timing)."""
    counted = r["counted"]
    summary = summarize(r["y"][counted], r["top5"][counted], labels)
    figs = {k: r[k] for k in (*METRICS, *label_set_figures()) if k in r}
    return {**head, "n": r["n"], **figs, **info, "mistake_severity": summary["mistake_severity"],
            "severity_n": summary["severity_n"], **common, "confusions": summary["confusions"],
            "per_class": summary["per_class"]}


def summary_line(r: dict) -> dict:
    """The main figures of a run_test result as one JSON-ready dict (`by_view` with two views), for scripts:
    the last line `imgnet test` prints."""
    reasons = [f"{s.name}_reason" for s in labelsets.label_lists()]
    keys = ("split", "view", "n", *METRICS, *label_set_figures(), *reasons, "excluded", "mistake_severity")
    keys = [k for k in keys if k in r and not (k in reasons and r[k] is None) and (k != "excluded" or any(
        r.get(f"exclude_{e.name}") for e in labelsets.exclusions()))]
    line = {k: r[k] for k in keys}
    if len(r["by_view"]) > 1:
        line["by_view"] = {view: {k: v[k] for k in keys} for view, v in r["by_view"].items()}
    return line

"""`imgnet prep`: find the source layout, resize every image to N x N (`--size`, 256) in parallel, pack it.

`run_prep` lists the source (sources.discover), plans the splits still to pack, and hands each to the packer
its layout asks for (`Layout.streamed`: pack/streamed.py, else pack/inorder.py); workers decode, resize and
encode (pack/worker.py). A run killed at any moment resumes from the last commit and ends with exactly the
content of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from tqdm import tqdm

from imagenet_prep import inuse, store, v2
from imagenet_prep.store import formats
from imagenet_prep.atomic import read_json, write_json
from imagenet_prep.errors import ImgnetError
from imagenet_prep.labels import labels_sha256, read_labels_json, write_labels_json
from imagenet_prep.pack import inorder, streamed
from imagenet_prep.pack.commits import Clock, in_order
from imagenet_prep.pool import sigterm_as_interrupt
from imagenet_prep.sources import base, registry
from imagenet_prep.sources.discover import discover

REPORT = "prep-report.json"
ALL_SPLITS = ("train", "val", "test", *v2.SPLITS)  # every split a DATA folder can hold (test: a CIFAR download's)
# settings that reports written before they existed lack: left out of the report's config at these defaults,
# so that the report of a run at the defaults stays what it was
_NEW_DEFAULTS = {"size": store.SIZE, "coarse": False}


class PrepReport(dict):
    """The report that prep-report.json holds, and `packed`: the splits this run packed (the others were
    complete already), so that only their figures are shown as this run's."""

    def __init__(self, report: dict, packed=()):
        super().__init__(report)
        self.packed = list(packed)


@dataclass
class PrepConfig:
    src: str                      # ILSVRC2012 download, any layout of docs/design.md
    out: str                      # DATA folder
    split: str = "all"            # train | val | all, or an ImageNetV2 split: v2 | v2-matched-frequency | ...
    format: str = "lmdb"          # lmdb | hdf5
    encoding: str = "raw"         # raw (196,608 bytes/image) | jpeg
    quality: int = 90             # JPEG quality for encoding=jpeg
    workers: int | None = None    # processes; None = all cores
    classes: int | None = None    # keep the first N classes in label order
    per_class: int | None = None  # keep the first N images (by name) of each class
    label_order: str = "sorted"   # sorted (index 0 = n01440764) | devkit (ILSVRC2012_ID - 1); v2: DATA's
    force: bool = False           # redo complete splits
    val_labels: str | None = None  # file of `<name> <index or wnid>` lines labelling a flat val (else the ground truth)
    size: int | None = None       # side N of the stored N x N images; None: DATA's size, or 256 in a new DATA
    coarse: bool = False          # CIFAR-100: the 20 coarse labels instead of the 100 fine ones


def config_record(cfg: PrepConfig) -> dict:
    """The settings of a run as the report records them (the newer ones only where they differ from the
    defaults that older reports imply)."""
    return {k: v for k, v in asdict(cfg).items() if not (k in _NEW_DEFAULTS and v == _NEW_DEFAULTS[k])}


# -------------------------------------------------------------------------------- main side
def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ImgnetError(f"output folder {out} is not writable ({e.strerror or e}); expected a folder "
                          "you can create files in") from e


def _fingerprint(cfg: PrepConfig, items, labels_sha: str, layout: str) -> dict:
    """What the content of a split depends on: a resumed run must match it exactly."""
    h = hashlib.sha256()
    for it in items:
        h.update(f"{it.name}\t{it.label}\t{it.size}\n".encode("utf-8", "surrogateescape"))
    units = {}
    if registry.is_sharded(layout):  # which shard and unit hold each image: a resume finds its work by those
        u = hashlib.sha256()
        for it in items:
            u.update(f"{registry.unit_key(layout, it)}\n".encode("utf-8", "surrogateescape"))
        units = {"units_sha256": u.hexdigest()}
    return {"layout": layout, "items_sha256": h.hexdigest(), **units, "count": len(items), "encoding": cfg.encoding,
            "quality": cfg.quality if cfg.encoding == "jpeg" else None, "format": cfg.format,
            "labels_sha256": labels_sha, **({"size": cfg.size} if cfg.size != store.SIZE else {})}  # 256: as before


def _complete_meta(out: Path, name: str) -> dict | None:
    """Metadata of a finished split in `out` (either format), else None."""
    return store.split_meta(out, name)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _check_disk(out: Path, remaining: dict, cfg: PrepConfig, freed: int = 0) -> None:
    """Refuse before starting when the images still to write (name -> (to process, whole split)) cannot fit;
    `freed`: bytes that --force is about to delete."""
    per_image = store.estimate_bytes_per_image(cfg.encoding, cfg.quality, cfg.size)
    n = sum(todo for todo, _ in remaining.values())
    fmt = formats.get(cfg.format)
    need = sum(fmt.disk_bytes(todo, whole, per_image) for todo, whole in remaining.values())
    free = shutil.disk_usage(out).free + freed
    if need > free:
        raise ImgnetError(f"not enough free disk in {out}: {n} images as {cfg.encoding}{fmt.disk_note()} need about "
                          f"{need / 1e9:.2f} GB, {free / 1e9:.2f} GB free")


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size if path.exists() else 0


def pillow_build() -> str:
    """The resize build in use (resize.pillow_flavour), or "unknown" where it cannot be told."""
    from imagenet_prep.resize import pillow_flavour

    try:
        return pillow_flavour()
    except RuntimeError:
        return "unknown"


def _check_pillow(writer: store.LmdbWriter, work: Path) -> None:
    """A split is resized by one Pillow build: resuming under another would mix the pixels of both."""
    build = pillow_build()
    old = writer.progress.get("pillow")
    if old and old != build and writer.consumed:
        fix = ("`pip install --force-reinstall --no-deps pillow-simd`" if old == "pillow-simd"
               else f"reinstall {old}")
        raise ImgnetError(f"{work} was started with {old} and this run has {build}; resuming would mix the pixels "
                          f"of two resize builds: {fix} to continue, or pass --force to start the split over")
    writer.progress["pillow"] = build


def _prep_split(name: str, items, skipped, cfg: PrepConfig, out: Path, labels: dict, fingerprint: dict,
                workers: int, differs=(), extra=None, locate=None, layout=None) -> dict:
    fmt = formats.get(cfg.format)
    final, work = fmt.path(out, name), fmt.staging_path(out, name)
    writer = store.LmdbWriter(work, fingerprint, len(items),
                              store.estimate_bytes_per_image(cfg.encoding, cfg.quality, cfg.size))
    try:
        assert not (writer.complete and not fmt.staged), f"{work} is complete: the caller skips it"
        if writer.complete:  # killed while converting: the staged split is done, convert again
            meta = writer.meta
        else:
            meta = _pack_split(name, items, skipped, writer, cfg, labels, fingerprint, workers, differs, extra, locate,
                               layout)
        if fmt.staged:
            with tqdm(total=writer.written, unit="img", desc=f"write {final.name}", disable=None) as bar:
                fmt.finalize(writer, final, meta, bar)
    finally:
        writer.close()
    if final != work:
        shutil.rmtree(work)
    return meta["report"]


def _pack_split(name: str, items, skipped, writer: store.LmdbWriter, cfg: PrepConfig, labels: dict,
                fingerprint: dict, workers: int, differs, extra, locate, layout) -> dict:
    """Pack the items not yet committed with the packer the layout asks for (None: read in order); returns
    the split's metadata."""
    _check_pillow(writer, writer.path)
    clock = Clock(writer)
    if layout is not None and layout.streamed:  # unit by unit, committed out of order
        streamed.pack(items, writer, cfg, workers, name, layout, clock)
    else:
        inorder.pack(items, writer, cfg, workers, name, clock)
    seconds = clock.seconds()
    report = {"found": len(items) + len(skipped), "written": writer.written,
              "rejected": list(skipped) + in_order(writer.rejected, items, locate),
              "converted": in_order(writer.converted, items, locate),
              "bytes_differ": list(differs),
              "seconds": round(seconds, 3), "pillow": writer.progress.get("pillow"),
              "images_per_s": writer.consumed / seconds if seconds > 0 else 0.0, **(extra or {})}
    if writer.written == 0:
        print(f"warning: {name} ends with 0 images ({len(items)} listed, {len(skipped)} skipped, "
              f"{len(report['rejected']) - len(skipped)} rejected: see {REPORT})", file=sys.stderr)
    return writer.finish({
        "split": name, "format": cfg.format, "encoding": cfg.encoding, "quality": fingerprint["quality"],
        "size": cfg.size,
        "num_classes": len(labels["classes"]), "label_order": cfg.label_order,
        "labels_sha256": fingerprint["labels_sha256"], "layout": fingerprint["layout"],
        "fingerprint": fingerprint, "report": report})


def run_prep(cfg: PrepConfig) -> dict:
    """Pack the requested splits of `cfg.src` into `cfg.out`; returns the report also written to
    prep-report.json ({"layout", "splits": {name: {found, written, rejected, converted, seconds, images_per_s}}}).
    A V2 split (`split="v2"` or a variant's split name) is labelled through the labels.json already in `cfg.out`.

    `rejected` (files skipped at listing and images whose content was refused), `converted` and `bytes_differ`
    name each file in one form, where it is in the source (sources.Source.locate): its path relative to --src
    (train/n01440764/n01440764_10026.JPEG), or an archive's path relative to --src, ":" and the member's name
    at each level (ILSVRC2012_img_train.tar:n01440764.tar:n01440764_10026.JPEG); a V2 split's, relative to
    the variant folder its entry names as `src` (2/0af3e1c8.jpeg)."""
    for field, allowed in (("split", ("train", "val", "test", "all", v2.ANY, *v2.SPLITS)), ("format", formats.names()),
                           ("encoding", ("raw", "jpeg")), ("label_order", ("sorted", "devkit"))):
        if getattr(cfg, field) not in allowed:
            raise ImgnetError(f"{field}={getattr(cfg, field)!r}; expected one of {', '.join(allowed)}")
    if cfg.size is not None and (type(cfg.size) is not int or not store.MIN_SIZE <= cfg.size <= store.MAX_SIZE):
        raise ImgnetError(f"size={cfg.size!r}; expected the side of the stored images in pixels, "
                          f"{store.MIN_SIZE} to {store.MAX_SIZE}")
    from imagenet_prep.resize import note_stock_pillow

    out = Path(cfg.out)
    note_stock_pillow()
    is_v2 = cfg.split == v2.ANY or cfg.split in v2.SPLITS
    if is_v2:
        _check_v2_config(cfg, out)  # before _check_writable creates an empty DATA
    created = not os.path.lexists(out)
    try:
        _check_writable(out)
        # one prep at a time; --force deletes splits: not under a train or test run reading them
        with inuse.prep_lock(out), inuse.claim_data(out) if cfg.force else contextlib.nullcontext(), \
                sigterm_as_interrupt():  # SIGTERM ends the run as Ctrl-C does
            cfg = _with_size(cfg, out)
            return _run_v2_prep(cfg, out) if is_v2 else _run_prep(cfg, out)
    except BaseException:
        if created:  # a failed first run leaves no empty DATA behind (one with anything in it is kept)
            with contextlib.suppress(OSError):
                out.rmdir()
        raise


def _with_size(cfg: PrepConfig, out: Path) -> PrepConfig:
    """cfg with its size settled: the one given, else that of the splits DATA holds, else 256. Every split
    of a DATA folder has one size (pca-stats, the loader and the model read it once): another is refused."""
    held = next(((name, store.meta_size(meta)) for name in ALL_SPLITS
                 if (meta := _complete_meta(out, name)) is not None), None)
    size = cfg.size if cfg.size is not None else held[1] if held else store.SIZE
    if held is not None and held[1] != size:
        raise ImgnetError(f"--size {size} but {out} holds {held[0]} at size {held[1]}; the splits of one DATA folder "
                          f"share one size: pass --size {held[1]}, or use a new --out folder")
    return replace(cfg, size=size)


def _run_prep(cfg: PrepConfig, out: Path) -> dict:
    wanted = ["train", "val", "test"] if cfg.split == "all" else [cfg.split]
    _check_native_size(cfg)
    # list only the splits asked for (the label map depends on the whole source either way); the tars'
    # listings are kept in DATA so that a resumed run or a rerun does not read their headers again
    source = discover(cfg.src, label_order=cfg.label_order, classes=cfg.classes, per_class=cfg.per_class,
                      splits=None if cfg.split == "all" else wanted, cache_dir=out, val_labels=cfg.val_labels,
                      coarse=cfg.coarse)
    names = [s for s in wanted if s in source.splits]
    if not names:
        raise ImgnetError(f"{cfg.src} ({source.layout} layout) has no {' or '.join(wanted)} split")
    labels = source.label_map.to_json()
    labels_sha = labels_sha256(labels)
    _check_label_map(cfg, out, names, labels_sha)
    fingerprints = {name: _fingerprint(cfg, source.splits[name], labels_sha, source.layout) for name in names}
    todo = _plan(cfg, out, names, fingerprints)
    write_labels_json(out, source.label_map)
    layout = registry.by_name(source.layout)
    work = {n: (source.splits[n], source.skipped.get(n, []), source.differs.get(n, []), {},
                functools.partial(source.locate, n), layout) for n in names}
    top = {"layout": source.layout, "config": config_record(cfg)}
    note = _label_map_note(source)
    if note:
        top["label_map"] = note
        if todo:
            print(f"note: {note['note']}", file=sys.stderr)
    return _pack_splits(cfg, out, names, todo, labels, fingerprints, work, top=top)


def _label_map_note(source) -> dict | None:
    """The report's `label_map` where some classes of labels.json have no train images, with its one line.

    The label map holds every class the source names, each at its standard index: the train class folders and
    the classes of the ground truth that labels a flat val (all 1000 of the devkit's, whatever train holds);
    --classes N keeps the first N of those in label order, with or without train images."""
    train = source.splits.get("train")
    lm = source.label_map
    held = len({it.label for it in train}) if train else 0
    if not train or held == len(lm):
        return None
    n, full, labels_of = len(lm), len(lm.all_names), source.origin.get("val", "the class metadata")
    kept = f" (--classes {n}: the first {n} of the source's {full} in {lm.order} label order)" if n < full else ""
    line = (f"labels.json holds {n} classes{kept}, {n - held} of them without train images: the label map takes "
            f"every class the source names (its train class folders and the classes of {labels_of}), each at its "
            "standard index")
    return {"classes": n, "with_train_images": held, "source_classes": full, "note": line}


def _check_native_size(cfg: PrepConfig) -> None:
    """A layout of small images of one size (CIFAR: 32 x 32) is never upscaled: a larger --size is refused,
    before the listing reads the download."""
    src = Path(os.path.abspath(cfg.src))
    if not src.is_dir():
        return  # discover says what is wrong with it
    layout = registry.detect(src)
    native = layout.native_size
    if native is not None and cfg.size > native:
        raise ImgnetError(f"{cfg.src} is a {layout.name} download of {native}x{native} images; --size {cfg.size} "
                          f"would upscale them: pass --size {native} (stored as they are)")


def _check_label_map(cfg: PrepConfig, out: Path, names: list, labels_sha: str) -> None:
    """Refuse a label map other than the one DATA's splits were packed with, unless --force redoes them all."""
    old_sha = _labels_sha_of(out)
    if old_sha is None or old_sha == labels_sha:
        return
    held = [s for s in ALL_SPLITS if _complete_meta(out, s) is not None
            or any(f.staging_path(out, s).exists() for f in formats.registered())]
    if not cfg.force and held:
        raise ImgnetError(f"{out / 'labels.json'} holds another label map (other --classes or --label-order?) than "
                          "this run; use a new --out folder, or --force to redo the splits")
    stale = [s for s in held if s not in names]
    if stale:
        tests = [s for s in stale if s in v2.SPLITS]  # labelled through labels.json: redone after the new map
        fix = (["add --split all, or remove it first"] if len(tests) < len(stale) else []) + \
            ([f"remove {' and '.join(tests)} first (and prep it again afterwards)"] if tests else [])
        raise ImgnetError(f"--force with a new label map would leave {' and '.join(stale)} in {out} packed with "
                          f"the old one; {'; '.join(fix)}")


def _plan(cfg: PrepConfig, out: Path, names: list, fingerprints: dict) -> dict:
    """{split: (images to process, whole split)} of the splits still to pack. A complete split with the same
    fingerprint is skipped (another fingerprint is refused without --force); the disk is checked before
    --force deletes anything."""
    others = [f for f in formats.registered() if f.name != cfg.format]
    todo, freed, done = {}, 0, []
    for name in names:
        fp, meta = fingerprints[name], _complete_meta(out, name)
        if meta is not None and not cfg.force:
            store.check_holds(*store.split_path(out, name), meta, name)
            old = meta.get("fingerprint") or {}
            # a split finished before units were recorded is complete whatever shard held what
            diff = [f"{k} {old.get(k)!r} (this run: {fp[k]!r})" for k in fp if old.get(k) != fp[k]
                    and not (k == "units_sha256" and k not in old)]
            if diff:
                raise ImgnetError(f"{store.split_path(out, name)[0]} is complete with other settings: "
                                  f"{'; '.join(diff)}; pass --force to redo it or use a new --out folder")
            done.append((name, str(meta["count"])))
            held = meta.get("format")
            if held in formats.names() and formats.get(held).staged:  # a kill between rename and staging removal
                _remove(formats.get(held).staging_path(out, name))
            continue
        other = next((f.name for f in others if f.staging_path(out, name).exists()), None)
        if meta is None and other is not None and not cfg.force:
            raise ImgnetError(f"{out} holds an unfinished --format {other} run of {name}; rerun with "
                              f"--format {other} to finish it, or --force to discard it")
        freed += sum(_size(p) for p in formats.paths_of(out, name)) if cfg.force else 0
        consumed = 0 if cfg.force else store.progress_of(formats.get(cfg.format).staging_path(out, name))
        todo[name] = (fp["count"] - consumed, fp["count"])
    if done:  # one line for them all, in place of figures of a run that did not happen now
        split_names, counts = (" and ".join(x) for x in zip(*done))
        print(f"{split_names}: already complete in {out} ({counts} images); --force redoes "
              f"{'them' if len(done) > 1 else 'it'}", file=sys.stderr)
    _check_disk(out, todo, cfg, freed)
    if cfg.force:
        for name in todo:
            for p in formats.paths_of(out, name):
                _remove(p)
    return todo


def _pack_splits(cfg: PrepConfig, out: Path, names: list, todo: dict, labels: dict, fingerprints: dict,
                 work: dict, top: dict) -> dict:
    """Pack the splits in `todo` and merge every split of `names` into prep-report.json, keeping the entries
    of DATA's other splits. work: {split: (items, skipped, bytes_differ, extra report fields, locate, layout)}
    (layout: the sources.Layout that reads the items, None for one read in order as ImageNetV2 is)."""
    report_path = out / REPORT
    try:  # bounded: a link to /dev/zero, a huge or deeply nested file is only replaced
        report = read_json(report_path, store.MAX_META_BYTES, f"the {REPORT} that `imgnet prep` writes")
    except (OSError, ImgnetError):  # none yet, or torn by a crash: each split's meta keeps its own report
        report = {}
    if not isinstance(report, dict) or not isinstance(report.get("splits"), dict):  # edited: rebuilt from the metas
        report = {"splits": {}}
    report.update({k: v for k, v in top.items() if k != "config" or todo})
    for name in names:
        if name not in todo:
            report["splits"][name] = _complete_meta(out, name).get("report", report["splits"].get(name, {}))
    workers = cfg.workers or os.cpu_count() or 1
    for name in todo:
        items, skipped, differs, extra, locate, layout = work[name]
        report["splits"][name] = _prep_split(name, items, skipped, cfg, out, labels, fingerprints[name], workers,
                                             differs, extra, locate, layout)
        write_json(report_path, report)
    write_json(report_path, report)
    return PrepReport(report, packed=todo)


# ------------------------------------------------------------------------------- ImageNetV2
def _check_v2_config(cfg: PrepConfig, out: Path) -> None:
    """A V2 split takes its classes and label order from DATA/labels.json: refuse what contradicts that."""
    if not (out / "labels.json").is_file():
        raise ImgnetError(f"{out / 'labels.json'} not found: --split {cfg.split} is labelled through the label map "
                          f"of a DATA folder prepared from ILSVRC2012; run `imgnet prep --src ILSVRC2012 --out {out}` "
                          "first (with the --classes / --label-order you train with)")
    if cfg.val_labels is not None:
        raise ImgnetError(f"--val-labels labels a flat ILSVRC2012 val; --split {cfg.split} is labelled by its "
                          "class folder numbers: leave it out")


def _run_v2_prep(cfg: PrepConfig, out: Path) -> dict:
    """`imgnet prep --split v2...`: one ImageNetV2 variant packed beside train and val with the same image
    policy, labelled through DATA's labels.json, which is read and never written."""
    labels = read_labels_json(out)
    n = len(labels["classes"])
    if cfg.classes is not None and cfg.classes != n:
        raise ImgnetError(f"--classes {cfg.classes} but {out / 'labels.json'} holds {n} classes; a V2 split uses "
                          "DATA's classes: leave --classes out")
    cfg = replace(cfg, label_order=labels["order"])  # recorded in the split's metadata, as train's and val's
    found = v2.discover_v2(cfg.src, labels, split=cfg.split, per_class=cfg.per_class)
    name = found.split
    if found.outside:
        print(f"{name}: skipped {found.outside} images of {found.outside_classes} classes outside DATA's {n} "
              f"classes (counted in {REPORT})", file=sys.stderr)
    if found.missing:
        shown = ", ".join(map(str, found.missing[:5])) + (", ..." if len(found.missing) > 5 else "")
        print(f"warning: {found.src} lacks {len(found.missing)} of the 1000 class folders ({shown}): an "
              "incomplete extraction?", file=sys.stderr)
    labels_sha = labels_sha256(labels)
    fingerprints = {name: _fingerprint(cfg, found.items, labels_sha, v2.LAYOUT)}
    todo = _plan(cfg, out, [name], fingerprints)
    extra = {"src": str(found.src), "variant": found.variant, "missing_folders": found.missing,
             "outside": {"images": found.outside, "classes": found.outside_classes}, "config": config_record(cfg)}
    return _pack_splits(cfg, out, [name], todo, labels, fingerprints,
                        {name: (found.items, found.skipped, [], extra,
                                lambda item: base.relative(found.src, item.path), None)}, top={})


def _labels_sha_of(out: Path) -> str | None:
    """The label map DATA was packed with: labels.json's, or a packed split's where labels.json is unreadable."""
    try:
        return labels_sha256(read_labels_json(out))
    except ImgnetError:
        pass
    for name in ALL_SPLITS:
        meta = _complete_meta(out, name)
        if meta is not None:
            return meta.get("labels_sha256")
    return None

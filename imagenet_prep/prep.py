"""`imgnet prep`: find the source layout, resize every image to 256x256 in parallel, pack it.

Worker processes read their own bytes (files, or byte ranges of the official tars), decode, resize and
encode; the main process writes the results in source order, one LMDB transaction per chunk together
with the progress that produced it. A run killed at any moment resumes from the last commit and ends
with exactly the content of an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from imagenet_prep import store
from imagenet_prep.errors import ImgnetError
from imagenet_prep.labels import labels_sha256, read_labels_json, write_labels_json

# images per LMDB transaction: bounds the work a kill can lose (the variable lets tests commit often)
COMMIT_EVERY = int(os.environ.get("IMGNET_COMMIT_EVERY", "256"))
REPORT = "prep-report.json"


@dataclass
class PrepConfig:
    src: str                      # ILSVRC2012 download, any layout of DESIGN.md
    out: str                      # DATA folder
    split: str = "all"            # train | val | all
    format: str = "lmdb"          # lmdb | hdf5
    encoding: str = "raw"         # raw (196,608 bytes/image) | jpeg
    quality: int = 90             # JPEG quality for encoding=jpeg
    workers: int | None = None    # processes; None = all cores
    classes: int | None = None    # keep the first N classes in label order
    per_class: int | None = None  # keep the first N images (by name) of each class
    label_order: str = "sorted"   # sorted (index 0 = n01440764) | devkit (ILSVRC2012_ID - 1)
    force: bool = False           # redo complete splits


# ------------------------------------------------------------------------------- worker side
_ENCODING: tuple[str, int] = ("raw", 90)


def _init_worker(encoding: str, quality: int) -> None:
    global _ENCODING
    _ENCODING = (encoding, quality)


def process_item(item) -> tuple[bytes | None, str | None, str | None]:
    """Source item -> (encoded 256x256 image, None, from_mode) or (None, reason, None) when skipped."""
    from imagenet_prep.resize import BadImage, prepare_image
    from imagenet_prep.sources import read_item

    try:
        data = read_item(item)
        img, from_mode = prepare_image(data)
    except BadImage as e:
        return None, str(e), None
    except OSError as e:  # unreadable file: permissions, I/O error
        return None, f"cannot read: {e}", None
    return store.encode_image(img, *_ENCODING), None, from_mode


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
        h.update(f"{it.name}\t{it.label}\t{it.size}\n".encode())
    return {"layout": layout, "items_sha256": h.hexdigest(), "count": len(items), "encoding": cfg.encoding,
            "quality": cfg.quality if cfg.encoding == "jpeg" else None, "format": cfg.format,
            "labels_sha256": labels_sha}


def _paths(out: Path, name: str, fmt: str) -> tuple[Path, Path]:
    """(final packed path, LMDB written while working)."""
    if fmt == "lmdb":
        return out / f"{name}.lmdb", out / f"{name}.lmdb"
    return out / f"{name}.h5", out / f".{name}.h5.staging.lmdb"


def _complete_meta(out: Path, name: str) -> dict | None:
    """Metadata of a finished split in `out` (either format), else None."""
    try:
        return store.open_split(out, name).meta
    except ImgnetError:
        return None


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _check_disk(out: Path, todo: dict, cfg: PrepConfig) -> None:
    per_image = store.estimate_bytes_per_image(cfg.encoding, cfg.quality)
    n = sum(todo.values())
    need = n * per_image * (2 if cfg.format == "hdf5" else 1)  # hdf5: staging + final file
    free = shutil.disk_usage(out).free
    if need > free:
        raise ImgnetError(f"not enough free disk in {out}: {n} images as {cfg.encoding}"
                          f"{' (staged, then HDF5)' if cfg.format == 'hdf5' else ''} need about "
                          f"{need / 1e9:.2f} GB, {free / 1e9:.2f} GB free")


def _pool(workers: int, cfg: PrepConfig):
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return mp.get_context(method).Pool(workers, initializer=_init_worker, initargs=(cfg.encoding, cfg.quality))


def _pack(items, writer: store.LmdbWriter, cfg: PrepConfig, workers: int, name: str) -> int:
    """Process items[writer.consumed:] and commit them in order; returns how many were processed."""
    start = writer.consumed
    todo = items[start:]
    if not todo:
        return 0
    bar = tqdm(total=len(items), initial=start, unit="img", desc=f"prep {name}", dynamic_ncols=True,
               smoothing=0.05, disable=None)
    pool = None
    if workers > 1:
        pool = _pool(workers, cfg)
        results = pool.imap(process_item, todo, chunksize=32)
    else:
        _init_worker(cfg.encoding, cfg.quality)
        results = map(process_item, todo)
    records, rejected, converted = [], [], []
    consumed = start
    try:
        for item, (data, reason, from_mode) in zip(todo, results):
            consumed += 1
            if data is None:
                rejected.append({"name": item.name, "reason": reason})
            else:
                records.append((data, item.label, item.name))
                if from_mode:
                    converted.append({"name": item.name, "from_mode": from_mode})
            if consumed - writer.consumed >= COMMIT_EVERY:
                writer.commit(records, consumed, rejected, converted)
                records, rejected, converted = [], [], []
            bar.update(1)
        writer.commit(records, consumed, rejected, converted)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    return len(todo)


def _prep_split(name: str, items, skipped, cfg: PrepConfig, out: Path, labels: dict, layout: str,
                workers: int) -> dict:
    final, work = _paths(out, name, cfg.format)
    labels_sha = labels_sha256(labels)
    fingerprint = _fingerprint(cfg, items, labels_sha, layout)
    t0 = time.perf_counter()
    writer = store.LmdbWriter(work, fingerprint, len(items), store.estimate_bytes_per_image(cfg.encoding, cfg.quality))
    try:
        assert not (writer.complete and cfg.format == "lmdb"), f"{work} is complete: the caller skips it"
        n_done = 0 if writer.complete else _pack(items, writer, cfg, workers, name)
        seconds = time.perf_counter() - t0
        report = {"found": len(items) + len(skipped), "written": writer.written,
                  "rejected": list(skipped) + writer.progress["rejected"],
                  "converted": writer.progress["converted"], "seconds": round(seconds, 3),
                  "images_per_s": n_done / seconds if seconds > 0 else 0.0}
        meta = {"split": name, "format": cfg.format, "encoding": cfg.encoding,
                "quality": cfg.quality if cfg.encoding == "jpeg" else None,
                "num_classes": len(labels["classes"]), "label_order": cfg.label_order, "labels_sha256": labels_sha,
                "layout": layout, "report": report}
        meta = writer.finish(meta) if not writer.complete else dict(meta, **_staged_meta(writer))
        if cfg.format == "hdf5":
            bar = tqdm(total=writer.written, unit="img", desc=f"write {final.name}", disable=None)
            store.lmdb_to_hdf5(writer, final, meta, bar)
            bar.close()
    finally:
        writer.close()
    if cfg.format == "hdf5":
        shutil.rmtree(work)
    return report


def _staged_meta(writer: store.LmdbWriter) -> dict:
    with writer.env.begin() as txn:
        return json.loads(txn.get(b"__meta__"))


def run_prep(cfg: PrepConfig) -> dict:
    """Pack the requested splits of `cfg.src` into `cfg.out`; returns the report also written to
    prep-report.json ({"layout", "splits": {name: {found, written, rejected, converted, seconds, images_per_s}}})."""
    from imagenet_prep.sources import discover

    for field, allowed in (("split", ("train", "val", "all")), ("format", ("lmdb", "hdf5")),
                           ("encoding", ("raw", "jpeg")), ("label_order", ("sorted", "devkit"))):
        if getattr(cfg, field) not in allowed:
            raise ImgnetError(f"{field}={getattr(cfg, field)!r}; expected one of {', '.join(allowed)}")
    out = Path(cfg.out)
    _check_writable(out)
    workers = cfg.workers or os.cpu_count() or 1
    source = discover(cfg.src, label_order=cfg.label_order, classes=cfg.classes, per_class=cfg.per_class)
    wanted = ["train", "val"] if cfg.split == "all" else [cfg.split]
    names = [s for s in wanted if s in source.splits]
    if not names:
        raise ImgnetError(f"{cfg.src} ({source.layout} layout) has no {' or '.join(wanted)} split")

    # labels.json: the label map every later stage checks against
    lj_path = out / "labels.json"
    tmp = out / ".labels.json.new"
    tmp.mkdir(exist_ok=True)
    write_labels_json(tmp, source.label_map)
    new_labels = read_labels_json(tmp)
    shutil.rmtree(tmp)
    labels_sha = labels_sha256(new_labels)
    if lj_path.is_file() and not cfg.force:
        old_sha = labels_sha256(read_labels_json(out))
        if old_sha != labels_sha and any(_complete_meta(out, s) or _paths(out, s, cfg.format)[1].exists()
                                         for s in ("train", "val")):
            raise ImgnetError(f"{lj_path} holds another label map (other --classes or --label-order?) than this "
                              "run; use a new --out folder, or --force to redo the splits")
    os.replace(_write_tmp(out, new_labels), lj_path)

    report_path = out / REPORT
    report = json.loads(report_path.read_text()) if report_path.is_file() else {"splits": {}}
    report["layout"] = source.layout
    todo = {}
    for name in names:
        final, work = _paths(out, name, cfg.format)
        meta = _complete_meta(out, name)
        if meta is not None and not cfg.force:
            if meta.get("labels_sha256") != labels_sha or meta.get("encoding") != cfg.encoding \
                    or meta.get("format") != cfg.format:
                raise ImgnetError(f"{final if final.exists() else out / name} is complete but was made with other "
                                  "settings; pass --force to redo it or use a new --out folder")
            print(f"{name}: already complete in {out} ({meta['count']} images); --force redoes it", file=sys.stderr)
            report["splits"][name] = meta.get("report", report["splits"].get(name, {}))
            continue
        if cfg.force:
            for p in {*_paths(out, name, "lmdb"), *_paths(out, name, "hdf5")}:
                _remove(p)
            _remove(out / f"{name}.h5.tmp")
        todo[name] = len(source.splits[name])
    _check_disk(out, todo, cfg)
    for name in todo:
        report["splits"][name] = _prep_split(name, source.splits[name], source.skipped.get(name, []), cfg, out,
                                             new_labels, source.layout, workers)
        report["config"] = asdict(cfg)
        os.replace(_write_tmp(out, report, REPORT), report_path)
    os.replace(_write_tmp(out, report, REPORT), report_path)
    return report


def _write_tmp(out: Path, obj: dict, name: str = "labels.json") -> Path:
    tmp = out / f".{name}.tmp"
    tmp.write_text(json.dumps(obj, indent=1))
    return tmp

"""`imgnet prep`: find the source layout, resize every image to 256x256 in parallel, pack it.

Worker processes read their own bytes (files, or byte ranges of the official tars), decode, resize and
encode; the main process writes the results in source order, one LMDB transaction per chunk together
with the progress that produced it. A run killed at any moment resumes from the last commit and ends
with exactly the content of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from imagenet_prep import store
from imagenet_prep.atomic import read_json, write_json
from imagenet_prep.errors import ImgnetError
from imagenet_prep.labels import labels_sha256, read_labels_json, write_labels_json
from imagenet_prep.pool import WorkerPool, sigterm_as_interrupt

# images per LMDB transaction: bounds the work a kill can lose (the variable lets tests commit often)
COMMIT_EVERY = int(os.environ.get("IMGNET_COMMIT_EVERY", "256"))
REPORT = "prep-report.json"


@dataclass
class PrepConfig:
    src: str                      # ILSVRC2012 download, any layout of docs/design.md
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
    val_labels: str | None = None  # file of `<name> <index or wnid>` lines labelling a flat val (else the ground truth)


# ------------------------------------------------------------------------------- worker side
_ENCODING: tuple[str, int] = ("raw", 90)


def _init_worker(encoding: str, quality: int) -> None:
    global _ENCODING
    _ENCODING = (encoding, quality)


def _init_pool_worker(encoding: str, quality: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the process group: the main process stops us
    _init_worker(encoding, quality)


def process_item(item) -> tuple[bytes | None, str | None, dict | None]:
    """Source item -> (encoded 256x256 image, None, converted entry or None) or (None, reason, None) when the
    content is rejected. An OSError while reading the source bytes is not a bad image: it raises an
    ImgnetError naming the file and errno, which stops the run (the rerun resumes and writes the image)."""
    from imagenet_prep.resize import BadImage
    from imagenet_prep.sources import read_failure, read_item

    try:
        data = read_item(item)
    except BadImage as e:  # a zip member that fails to inflate or its CRC: its bytes are damaged
        return None, e.reason, None
    except OSError as e:
        raise read_failure(item.path, item.name, e) from None
    return process_bytes(data, item.name)


def process_bytes(data: bytes, name: str | None = None) -> tuple[bytes | None, str | None, dict | None]:
    """The source bytes of one image -> (encoded 256x256 image, None, the report's converted entry or None)
    or (None, reason, None) when its content cannot be used (resize.prepare raises only BadImage for that)."""
    from imagenet_prep.resize import BadImage, prepare

    try:
        p = prepare(data, name=name)
    except BadImage as e:
        return None, e.reason, None
    except MemoryError:
        return None, "cannot decode: out of memory (an image over the limits of this machine)", None
    return store.encode_image(p.image, *_ENCODING), None, p.report_entry(name) if name is not None else None


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
        h.update(f"{it.name}\t{it.label}\t{it.size}\n".encode("utf-8", "surrogateescape"))  # undecodable bytes
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
    return store.split_meta(out, name)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _check_disk(out: Path, remaining: dict, cfg: PrepConfig, freed: int = 0) -> None:
    """Refuse before starting when the images still to write (name -> (to process, whole split)) cannot fit;
    `freed`: bytes that --force is about to delete."""
    per_image = store.estimate_bytes_per_image(cfg.encoding, cfg.quality)
    n = sum(todo for todo, _ in remaining.values())
    need = n * per_image
    if cfg.format == "hdf5":  # the staged LMDB, then the .h5 file beside it
        need += sum(whole for _, whole in remaining.values()) * per_image
    free = shutil.disk_usage(out).free + freed
    if need > free:
        raise ImgnetError(f"not enough free disk in {out}: {n} images as {cfg.encoding}"
                          f"{' (staged, then HDF5)' if cfg.format == 'hdf5' else ''} need about "
                          f"{need / 1e9:.2f} GB, {free / 1e9:.2f} GB free")


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size if path.exists() else 0


def _pool(workers: int, cfg: PrepConfig) -> WorkerPool:
    """Workers that a dead one (OOM killer, kill -9) cannot hang: WorkerDied names the cause and the image."""
    return WorkerPool(workers, _init_pool_worker, (cfg.encoding, cfg.quality), name="prep",
                      hint="the images committed so far are kept: rerun the same command to continue")


def _windowed(pool: WorkerPool, todo, window: int):
    """process_item over `todo` in order; results wait in memory only while the writer is behind by less
    than 2 * window images."""
    return pool.imap(process_item, todo, window=2 * window, describe=lambda it: repr(it.name))


def _pack(items, writer: store.LmdbWriter, cfg: PrepConfig, workers: int, name: str, clock) -> int:
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
        results = _windowed(pool, todo, window=max(256, 64 * workers))
    else:
        _init_worker(cfg.encoding, cfg.quality)
        results = map(process_item, todo)
    records, rejected, converted = [], [], []
    consumed = start
    try:
        for item, (data, reason, entry) in zip(todo, results):
            consumed += 1
            if data is None:
                rejected.append({"name": item.name, "reason": reason, "index": consumed - 1})
            else:
                records.append((data, item.label, item.name))
                if entry:
                    converted.append({**entry, "index": consumed - 1})
            if consumed - writer.consumed >= COMMIT_EVERY:
                clock.commit(writer, records, consumed, rejected, converted)
                records, rejected, converted = [], [], []
            bar.update(1)
        clock.commit(writer, records, consumed, rejected, converted)
    except KeyboardInterrupt:
        bar.close()
        print(f"\ninterrupted: the {writer.written} images committed to {writer.path} are kept; rerun the same "
              "command to continue", file=sys.stderr)
        raise
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    return len(todo)


class _Clock:
    """Seconds spent on one split over every run that worked on it: kept in the writer's progress (each
    commit saves it), so that a resumed split's report gives the time and rate of the whole split."""

    def __init__(self, writer: store.LmdbWriter):
        self.base, self.t0 = float(writer.progress.get("seconds", 0.0)), time.perf_counter()

    def seconds(self) -> float:
        return self.base + time.perf_counter() - self.t0

    def stamp(self, writer: store.LmdbWriter) -> None:
        writer.progress["seconds"] = round(self.seconds(), 3)

    def commit(self, writer: store.LmdbWriter, *args) -> None:
        self.stamp(writer)
        writer.commit(*args)


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
                workers: int, differs=(), locate=None) -> dict:
    from imagenet_prep import hf, unordered

    final, work = _paths(out, name, cfg.format)
    writer = store.LmdbWriter(work, fingerprint, len(items), store.estimate_bytes_per_image(cfg.encoding, cfg.quality))
    try:
        assert not (writer.complete and cfg.format == "lmdb"), f"{work} is complete: the caller skips it"
        if writer.complete:  # killed while converting to HDF5: the staged split is done, convert again
            meta = writer.meta
        else:
            _check_pillow(writer, work)
            clock = _Clock(writer)
            if fingerprint["layout"] in hf.LAYOUTS:  # shard by shard, committed out of order
                unordered.pack(items, writer, cfg, workers, name, fingerprint["layout"], clock)
            else:
                _pack(items, writer, cfg, workers, name, clock)
            seconds = clock.seconds()
            report = {"found": len(items) + len(skipped), "written": writer.written,
                      "rejected": list(skipped) + unordered.in_order(writer.progress["rejected"], items, locate),
                      "converted": unordered.in_order(writer.progress["converted"], items, locate),
                      "bytes_differ": list(differs),
                      "seconds": round(seconds, 3), "pillow": writer.progress.get("pillow"),
                      "images_per_s": writer.consumed / seconds if seconds > 0 else 0.0}
            if writer.written == 0:
                print(f"warning: {name} ends with 0 images ({len(items)} listed, {len(skipped)} skipped, "
                      f"{len(report['rejected']) - len(skipped)} rejected: see {REPORT})", file=sys.stderr)
            meta = writer.finish({
                "split": name, "format": cfg.format, "encoding": cfg.encoding, "quality": fingerprint["quality"],
                "num_classes": len(labels["classes"]), "label_order": cfg.label_order,
                "labels_sha256": fingerprint["labels_sha256"], "layout": fingerprint["layout"],
                "fingerprint": fingerprint, "report": report})
        if cfg.format == "hdf5":
            bar = tqdm(total=writer.written, unit="img", desc=f"write {final.name}", disable=None)
            store.lmdb_to_hdf5(writer, final, meta, bar)
            bar.close()
    finally:
        writer.close()
    if cfg.format == "hdf5":
        shutil.rmtree(work)
    return meta["report"]


def run_prep(cfg: PrepConfig) -> dict:
    """Pack the requested splits of `cfg.src` into `cfg.out`; returns the report also written to
    prep-report.json ({"layout", "splits": {name: {found, written, rejected, converted, seconds, images_per_s}}}).

    `rejected` (files skipped at listing and images whose content was refused), `converted` and `bytes_differ`
    name each file in one form, where it is in the source (sources.Source.locate): its path relative to --src
    (train/n01440764/n01440764_10026.JPEG), or an archive's path relative to --src, ":" and the member's name
    at each level (ILSVRC2012_img_train.tar:n01440764.tar:n01440764_10026.JPEG)."""
    for field, allowed in (("split", ("train", "val", "all")), ("format", ("lmdb", "hdf5")),
                           ("encoding", ("raw", "jpeg")), ("label_order", ("sorted", "devkit"))):
        if getattr(cfg, field) not in allowed:
            raise ImgnetError(f"{field}={getattr(cfg, field)!r}; expected one of {', '.join(allowed)}")
    out = Path(cfg.out)
    _check_writable(out)
    with _exclusive(out), sigterm_as_interrupt():  # SIGTERM ends the run as Ctrl-C does
        return _run_prep(cfg, out)


@contextlib.contextmanager
def _exclusive(out: Path):
    """One prep at a time per DATA folder: two would race on labels.json, the report and --force. A POSIX
    record lock: held by this process only (forked workers do not inherit it), released when it dies."""
    import fcntl

    with open(out / ".prep.lock", "a+") as f:
        try:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            raise ImgnetError(f"another `imgnet prep` is writing {out} (pid {f.read().strip() or '?'}); wait for it "
                              "to finish, or use another --out") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield


def _run_prep(cfg: PrepConfig, out: Path) -> dict:
    from imagenet_prep.sources import discover

    workers = cfg.workers or os.cpu_count() or 1
    wanted = ["train", "val"] if cfg.split == "all" else [cfg.split]
    # list only the splits asked for (the label map depends on the whole source either way); the tars'
    # listings are kept in DATA so that a resumed run or a rerun does not read their headers again
    source = discover(cfg.src, label_order=cfg.label_order, classes=cfg.classes, per_class=cfg.per_class,
                      splits=None if cfg.split == "all" else wanted, cache_dir=out, val_labels=cfg.val_labels)
    names = [s for s in wanted if s in source.splits]
    if not names:
        raise ImgnetError(f"{cfg.src} ({source.layout} layout) has no {' or '.join(wanted)} split")
    labels = source.label_map.to_json()
    labels_sha = labels_sha256(labels)
    other_fmt = "hdf5" if cfg.format == "lmdb" else "lmdb"

    # what DATA already holds: complete splits (either format) and unfinished runs
    complete = {s: _complete_meta(out, s) for s in ("train", "val")}
    unfinished = {(s, f): _paths(out, s, f)[1] for s in ("train", "val") for f in ("lmdb", "hdf5")
                  if complete[s] is None and _paths(out, s, f)[1].exists()}
    lj_path = out / "labels.json"
    old_sha = _labels_sha_of(out)
    if old_sha is not None and old_sha != labels_sha:
        if not cfg.force and (any(complete.values()) or unfinished):
            raise ImgnetError(f"{lj_path} holds another label map (other --classes or --label-order?) than this "
                              "run; use a new --out folder, or --force to redo the splits")
        stale = [s for s in ("train", "val") if s not in names and (complete[s] or any(k[0] == s for k in unfinished))]
        if stale:
            raise ImgnetError(f"--force with a new label map would leave {' and '.join(stale)} in {out} packed with "
                              "the old one; add --split all, or remove it first")

    fingerprints, todo, freed = {}, {}, 0
    for name in names:
        items = source.splits[name]
        fingerprints[name] = fp = _fingerprint(cfg, items, labels_sha, source.layout)
        meta = complete[name]
        if meta is not None and not cfg.force:
            old = meta.get("fingerprint") or {}
            diff = [f"{k} {old.get(k)!r} (this run: {fp[k]!r})" for k in fp if old.get(k) != fp[k]]
            if diff:
                raise ImgnetError(f"{store.split_path(out, name)[0]} is complete with other settings: "
                                  f"{'; '.join(diff)}; pass --force to redo it or use a new --out folder")
            print(f"{name}: already complete in {out} ({meta['count']} images); --force redoes it", file=sys.stderr)
            if meta.get("format") == "hdf5":  # a kill between the .h5 rename and the staging's removal
                _remove(_paths(out, name, "hdf5")[1])
            continue
        if (name, other_fmt) in unfinished and not cfg.force:
            raise ImgnetError(f"{out} holds an unfinished --format {other_fmt} run of {name}; rerun with "
                              f"--format {other_fmt} to finish it, or --force to discard it")
        doomed = [*_paths(out, name, "lmdb"), *_paths(out, name, "hdf5"), out / f"{name}.h5.tmp"] if cfg.force else []
        freed += sum(_size(p) for p in set(doomed))
        consumed = 0 if cfg.force else store.progress_of(_paths(out, name, cfg.format)[1])
        todo[name] = (len(items) - consumed, len(items))
    _check_disk(out, todo, cfg, freed)  # before --force deletes anything
    if cfg.force:
        for name in todo:
            for p in {*_paths(out, name, "lmdb"), *_paths(out, name, "hdf5"), out / f"{name}.h5.tmp"}:
                _remove(p)
    write_labels_json(out, source.label_map)

    report_path = out / REPORT
    try:  # bounded: a link to /dev/zero, a huge or deeply nested file is only replaced
        report = read_json(report_path, store.MAX_META_BYTES, f"the {REPORT} that `imgnet prep` writes")
    except (OSError, ImgnetError):  # none yet, or torn by a crash: each split's meta keeps its own report
        report = {}
    if not isinstance(report, dict) or not isinstance(report.get("splits"), dict):  # edited: rebuilt from the metas
        report = {"splits": {}}
    report["layout"] = source.layout
    for name in names:
        if name not in todo:
            report["splits"][name] = complete[name].get("report", report["splits"].get(name, {}))
    for name in todo:
        report["splits"][name] = _prep_split(name, source.splits[name], source.skipped.get(name, []), cfg, out,
                                             labels, fingerprints[name], workers, source.differs.get(name, []),
                                             functools.partial(source.locate, name))
        report["config"] = asdict(cfg)
        write_json(report_path, report)
    write_json(report_path, report)
    return report


def _labels_sha_of(out: Path) -> str | None:
    """The label map DATA was packed with: labels.json's, or a packed split's where labels.json is unreadable."""
    try:
        return labels_sha256(read_labels_json(out))
    except ImgnetError:
        pass
    for name in ("train", "val"):
        meta = _complete_meta(out, name)
        if meta is not None:
            return meta.get("labels_sha256")
    return None

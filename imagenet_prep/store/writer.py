"""The staging writer every store format is written through (`LmdbWriter`: crash-safe, resumable, one LMDB
transaction per commit holding the records and the progress that produced them), and `write_split`, which
packs in-memory records through it and the format's `finalize`. The keys are those of store/lmdb.py: for
`--format lmdb` the staging LMDB is the split itself."""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Iterable

import numpy as np

from imagenet_prep.atomic import parse_json
from imagenet_prep.errors import ImgnetError
from imagenet_prep.store.formats import get as get_format
from imagenet_prep.store.lmdb import (LABELS, META, NAMES, PROGRESS, check_env, close_env, img_key, read_env,
                                      rec_key)
from imagenet_prep.store.reader import Split, open_split
from imagenet_prep.store.records import (CHECKSUM, FORMAT_VERSION, MAX_META_BYTES, RAW_BYTES, SIZE, encode_image,
                                         estimate_bytes_per_image, image_shape, index_crc, join_names, name_bytes,
                                         pack_rec, parse_meta, record_crc, unpack_rec)


# The report's entries of an unfinished split ({"name", "reason"} rejected, converted), one JSON line each, in
# the writer's folder: appended and fsynced before the commit whose progress record holds the log's new length,
# cut back to that length on resume. (Kept in the progress record, they made each commit rewrite them all: a
# source of many rejected files took quadratic time.) Removed once the split is finished: its report holds them.
ENTRIES = "report-entries.jsonl"
_KINDS = ("rejected", "converted")


def _is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno == errno.ENOSPC or "No space left" in str(e)


def _storable(records, name_at: int, index_at: int | None = None) -> tuple[list, list[dict]]:
    """Split records into those whose name (field `name_at`) can be stored, with the name as bytes, and
    rejected entries {"name", "reason"[, "index": field `index_at`]} for the others."""
    kept, rejected = [], []
    for r in records:
        try:
            nb = name_bytes(r[name_at])
        except ValueError as e:
            rejected.append({"name": r[name_at] if isinstance(r[name_at], str) else repr(r[name_at]),
                             "reason": f"file name cannot be stored unchanged: {e}",
                             **({"index": r[index_at]} if index_at is not None else {})})
            continue
        kept.append((*r[:name_at], nb, *r[name_at + 1:]))
    return kept, rejected


class LmdbWriter:
    """Append-only, crash-safe writer of one split. Each `commit` is one LMDB transaction that holds
    the records and the progress that produced them, so a rerun resumes exactly where a kill stopped."""

    def __init__(self, path: Path, fingerprint: dict, expected_images: int = 1024,
                 bytes_per_image: int = RAW_BYTES):
        import lmdb

        self.path = Path(path)
        self.fingerprint = fingerprint
        close_env(self.path)
        check_env(self.path, new_ok=True)
        map_size = max(64 << 20, int(expected_images * bytes_per_image * 1.15) + (64 << 20))
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            # no writemap: a full disk is then a write error, not a SIGBUS; sync on commit for power loss
            self.env = lmdb.open(str(self.path), map_size=map_size, subdir=True, writemap=False,
                                 sync=True, metasync=True, readahead=False, meminit=False, max_dbs=0)
        except lmdb.Error as e:
            raise ImgnetError(f"cannot open {self.path} for writing: {e}") from e
        with self.env.begin() as txn:
            raw = txn.get(PROGRESS)
            meta = txn.get(META)
        self.complete = bool(meta and parse_meta(meta, self.path).get("complete"))
        if raw is None:
            self.progress = {"fingerprint": fingerprint, "consumed": 0, "written": 0,
                             "rejected": [], "converted": [], "entries_bytes": 0, "format_version": FORMAT_VERSION}
        else:
            self.progress = parse_progress(raw, self.path, expected_images)
            self._check_resumable(fingerprint)
            self._check_count(meta)
        self.rejected: list[dict] = []   # the report's entries committed so far, in commit order
        self.converted: list[dict] = []
        self._log = None
        if not self.complete:
            self._open_log()

    def _open_log(self) -> None:
        """Open the entries log at the length the progress record committed (a kill between the log's write
        and the commit leaves more: cut off) and read it back. The lists of a run started by a version that
        kept them in the progress record are moved into the log first."""
        path = self.path / ENTRIES
        committed = self.progress.get("entries_bytes", 0)
        try:
            self._log = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644), "r+b")
            held = os.fstat(self._log.fileno()).st_size
        except OSError as e:
            raise ImgnetError(f"cannot open {path} ({e.strerror or e}); expected the file of report entries "
                              "`imgnet prep` writes: pass --force to start the split over") from e
        if held < committed:
            raise ImgnetError(f"{path} holds {held} bytes, less than the {committed} its split's progress record has "
                              "committed (damaged or replaced); pass --force to start the split over")
        lines = self._log.read(committed).splitlines()
        try:
            for kind, entry in map(json.loads, lines):
                if kind not in _KINDS or not isinstance(entry, dict):
                    raise ValueError(f"an entry {kind!r} of neither kind")
                getattr(self, kind).append(entry)
        except (ValueError, TypeError) as e:
            raise ImgnetError(f"{path} is damaged or edited ({e}); pass --force to start the split over") from None
        old = [self.progress.get(k) or [] for k in _KINDS]
        if any(old):
            self._put([], self.consumed, *old, units=None)

    def _append_entries(self, rejected: list, converted: list) -> int:
        """Write entries after the committed end of the log, synced to disk; returns the log's new length."""
        at = self.progress.get("entries_bytes", 0)
        blob = b"".join(json.dumps([k, e]).encode() + b"\n" for k, es in zip(_KINDS, (rejected, converted))
                        for e in es)
        if not blob:
            return at
        try:
            self._log.seek(at)
            self._log.write(blob)
            self._log.truncate()
            self._log.flush()
            os.fsync(self._log.fileno())
        except OSError as e:
            if _is_disk_full(e):
                raise ImgnetError(f"disk full while writing {self.path / ENTRIES}; the records committed so far are "
                                  "kept: free some space and rerun the same command") from e
            raise ImgnetError(f"cannot write {self.path / ENTRIES} ({e.strerror or e})") from e
        return at + len(blob)

    def _check_resumable(self, fingerprint: dict) -> None:
        """An unfinished run is continued only in this store format version and with the same settings."""
        if self.progress.get("format_version") != FORMAT_VERSION:  # version 1 records carry no checksum
            raise ImgnetError(
                f"{self.path} holds an unfinished run written in store format version "
                f"{self.progress.get('format_version', 1)}; this version writes {FORMAT_VERSION}: pass "
                "--force to start it over")
        if self.progress.get("fingerprint") != fingerprint:
            old = self.progress.get("fingerprint", {})
            diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
            raise ImgnetError(
                f"{self.path} holds an unfinished run with different settings ({', '.join(diff)}); "
                "rerun with the same arguments to finish it, or pass --force to start over")

    def _check_count(self, meta) -> None:
        """The records on disk must be the `written` of the progress record (an edited or mixed-up record
        would resume at the wrong image or leave holes in the split)."""
        keys = {PROGRESS} | ({META, LABELS, NAMES} if meta else set())
        with self.env.begin() as txn:
            special = sum(txn.get(k) is not None for k in keys)
        held = (self.env.stat()["entries"] - special) / 2  # two keys per record: img/ and rec/
        if held != self.progress["written"]:
            raise ImgnetError(f"{self.path}: the progress record says {self.progress['written']} images written but "
                              f"the split holds {held:g}; pass --force to start it over")

    @property
    def meta(self) -> dict:
        """The metadata `finish` wrote ({} before)."""
        with self.env.begin() as txn:
            raw = txn.get(META)
        return parse_json(raw, f"the metadata of {self.path}", MAX_META_BYTES) if raw else {}

    @property
    def consumed(self) -> int:
        return self.progress["consumed"]

    @property
    def written(self) -> int:
        return self.progress["written"]

    def _write_txn(self, fill, nbytes: int = 0) -> None:
        """Run `fill(txn)` in one write transaction of about `nbytes`, growing the map when it is full."""
        import lmdb

        while True:
            try:
                with self.env.begin(write=True) as txn:
                    fill(txn)
                return
            except lmdb.MapFullError:
                self.env.set_mapsize(self.env.info()["map_size"] * 2)
            except (lmdb.Error, OSError) as e:
                # LMDB reports a failed write as EIO at commit: a near-full disk is the usual cause
                free = shutil.disk_usage(self.path).free
                if _is_disk_full(e) or isinstance(e, lmdb.DiskError) or free < 2 * nbytes + (1 << 20):
                    raise ImgnetError(
                        f"disk full while writing {self.path} ({free / 1e6:.1f} MB free); the records "
                        "committed so far are kept: free some space and rerun the same command") from e
                raise ImgnetError(f"cannot write {self.path}: {e}") from e

    # ------------------------------------------------------------------------------------ commits
    def commit(self, records: Iterable[tuple[bytes, int, str]], consumed: int,
               rejected: Iterable[dict] = (), converted: Iterable[dict] = ()) -> None:
        """Append records (encoded image, label, name) produced from source items up to `consumed`. A record
        whose name cannot be stored unchanged (see `name_bytes`) is rejected instead, with the reason."""
        records, unnamed = _storable(records, 2)
        start = self.written
        self._put([(start + j, *r) for j, r in enumerate(records)], consumed, [*rejected, *unnamed], converted)

    def commit_at(self, records: Iterable[tuple[int, bytes, int, str]], consumed: int, units: dict,
                  rejected: Iterable[dict] = (), converted: Iterable[dict] = ()) -> None:
        """Out-of-order commit: records (final index, encoded image, label, name) from `consumed` more source
        items, with `units` ({shard or row group: how far it is done}) merged into the progress in the same
        transaction. Indices left free by rejected items (and unstorable names) are closed up by `finish`."""
        records, unnamed = _storable(records, 3, index_at=0)
        self._put(records, self.consumed + consumed, [*rejected, *unnamed], converted, units)

    def _put(self, records: list, consumed: int, rejected: list, converted: Iterable[dict],
             units: dict | None = None) -> None:
        """The one commit: records (index, encoded image, label, name bytes) and the progress that follows from
        them (source items `consumed` in all; `units` merged in when given) in one transaction."""
        rejected, converted = list(rejected), list(converted)
        progress = dict(self.progress, rejected=[], converted=[])
        progress["entries_bytes"] = self._append_entries(rejected, converted)
        progress["consumed"] = consumed
        progress["written"] = self.written + len(records)
        if units is not None:
            progress["units"] = {**self.progress.get("units", {}), **units}

        def fill(txn):
            for i, data, label, name in records:
                txn.put(img_key(i), data)
                txn.put(rec_key(i), pack_rec(data, label, name))
            txn.put(PROGRESS, json.dumps(progress).encode())

        self._write_txn(fill, sum(len(r[1]) for r in records))
        self.progress = progress
        self.rejected += rejected
        self.converted += converted

    def _compact(self, batch: int = 256) -> None:
        """Renumber the records of an out-of-order run to 0..written-1, keeping their order. Each batch is one
        transaction that moves records down into free indices and deletes their old keys, so the records
        below the first free index are always final: a kill here is completed by the next call. Only the
        records after the first rejected one move (none when every image decodes, as in ILSVRC2012)."""
        n, k = self.written, 0
        with self.env.begin() as txn:
            cur = txn.cursor()
            found = cur.prev() if cur.set_range(b"rec0") else cur.last()  # the last rec/ key
            if n == 0 or (found and cur.key() == rec_key(n - 1)):
                return  # n records, the last at n - 1: already 0..n-1
        while True:
            moves = []
            with self.env.begin() as txn:
                cur = txn.cursor()
                if cur.set_range(rec_key(k)):
                    for key, rec in cur:
                        if not key.startswith(b"rec/") or len(moves) == batch:
                            break
                        if not moves and int(key[4:]) == k:
                            k += 1  # in place, before the first free index
                        else:
                            moves.append((int(key[4:]), rec))
            if not moves:
                return

            def fill(txn, k=k, moves=moves):
                for dest, (p, rec) in enumerate(moves, start=k):  # p > dest: a record only moves down
                    txn.put(img_key(dest), txn.get(img_key(p)))
                    txn.put(rec_key(dest), rec)
                    txn.delete(img_key(p))
                    txn.delete(rec_key(p))

            self._write_txn(fill)
            k += len(moves)

    def finish(self, meta: dict) -> dict:
        """Write the label/name indexes and the metadata that marks the split complete."""
        if "units" in self.progress:
            self._compact()
        n = self.written
        labels = np.empty(n, dtype="<i4")
        names = []
        with self.env.begin(buffers=True) as txn:
            for i in range(n):
                labels[i], name, _ = unpack_rec(txn.get(rec_key(i)))
                names.append(name)
        blob = join_names(names)
        size = meta.get("size", SIZE)  # the side every record of the split was made at (imgnet prep --size)
        meta = dict(meta, format_version=FORMAT_VERSION, count=n, image_shape=list(image_shape(size)),
                    checksum=CHECKSUM, index_crc32=index_crc(labels, blob), complete=True)

        def fill(txn):
            txn.put(LABELS, labels.tobytes())
            txn.put(NAMES, blob)
            txn.put(META, json.dumps(meta).encode())

        self._write_txn(fill)
        self.env.sync(True)
        self._drop_log()
        if n == 0 and not meta.get("report"):  # prep warns itself, with its counts
            print(f"warning: {meta.get('split', self.path.name)} ends with 0 images", file=sys.stderr)
        return meta

    # ---------------------------------------------------------------------------- reading it back
    def read_all(self):
        """Yield (encoded image, label, name) in order."""
        for data, label, name, _ in self.scan():
            yield data, label, name.decode("utf-8", "surrogateescape")

    def scan(self):
        """Yield (encoded image, label, name bytes, crc32) of a complete split in order, each record checked
        against its CRC-32 (ImgnetError naming it otherwise): what a format's `convert` reads. The environment
        is reopened read-only with readahead (LMDB allows one per path and process), so that a sequential scan
        from a cold cache reads in large requests: the writer only reads and closes after this."""
        import lmdb

        self.env.close()
        self.env = lmdb.open(str(self.path), readonly=True, lock=False, readahead=True, meminit=False)
        with self.env.begin(buffers=True) as txn:
            for i in range(self.written):
                label, name, crc = unpack_rec(txn.get(rec_key(i)))
                data = bytes(txn.get(img_key(i)))
                if record_crc(data, label, name) != crc:
                    raise ImgnetError(f"staged record {i} ({name.decode('utf-8', 'surrogateescape')!r}) of "
                                      f"{self.path} fails its checksum: the disk returned other bytes than were "
                                      "written; rerun `imgnet prep` with --force")
                yield data, label, name, crc

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _drop_log(self) -> None:
        """The split is finished and its report written: the entries log has served."""
        self._close_log()
        (self.path / ENTRIES).unlink(missing_ok=True)

    def close(self) -> None:
        self._close_log()
        self.env.close()


def parse_progress(raw, path, expected: int | None = None) -> dict:
    """The __progress__ record, checked: counts that are not counts, or more than the `expected` items of the
    split, are a one-line error (an edited record), never a traceback or a resume at the wrong image."""
    progress = parse_json(bytes(raw), f"the progress record of {path}", MAX_META_BYTES)
    ok = isinstance(progress, dict)
    consumed, written = (progress.get("consumed"), progress.get("written")) if ok else (None, None)
    ok = ok and type(consumed) is int and type(written) is int and 0 <= written <= consumed
    ok = ok and (expected is None or consumed <= expected)
    ok = ok and isinstance(progress.get("rejected"), list) and isinstance(progress.get("converted"), list)
    ok = ok and isinstance(progress.get("units", {}), dict) and isinstance(progress.get("fingerprint", {}), dict)
    if not ok:
        raise ImgnetError(f"the progress record of {path} is damaged or edited (consumed {consumed!r}, written "
                          f"{written!r}{f', of {expected} images' if expected is not None else ''}); pass --force "
                          "to start the split over")
    return progress


def progress_of(path: Path) -> int:
    """Source items an unfinished LMDB run at `path` has consumed (0 when there is none)."""
    if not (Path(path) / "data.mdb").is_file():
        return 0
    env = read_env(path)
    try:
        with env.begin() as txn:
            raw = txn.get(PROGRESS)
    finally:
        close_env(path)  # a writer opens it next
    return parse_progress(raw, path)["consumed"] if raw else 0


# ------------------------------------------------------------------------- small-data writer
def _labels_json(data_dir: Path, records: list, labels_json: dict | None, num_classes: int | None) -> dict:
    """The label map write_split packs with: the one given, the folder's labels.json, or generic classes c0.."""
    if labels_json is None and (data_dir / "labels.json").is_file():
        from imagenet_prep.labels import read_labels_json

        labels_json = read_labels_json(data_dir)
    if labels_json is None:
        n = num_classes or (max(r[1] for r in records) + 1 if records else 1)
        labels_json = {"order": "sorted", "classes": [
            {"index": i, "wnid": f"c{i}", "words": f"class {i}", "gloss": "", "ilsvrc2012_id": None}
            for i in range(n)], "hierarchy": {}}
    return labels_json


def write_split(data_dir, split: str, records: Iterable[tuple[np.ndarray, int, str]], *,
                format: str = "lmdb", encoding: str = "raw", quality: int = 90,
                labels_json: dict | None = None, num_classes: int | None = None) -> Split:
    """Pack in-memory (image, label, name) records in any registered `format`; for tests and generated data.
    Writes a generic labels.json (classes c0, c1, ...) when the folder has none and `labels_json` is not given."""
    from imagenet_prep.labels import labels_sha256

    fmt = get_format(format)
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    records = list(records)
    labels_json = _labels_json(data_dir, records, labels_json, num_classes)
    sizes = {np.shape(img)[0] for img, _, _ in records} or {SIZE}  # the side of the images given (square)
    if len(sizes) > 1:
        raise ImgnetError(f"records of sides {sorted(sizes)}; expected images of one size (N, N, 3)")
    (data_dir / "labels.json").write_text(json.dumps(labels_json, indent=1))
    meta = {"split": split, "format": format, "encoding": encoding, "quality": quality, "size": int(sizes.pop()),
            "num_classes": len(labels_json["classes"]), "label_order": labels_json.get("order", "sorted"),
            "labels_sha256": labels_sha256(labels_json), "layout": "in-memory"}
    final, staging = fmt.path(data_dir, split), fmt.staging_path(data_dir, split)
    if staging.exists():
        shutil.rmtree(staging)
    w = LmdbWriter(staging, {"records": len(records)}, len(records),
                   estimate_bytes_per_image(encoding, quality, meta["size"]))
    try:
        w.commit([(encode_image(img, encoding, quality), int(lbl), name) for img, lbl, name in records], len(records))
        if w.rejected:
            bad = w.rejected[0]
            raise ImgnetError(f"record {bad['name']!r}: {bad['reason']}")
        fmt.finalize(w, final, w.finish(meta))
    finally:
        w.close()
    if staging != final:
        shutil.rmtree(staging)
    return open_split(data_dir, split)

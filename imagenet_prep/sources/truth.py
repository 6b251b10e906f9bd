"""The labels of a flat val (and the check of a val that labels itself): a --val-labels file, Kaggle's
LOC_val_solution.csv, the devkit's ground truth (a folder or ILSVRC2012_devkit_t12.tar.gz, read in memory,
never extracted), else the ground truth shipped in imagenet_prep/data/. What SRC carries must agree with the
shipped ground truth: a disagreement is an error, not a silent relabelling."""

from __future__ import annotations

import csv
import gzip
import io
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from imagenet_prep.errors import ImgnetError
from imagenet_prep.labels import (GROUND_TRUTH_FILE, VAL_NAME, ClassMeta, is_wnid, load_class_meta, parse_ground_truth,
                                  load_val_ground_truth, parse_meta_mat, read_val_labels, sorted_wnids)
from imagenet_prep.sources import base
from imagenet_prep.sources.base import os_failure, small_file_reader
from imagenet_prep.sources.tarscan import check_tar_end

DEVKIT_TGZ = "ILSVRC2012_devkit_t12.tar.gz"
DEVKIT_DIRS = ("ILSVRC2012_devkit_t12", "devkit_t12")
GROUND_TRUTH, META = "data/ILSVRC2012_validation_ground_truth.txt", "data/meta.mat"
KAGGLE_SYNSETS, KAGGLE_VAL = "LOC_synset_mapping.txt", "LOC_val_solution.csv"
LabelFiles = dict[str, tuple[str, Callable[[], bytes]]]  # {name: (origin, () -> bytes)}


@dataclass
class Devkit:
    where: str
    read: Callable[[str], bytes | None]  # devkit-relative path -> bytes, None when absent

    def meta(self) -> ClassMeta:
        data = self.read(META)
        if data is None:
            raise ImgnetError(f"{self.where} has no {META}; expected the ILSVRC2012 devkit")
        return parse_meta_mat(data, origin=f"{self.where}/{META}")


def find_devkit(src: Path) -> Devkit | None:
    """A devkit folder (ILSVRC2012_devkit_t12/, devkit_t12/, any folder one level down, or SRC itself) holding
    data/meta.mat, else ILSVRC2012_devkit_t12.tar.gz in SRC (read into memory, never extracted)."""
    named = [src / d for d in DEVKIT_DIRS]
    others = sorted(p for p in src.iterdir() if p.is_dir() and p not in named and not p.name.startswith("."))
    for d in [*named, *others, src]:
        if (d / META).is_file():
            return Devkit(str(d), lambda rel, d=d: small_file_reader(d / rel, f"the devkit's {rel}")()
                           if (d / rel).exists() else None)
    tgz = src / DEVKIT_TGZ
    if tgz.exists():
        return Devkit(str(tgz), read_devkit_tgz(tgz).get)
    return None


def read_devkit_tgz(tgz: Path) -> dict[str, bytes]:
    """meta.mat and the ground truth from the devkit .tar.gz (2.5 MB): the gzip stream is read to its end so
    that its CRC and length are checked (a flipped bit is an error), and the tar must end with its end blocks."""
    wanted, found = (META, GROUND_TRUTH), {}
    try:
        raw = _gunzip(small_file_reader(tgz, "the ILSVRC2012 devkit (2.5 MB)")(), base.MAX_SMALL_FILE_BYTES, str(tgz))
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tf:
            for m in tf:
                rel = next((w for w in wanted if m.name == w or m.name.endswith("/" + w)), None)
                if rel and m.isreg():
                    found[rel] = tf.extractfile(m).read()
            check_tar_end(tf, str(tgz), len(raw))
    except OSError as e:
        if isinstance(e, gzip.BadGzipFile) or e.errno is None:
            raise ImgnetError(f"{tgz}: not a readable .tar.gz ({e}); expected the official ILSVRC2012 devkit "
                              "(re-download it)") from e
        raise os_failure(str(tgz), e) from e
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise ImgnetError(f"{tgz}: not a readable .tar.gz ({type(e).__name__}: {e}); expected the official "
                          "ILSVRC2012 devkit (re-download it)") from e
    return found


def _gunzip(data: bytes, limit: int, where: str) -> bytes:
    """Every member of a gzip file inflated, each checked against its CRC-32 and length (zlib checks the trailer),
    refused when they inflate past `limit` (a crafted file); zero padding after the last member is allowed."""
    out = b""
    while data.strip(b"\0"):
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out += d.decompress(data, limit + 1 - len(out))
        if d.unconsumed_tail or len(out) > limit:
            raise ImgnetError(f"{where} inflates to more than {limit:,} bytes; expected the ILSVRC2012 devkit "
                              "(about 15 MB)")
        out += d.flush()
        if not d.eof:
            raise EOFError("the gzip stream ends early")
        data = d.unused_data
    return out


class Truth:
    """The labels of a flat val: `wnid(name)` gives an image's class, `wnids` is the class list, `origin` the file.

    By number (the devkit's ground truth, shipped or found): ILSVRC2012_val_%08d.JPEG takes line n. By name (a
    Kaggle CSV, a --val-labels file): the image's name, or its stem, is looked up."""

    def __init__(self, origin: str, wnids: list[str], by_number: list[str] | None = None,
                 by_name: dict[str, str] | None = None):
        self.origin, self.wnids, self.by_number, self.by_name = origin, wnids, by_number, by_name

    def wnid(self, name: str) -> str:
        wnid, why = self._label(name)
        if wnid is None:
            raise ImgnetError(why)
        return wnid

    def stray(self, name: str) -> str | None:
        """Why a file of a flat val is passed over, or None: one named like no image (notes.txt: its extension is
        none of base.IMAGE_EXTS) that this truth does not label. An image that it does not label is an error."""
        ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
        if ext in base.IMAGE_EXTS or self._label(name)[0] is not None:
            return None
        return f"not an image file (by its name) and not labelled by {self.origin}"

    def _label(self, name: str) -> tuple[str | None, str]:
        """(wnid, "") of an image, or (None, why it has no label)."""
        if self.by_name is not None:
            wnid = self.by_name.get(name) or self.by_name.get(name.rsplit(".", 1)[0])
            return (wnid, "") if wnid else (None, f"val image {name!r} has no row {name.rsplit('.', 1)[0]!r} in "
                                                  f"{self.origin}; expected every val image listed there")
        m = VAL_NAME.fullmatch(name)
        if not m:
            return None, (f"val image {name!r} does not match ILSVRC2012_val_%08d.JPEG; expected the official val "
                          f"file names, whose number is their line in {self.origin}")
        n = int(m[1])
        if not 1 <= n <= len(self.by_number):
            return None, (f"val image {name} has number {n}, past the end of {self.origin} ({len(self.by_number)} "
                          f"lines); expected numbers 1 to {len(self.by_number)}")
        return self.by_number[n - 1], ""


def shipped_truth() -> Truth:
    return Truth(f"imagenet_prep/data/{GROUND_TRUTH_FILE} (shipped)", sorted_wnids(),
                  by_number=load_val_ground_truth())


def _disagree(origin: str, name: str, wnid: str, official: str, shipped: Truth) -> ImgnetError:
    return ImgnetError(f"{origin} labels {name} as {wnid}, but the ILSVRC2012 ground truth ({shipped.origin}) "
                       f"has {official}; expected the official labels (pass --val-labels FILE to use others on purpose)")


def check_item(name: str, wnid: str, shipped: Truth, origin: str) -> None:
    """An official val image labelled by its source (class folder, shard) must have its official class."""
    m = VAL_NAME.fullmatch(name)
    if m and 1 <= int(m[1]) <= len(shipped.by_number) and is_wnid(wnid):
        official = shipped.by_number[int(m[1]) - 1]
        if official != wnid:
            raise _disagree(origin, name, wnid, official, shipped)


def check_truth(truth: Truth, shipped: Truth) -> Truth:
    """A devkit's or a Kaggle CSV's labels must be the shipped ones wherever both label an image."""
    if truth.by_number is not None:
        if len(truth.by_number) != len(shipped.by_number):
            raise ImgnetError(f"{truth.origin} has {len(truth.by_number)} lines; expected the {len(shipped.by_number)} "
                              f"of the ILSVRC2012 ground truth ({shipped.origin})")
        for n, (w, official) in enumerate(zip(truth.by_number, shipped.by_number), start=1):
            if w != official:
                raise _disagree(f"{truth.origin} (line {n})", f"ILSVRC2012_val_{n:08d}.JPEG", w, official, shipped)
    else:
        for key, w in truth.by_name.items():
            check_item(key if key.endswith(".JPEG") else f"{key}.JPEG", w, shipped, truth.origin)
    return truth


def csv_truth(data: bytes, origin: str, synsets: bytes | None) -> Truth:
    """Kaggle LOC_val_solution.csv: ImageId (file name without extension) -> first token of PredictionString;
    the classes are LOC_synset_mapping.txt's (else the 1000 of the shipped metadata)."""
    text = data.decode("utf-8-sig", "replace")  # -sig: a byte-order mark that a spreadsheet saved in front
    rows = csv.reader(io.StringIO(text, newline=""))
    try:
        by_name = _csv_rows(rows, origin)
    except csv.Error as e:  # a field over csv's limit (128 KB), a NUL byte ...
        raise ImgnetError(f"{origin} line {rows.line_num}: not a readable CSV row ({e}); expected ImageId,<wnid> "
                          "x0 y0 x1 y1 ... rows of Kaggle's LOC_val_solution.csv") from e
    if synsets is not None:
        wnids = [ln.split(" ", 1)[0] for ln in synsets.decode("utf-8", "replace").splitlines() if ln.strip()]
    else:
        wnids = [c["wnid"] for c in load_class_meta().classes]
    return Truth(origin, wnids, by_name=by_name)


def _csv_rows(rows, origin: str) -> dict[str, str]:
    """{ImageId: wnid} of the rows of a csv.reader after the header, which is checked."""
    header = next(rows, None)
    if [h.strip() for h in header or ()] != ["ImageId", "PredictionString"]:
        raise ImgnetError(f"{origin} line 1 is {_shown_row(header or [])}; expected the header "
                          "ImageId,PredictionString of Kaggle's LOC_val_solution.csv")
    by_name = {}
    for row in rows:
        if not row or not "".join(row).strip():  # blank lines (at the end, or a spreadsheet's)
            continue
        if len(row) != 2 or not row[0].strip() or not is_wnid(row[1].strip().split(" ", 1)[0]):
            raise ImgnetError(f"{origin} line {rows.line_num}: {_shown_row(row)}; expected ImageId,<wnid> x0 y0 "
                              "x1 y1 ...")
        by_name[row[0].strip()] = row[1].strip().split(" ", 1)[0]
    return by_name


def _shown_row(row: list[str]) -> str:
    """A CSV row for a one-line message, cut to 200 characters."""
    text = repr(row)
    return text if len(text) <= 200 else text[:200] + "..."


def devkit_truth(devkit: Devkit, meta: ClassMeta) -> Truth:
    origin = f"{devkit.where}/{GROUND_TRUTH}"
    data = devkit.read(GROUND_TRUTH)
    if data is None:
        raise ImgnetError(f"{devkit.where} has no {GROUND_TRUTH}; expected the ILSVRC2012 devkit, whose "
                          "ground truth labels the flat val")
    return Truth(origin, [c["wnid"] for c in meta.classes], by_number=parse_ground_truth(data, meta, origin))


def find_truth(kaggle: dict, devkit: Devkit | None, meta: ClassMeta, prefer_csv: bool,
                val_labels, shipped: Truth) -> Truth:
    """The labels of a flat val: a --val-labels file; else the Kaggle CSV (preferred in the Kaggle layouts) or the
    devkit, each checked against the shipped ground truth; else the shipped ground truth itself."""
    if val_labels is not None:
        return Truth(f"--val-labels {val_labels}", shipped.wnids, by_name=read_val_labels(val_labels, shipped.wnids))
    csv_file = kaggle.get(KAGGLE_VAL)
    if csv_file and (prefer_csv or devkit is None):
        synsets = kaggle.get(KAGGLE_SYNSETS)
        return check_truth(csv_truth(csv_file[1](), csv_file[0], synsets[1]() if synsets else None), shipped)
    if devkit is not None:
        return check_truth(devkit_truth(devkit, meta), shipped)
    return shipped


def label_files(src: Path) -> LabelFiles:
    """Kaggle's label files in SRC's top folder, whatever the layout: they label a flat val there."""
    return {n: (str(src / n), small_file_reader(src / n, f"Kaggle's {n}")) for n in (KAGGLE_SYNSETS, KAGGLE_VAL)
            if (src / n).exists()}

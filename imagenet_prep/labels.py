"""Class metadata of the 1000 ILSVRC2012 classes, label maps and labels.json.

The metadata (wnid, words, gloss, ILSVRC2012_ID and the WordNet parents up to the root n00001740 'entity')
comes from the devkit's meta.mat when the source has one, otherwise from the derived file shipped in
imagenet_prep/data/ (see data/SOURCES.md and scripts/make_class_metadata.py).

Label orders: "sorted" (index = position of the wnid in sorted order; 0 = n01440764, as Caffe, Keras and
torchvision) and "devkit" (index = ILSVRC2012_ID - 1; 0 = n02119789). Both renumber a subset from 0.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import BinaryIO

from imagenet_prep.errors import ImgnetError

ORDERS = ("sorted", "devkit")
ROOT_WNID = "n00001740"  # WordNet 'entity'
NUM_CLASSES = 1000
SHIPPED_FILE = "ilsvrc2012_classes.json"
LABELS_FILE = "labels.json"
MAX_LABELS_JSON_BYTES = 64 << 20  # 1000 classes with the WordNet DAG: about 0.4 MB; 21k classes: about 10 MB
_WNID = re.compile(r"n\d{8}")
VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})\.JPEG")  # an official val image; group 1: its line in the ground truth


def is_wnid(name: str) -> bool:
    """True for a WordNet id such as n01440764."""
    return _WNID.fullmatch(name) is not None


# ------------------------------------------------------------------------------------ metadata
@dataclass(frozen=True)
class ClassMeta:
    """The devkit's synset table: `synsets` in ILSVRC2012_ID order (dicts with ilsvrc2012_id, wnid, words,
    gloss; IDs 1-1000 are the classes, 1001-1860 inner WordNet nodes) and `hierarchy` {wnid: sorted parent
    wnids} for every synset (the root n00001740 has [])."""

    synsets: tuple[dict, ...]
    hierarchy: dict[str, list[str]]
    origin: str  # the meta.mat it was read from, or the shipped file

    @functools.cached_property
    def classes(self) -> tuple[dict, ...]:
        return self.synsets[:NUM_CLASSES]

    @functools.cached_property
    def by_wnid(self) -> dict[str, dict]:
        return {c["wnid"]: c for c in self.classes}

    @functools.cached_property
    def wnid_of_id(self) -> dict[int, str]:
        return {c["ilsvrc2012_id"]: c["wnid"] for c in self.classes}


def parse_meta_mat(src: str | os.PathLike | bytes | BinaryIO, origin: str | None = None) -> ClassMeta:
    """Read the devkit's data/meta.mat (a path, its bytes or a file object) with scipy.io.loadmat.

    IDs 1-1000 are the leaf classes; the children lists of all 1860 synsets give the WordNet DAG. scipy's
    MAT-file reader is C code that a damaged file can crash (SIGSEGV on some flipped bits), so it runs in a
    worker process: a crash there is a one-line error naming the file, not the end of this process."""
    import scipy.io  # noqa: F401 - imported here, so that each forked reader has it already

    from imagenet_prep.errors import WorkerDied
    from imagenet_prep.pool import WorkerPool

    if origin is None:
        origin = os.fspath(src) if isinstance(src, (str, os.PathLike)) else "meta.mat"
    if isinstance(src, (str, os.PathLike)):
        src = Path(src).read_bytes()
    data = src if isinstance(src, bytes) else src.read()
    try:
        with WorkerPool(1, name="MAT-file reader") as pool:
            synsets, parents = next(iter(pool.imap(_read_meta_mat, [(data, origin)], describe=lambda t: t[1])))
    except WorkerDied as e:
        raise ImgnetError(f"{origin}: not a readable ILSVRC2012 devkit meta.mat, it crashed the MAT-file reader "
                          f"({e}); expected data/meta.mat from ILSVRC2012_devkit_t12 (re-download the devkit)") from None
    wnid_of = {s["ilsvrc2012_id"]: s["wnid"] for s in synsets}
    if [s["ilsvrc2012_id"] for s in synsets[:NUM_CLASSES]] != list(range(1, NUM_CLASSES + 1)):
        raise ImgnetError(f"{origin}: expected ILSVRC2012_IDs 1-{NUM_CLASSES} (the classes) among its "
                          f"{len(synsets)} synsets")
    hierarchy = {w: sorted(p) for w, p in sorted(parents.items())}
    if ROOT_WNID not in hierarchy:  # a table of the 1000 classes alone: the WordNet DAG comes from the shipped file
        hierarchy = {**{w: [] for w in wnid_of.values()}, **load_class_meta().hierarchy}
    return ClassMeta(tuple(synsets), hierarchy, origin)


def _read_meta_mat(task: tuple[bytes, str]) -> tuple[list[dict], dict[str, set[str]]]:
    """Worker: (synsets sorted by ILSVRC2012_ID, {wnid: parent wnids}) of a meta.mat's bytes."""
    import faulthandler

    import numpy as np
    import scipy.io

    faulthandler.disable()  # a crash here is reported in one line by the parent, not by a dump of this process

    data, origin = task
    try:
        table = scipy.io.loadmat(io.BytesIO(data), squeeze_me=True, struct_as_record=False)["synsets"]
        synsets = sorted(({"ilsvrc2012_id": int(s.ILSVRC2012_ID), "wnid": str(s.WNID), "words": str(s.words),
                           "gloss": str(s.gloss)} for s in table), key=lambda s: s["ilsvrc2012_id"])
        wnid_of = {s["ilsvrc2012_id"]: s["wnid"] for s in synsets}
        parents: dict[str, set[str]] = {s["wnid"]: set() for s in synsets}
        for s in table:
            for child in np.atleast_1d(s.children):
                parents[wnid_of[int(child)]].add(str(s.WNID))
    except Exception as e:  # noqa: BLE001 - scipy raises ValueError, KeyError, TypeError, OSError, ... for other files
        raise ImgnetError(f"{origin}: not a readable ILSVRC2012 devkit meta.mat ({type(e).__name__}: {e}); "
                          "expected data/meta.mat from ILSVRC2012_devkit_t12") from None
    return synsets, parents


@functools.lru_cache(maxsize=1)
def _shipped() -> ClassMeta:
    d = json.loads(resources.files("imagenet_prep").joinpath("data", SHIPPED_FILE).read_text(encoding="utf-8"))
    return ClassMeta(tuple(d["synsets"]), d["hierarchy"], f"imagenet_prep/data/{SHIPPED_FILE}")


def load_class_meta() -> ClassMeta:
    """The shipped metadata (the devkit's meta.mat table, its DAG cross-checked against WordNet is_a)."""
    return _shipped()


def sorted_wnids() -> list[str]:
    """The 1000 ILSVRC2012 wnids in sorted order: index k is label k of the sorted label order, of Caffe's
    synsets.txt, of the Hugging Face `label` column, of timm's `.cls` and of ImageNetV2's folder k."""
    return sorted(c["wnid"] for c in _shipped().classes)


def load_ilsvrc_classes() -> list[dict]:
    """The 1000 classes in ILSVRC2012_ID order: dicts with wnid, words, gloss, ilsvrc2012_id."""
    return [dict(c) for c in _shipped().classes]


def load_hierarchy() -> dict[str, list[str]]:
    """{wnid: parent wnids} for the 1000 classes and all their WordNet ancestors; the root n00001740 has []."""
    return {w: list(p) for w, p in _shipped().hierarchy.items()}


def load_synset_words() -> dict[str, str]:
    """{wnid: words} for all 1860 synsets of the devkit (classes and inner nodes), e.g. to name ancestors."""
    return {s["wnid"]: s["words"] for s in _shipped().synsets}


# ----------------------------------------------------------------------------------- label maps
@dataclass(frozen=True)
class LabelMap:
    """Classes in label order (`classes[i]["index"] == i`), plus the WordNet parents of the kept classes.

    `all_names` is the full class set in label order before `classes=N`; `index_of(name)` is None for a
    class that `classes=N` dropped and raises KeyError for a name that is not a class at all."""

    order: str
    classes: tuple[dict, ...]
    hierarchy: dict[str, list[str]]
    all_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> list[str]:
        return [c["wnid"] for c in self.classes]

    @functools.cached_property
    def _index(self) -> dict[str, int | None]:
        d: dict[str, int | None] = dict.fromkeys(self.all_names)
        d.update((c["wnid"], c["index"]) for c in self.classes)
        return d

    def index_of(self, name: str) -> int | None:
        return self._index[name]

    def __contains__(self, name: str) -> bool:
        return name in self._index

    def to_json(self) -> dict:
        return {"order": self.order, "classes": [dict(c) for c in self.classes],
                "hierarchy": {w: list(ps) for w, ps in self.hierarchy.items()}}


def build_label_map(wnids_or_names, order: str = "sorted", classes: int | None = None,
                    meta: ClassMeta | None = None) -> LabelMap:
    """Label map of the given class names (wnids or ImageFolder folder names; duplicates are ignored).

    order "sorted": names in sorted order; "devkit": by ILSVRC2012_ID (every name must be an ILSVRC2012
    wnid). `classes=N` keeps the first N in label order, renumbered from 0, each with its `source_index`.
    Names that are ILSVRC2012 wnids get words, gloss and ID from `meta` (default: the shipped metadata);
    other names get words = name, gloss "", ilsvrc2012_id None."""
    if order not in ORDERS:
        raise ImgnetError(f"label order {order!r} is not supported; expected one of {', '.join(ORDERS)}")
    meta = meta or load_class_meta()
    names = sorted(set(wnids_or_names))
    if not names:
        raise ImgnetError("no classes found; expected at least one class (wnid or class folder)")
    if order == "devkit":
        unknown = [n for n in names if n not in meta.by_wnid]
        if unknown:
            raise ImgnetError(f"label order 'devkit' needs ILSVRC2012 wnids as class names, but "
                              f"{len(unknown)} are not ({', '.join(map(repr, unknown[:5]))}); "
                              "expected names such as n01440764, or --label-order sorted")
        names.sort(key=lambda n: meta.by_wnid[n]["ilsvrc2012_id"])
    if classes is not None:
        if not isinstance(classes, int) or isinstance(classes, bool) or not 1 <= classes <= len(names):
            raise ImgnetError(f"classes={classes!r} is out of range; expected 1 to {len(names)} "
                              "(the number of classes in the source)")
    kept = names if classes is None else names[:classes]
    out = []
    for i, name in enumerate(kept):
        m = meta.by_wnid.get(name)
        c = {"index": i, "wnid": name, "words": m["words"] if m else name, "gloss": m["gloss"] if m else "",
             "ilsvrc2012_id": m["ilsvrc2012_id"] if m else None}
        if classes is not None:
            c["source_index"] = i  # the first N are kept, so the full-set index is the same number
        out.append(c)
    return LabelMap(order, tuple(out), _ancestry([n for n in kept if n in meta.by_wnid], meta.hierarchy),
                    tuple(names))


def _ancestry(wnids: list[str], hierarchy: dict[str, list[str]]) -> dict[str, list[str]]:
    """{wnid: parents} restricted to `wnids` and all their ancestors, keys sorted."""
    seen, stack = set(), list(wnids)
    while stack:
        w = stack.pop()
        if w not in seen:
            seen.add(w)
            stack.extend(hierarchy.get(w, ()))
    return {w: list(hierarchy.get(w, ())) for w in sorted(seen)}


# ----------------------------------------------------------------------------------- labels.json
def labels_sha256(labels_json: dict | LabelMap) -> str:
    """Stable hash of the class list (index, wnid, words, gloss, ID, source_index) of a labels.json dict."""
    if isinstance(labels_json, LabelMap):
        labels_json = labels_json.to_json()
    canon = json.dumps(labels_json["classes"], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def write_labels_json(out_dir: str | os.PathLike, label_map: LabelMap) -> Path:
    """Write OUT/labels.json atomically (a reader never sees half a file); returns its path."""
    from imagenet_prep.atomic import write_text

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LABELS_FILE
    write_text(path, json.dumps(label_map.to_json(), indent=1, ensure_ascii=False) + "\n")
    return path


def read_labels_json(data_dir: str | os.PathLike) -> dict:
    """Read and check DATA/labels.json; ImgnetError naming the path when it is missing or malformed."""
    from imagenet_prep.atomic import parse_json, read_bounded

    path = Path(data_dir) / LABELS_FILE
    try:
        raw = read_bounded(path, MAX_LABELS_JSON_BYTES, "the labels.json that `imgnet prep` writes")
    except FileNotFoundError:
        raise ImgnetError(f"{path} not found; expected the labels.json that `imgnet prep` writes") from None
    try:
        d = parse_json(raw, path, MAX_LABELS_JSON_BYTES)
    except ImgnetError as e:
        raise ImgnetError(f"{e}; expected the labels.json that `imgnet prep` writes") from None
    problem = _schema_problem(d)
    if problem:
        raise ImgnetError(f"{path} is not a valid labels.json: {problem}")
    return d


def _schema_problem(d) -> str | None:
    if not isinstance(d, dict):
        return "expected a JSON object"
    if d.get("order") not in ORDERS:
        return f"order is {d.get('order')!r}; expected one of {', '.join(ORDERS)}"
    classes = d.get("classes")
    if not isinstance(classes, list) or not classes:
        return "expected a non-empty list under 'classes'"
    for i, c in enumerate(classes):
        if not isinstance(c, dict) or not {"index", "wnid", "words", "gloss", "ilsvrc2012_id"} <= c.keys():
            return f"classes[{i}] lacks index, wnid, words, gloss or ilsvrc2012_id"
        if c["index"] != i or type(c["index"]) is not int:
            return f"classes[{i}] has index {c['index']!r}; expected {i} (classes in index order)"
        if not all(isinstance(c[k], str) for k in ("wnid", "words", "gloss")):
            return f"classes[{i}] has a wnid, words or gloss that is not a string"
    hierarchy = d.get("hierarchy")
    if not isinstance(hierarchy, dict) or not all(
            isinstance(ps, list) and all(isinstance(p, str) for p in ps) for ps in hierarchy.values()):
        return "expected an object {wnid: [parent wnids]} under 'hierarchy'"
    return None


# --------------------------------------------------------------------------------- val ground truth
GROUND_TRUTH_FILE = "ILSVRC2012_validation_ground_truth.txt"  # shipped copy of the devkit's file (data/SOURCES.md)
NUM_VAL = 50_000


def parse_ground_truth(data: bytes, meta: ClassMeta, origin: str) -> list[str]:
    """The devkit's ground-truth file: line n holds the ILSVRC2012_ID of ILSVRC2012_val_%08d.JPEG n.
    Returns the wnid of each line, through `meta` (the devkit's table or the shipped one)."""
    wnids = []
    for n, line in enumerate(data.decode("ascii", "replace").splitlines(), start=1):
        i = int(line) if line.strip().isdigit() else 0
        if i not in meta.wnid_of_id:
            raise ImgnetError(f"{origin} line {n} is {line!r}; expected an ILSVRC2012_ID from 1 to {NUM_CLASSES}")
        wnids.append(meta.wnid_of_id[i])
    return wnids


@functools.lru_cache(maxsize=1)
def _shipped_ground_truth() -> tuple[str, ...]:
    data = resources.files("imagenet_prep").joinpath("data", GROUND_TRUTH_FILE).read_bytes()
    return tuple(parse_ground_truth(data, _shipped(), f"imagenet_prep/data/{GROUND_TRUTH_FILE}"))


def load_val_ground_truth() -> list[str]:
    """The wnids of the 50,000 ILSVRC2012 val images in file-name order (entry n-1: ILSVRC2012_val_%08d n),
    from the devkit's ground truth shipped in imagenet_prep/data/, so that a flat val needs no devkit."""
    return list(_shipped_ground_truth())


def read_val_labels(path: str | os.PathLike, wnids: list[str]) -> dict[str, str]:
    """A `--val-labels` file: lines `<name> <index or wnid>` (Caffe's val.txt shape); an index is the position
    in the sorted list `wnids`, whatever the label order. Returns {name: wnid}; blank and # lines are skipped."""
    from imagenet_prep.atomic import read_bounded

    path = Path(path)
    try:  # bounded: a link to /dev/zero or a FIFO is an error, not a hang
        text = read_bounded(path, MAX_LABELS_JSON_BYTES, "a --val-labels text file").decode("utf-8")
    except ImgnetError as e:
        raise ImgnetError(f"--val-labels {e}; expected lines '<name> <index or wnid>' such as Caffe's val.txt") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ImgnetError(f"--val-labels {path} is not a readable text file ({e}); expected lines "
                          "'<name> <index or wnid>' such as Caffe's val.txt") from e
    known, out = set(wnids), {}
    for n, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        label = parts[1] if len(parts) == 2 else ""
        wnid = wnids[int(label)] if label.isdigit() and int(label) < len(wnids) else label
        if wnid not in known:
            raise ImgnetError(f"{path} line {n} is {line.strip()!r}; expected '<name> <index or wnid>' with an index "
                              f"from 0 to {len(wnids) - 1} (sorted-wnid order) or one of the {len(wnids)} wnids")
        if parts[0] in out:
            raise ImgnetError(f"{path} line {n} labels {parts[0]} a second time; expected each name once")
        out[parts[0]] = wnid
    if not out:
        raise ImgnetError(f"{path} holds no labels; expected lines '<name> <index or wnid>' such as Caffe's val.txt")
    return out

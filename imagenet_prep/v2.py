"""ImageNetV2 (Recht et al. 2019, "Do ImageNet classifiers generalize to ImageNet?") as a test split.

Three published variants, each a folder of class folders `0`..`999` holding opaque file names:

    imagenetv2-matched-frequency-format-val   split v2-matched-frequency
    imagenetv2-threshold0.7-format-val        split v2-threshold0.7
    imagenetv2-top-images-format-val          split v2-top-images

Folder n is the n-th ILSVRC2012 wnid in sorted order. The folders must be read in numeric order: a string
sort (ImageFolder's) puts 10 before 2 and scrambles the labels. Each image is labelled through the label
map of an existing DATA folder (folder n -> sorted wnid n -> DATA's index for that wnid), so that
`--label-order devkit` and `--classes` subsets hold; images of classes outside DATA's label map are
skipped and counted. Nothing here writes labels.json: V2 is evaluated with the classes DATA was trained on.

    v2 = discover_v2(SRC, read_labels_json(DATA))          # SRC: a variant folder or the folder above one
    v2.split, v2.items, v2.skipped, v2.outside              # items: sources.Item, as `discover` lists them
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from imagenet_prep.errors import ImgnetError
from imagenet_prep.labels import NUM_CLASSES, sorted_wnids
from imagenet_prep.sources.base import Item, junk

VARIANTS = {
    "imagenetv2-matched-frequency-format-val": "v2-matched-frequency",
    "imagenetv2-threshold0.7-format-val": "v2-threshold0.7",
    "imagenetv2-top-images-format-val": "v2-top-images",
}
SPLITS = tuple(VARIANTS.values())
ANY = "v2"  # --split v2: whichever variant SRC holds
LAYOUT = "imagenetv2"  # the layout name in a split's fingerprint and metadata
_FOLDER = re.compile(r"0|[1-9]\d{0,2}")  # 0..999 as written by the published archives (no leading zeros)


@dataclass
class V2Split:
    """What `discover_v2` found: one variant's images labelled in DATA's label map."""

    src: Path                       # the variant folder
    variant: str                    # its published name, e.g. imagenetv2-matched-frequency-format-val
    split: str                      # the split it packs into, e.g. v2-matched-frequency
    items: list[Item]               # ordered by (folder number, file name); Item.name "<folder>/<file>"
    skipped: list[dict] = field(default_factory=list)  # [{"name", "reason"}]: system files, stray folders
    outside: int = 0                # images of classes that DATA's label map does not hold (--classes)
    outside_classes: int = 0        # class folders holding those images
    missing: list[int] = field(default_factory=list)  # folder numbers absent from 0..999


def find_variant(src, split: str = ANY) -> tuple[Path, str]:
    """(variant folder, split name) for SRC: a variant folder itself, or a folder holding variants.

    split "v2" takes the one variant SRC holds (an error when it holds several); a variant's split name
    takes that one, and also accepts a renamed variant folder of class folders 0..999 as SRC."""
    src = Path(src)
    if split != ANY and split not in SPLITS:
        raise ImgnetError(f"split {split!r} is not an ImageNetV2 split; expected {ANY} or one of {', '.join(SPLITS)}")
    if not src.is_dir():
        raise ImgnetError(f"ImageNetV2 source {src} is not a folder; expected a variant folder such as "
                          f"{next(iter(VARIANTS))}/ or the folder holding it")
    if src.name in VARIANTS:
        if split not in (ANY, VARIANTS[src.name]):
            raise ImgnetError(f"{src} is the {VARIANTS[src.name]} variant, not {split}")
        return src, VARIANTS[src.name]
    held = {VARIANTS[p.name]: p for p in sorted(src.iterdir()) if p.is_dir() and p.name in VARIANTS}
    if split in held:
        return held[split], split
    if split == ANY and len(held) == 1:
        return next(iter(held.values())), next(iter(held))
    if split == ANY and held:
        raise ImgnetError(f"{src} holds {len(held)} ImageNetV2 variants ({', '.join(held)}); expected "
                          "--split naming one of them")
    numbered = any(_FOLDER.fullmatch(p.name) for p in src.iterdir() if p.is_dir())
    if split != ANY and numbered:
        return src, split  # a renamed variant folder, named by the split asked for
    archives = sorted(p.name for p in src.iterdir() if p.name.startswith("imagenetv2") and p.is_file())
    hint = f" ({', '.join(archives)}: extract it first)" if archives else ""
    if numbered:
        hint += f" (it holds numbered class folders: name its variant with --split {'|'.join(SPLITS)})"
    want = "" if split == ANY else f" (for {split}: {next(k for k, v in VARIANTS.items() if v == split)})"
    raise ImgnetError(f"{src} holds no ImageNetV2 variant{want}{hint}; expected one of the folders "
                      f"{', '.join(VARIANTS)} (class folders 0..999), or that folder itself")


def _class_folders(root: Path, skipped: list[dict]) -> dict[int, Path]:
    """{folder number: path} of root's class folders; an ImgnetError for anything else that is no junk."""
    folders = {}
    with os.scandir(root) as it:
        for e in it:
            is_dir = e.is_dir()
            reason = junk(e.name, is_dir)
            if reason:
                skipped.append({"name": e.name + "/" * is_dir, "reason": reason})
            elif not is_dir or not _FOLDER.fullmatch(e.name) or int(e.name) >= NUM_CLASSES:
                raise ImgnetError(f"{root} holds {e.name!r}{'/' if is_dir else ''}; expected only the class "
                                  f"folders 0 to {NUM_CLASSES - 1} of an ImageNetV2 variant")
            else:
                folders[int(e.name)] = Path(e.path)
    if not folders:
        raise ImgnetError(f"{root} holds no class folders; expected folders 0 to {NUM_CLASSES - 1} of images")
    return folders


def _images(folder: Path, n: int, skipped: list[dict]) -> list[tuple[str, str]]:
    """(file name, path) of the images in class folder n, sorted by name."""
    out = []
    with os.scandir(folder) as it:
        for e in it:
            is_dir = e.is_dir()
            reason = junk(e.name, is_dir) or ("a folder inside a class folder" if is_dir else None)
            if reason is None and not e.is_file():
                reason = "not a regular file (a broken link?)"
            if reason:
                skipped.append({"name": f"{n}/{e.name}" + "/" * is_dir, "reason": reason})
            else:
                out.append((e.name, e.path))
    return sorted(out)


def data_index_of_folder(labels_json: dict) -> list[int | None]:
    """Folder n -> DATA label index (None: a class DATA's label map does not hold), for n in 0..999.

    Folder n is the n-th sorted ILSVRC2012 wnid; DATA's classes must be ILSVRC2012 wnids."""
    wnids = sorted_wnids()
    index = {c["wnid"]: c["index"] for c in labels_json["classes"]}
    foreign = [w for w in index if w not in set(wnids)]
    if foreign:
        raise ImgnetError(f"DATA's labels.json holds classes that are not ILSVRC2012 wnids "
                          f"({', '.join(map(repr, foreign[:3]))}{', ...' if len(foreign) > 3 else ''}); "
                          "ImageNetV2 is labelled with the 1000 ILSVRC2012 classes, so it needs a DATA "
                          "folder prepared from ILSVRC2012")
    return [index.get(w) for w in wnids]


def discover_v2(src, labels_json: dict, split: str = ANY, per_class: int | None = None) -> V2Split:
    """List an ImageNetV2 variant's images, labelled in DATA's label map (`labels_json`: DATA/labels.json
    as `read_labels_json` returns it); `per_class=N` keeps the first N names of each class."""
    if per_class is not None and (not isinstance(per_class, int) or isinstance(per_class, bool) or per_class < 1):
        raise ImgnetError(f"per_class={per_class!r}; expected a positive number of images per class")
    root, name = find_variant(src, split)
    to_data = data_index_of_folder(labels_json)
    skipped: list[dict] = []
    folders = _class_folders(root, skipped)
    out = V2Split(root, root.name, name, [], skipped, missing=[n for n in range(NUM_CLASSES) if n not in folders])
    for n in sorted(folders):  # numeric order: folder n is sorted wnid n
        images = _images(folders[n], n, skipped)[:per_class]
        if to_data[n] is None:
            out.outside += len(images)
            out.outside_classes += bool(images)
            continue
        out.items += [Item(f"{n}/{file}", to_data[n], path) for file, path in images]
    if not out.items:
        raise ImgnetError(f"{root} holds no images of DATA's {len(labels_json['classes'])} classes "
                          f"({out.outside} images of other classes skipped); expected image files in its "
                          "class folders")
    skipped.sort(key=lambda d: d["name"])
    return out

"""A generated stand-in for the real fixtures of ../shared/data, so that a fresh clone tests every layout.

`make_fixtures(dest)` writes the files the layout tests read from the real folder, with the same paths,
file names and labels, and synthetic pictures (imagenet_prep.synthetic's class pictures):

    devkit_t12/data/meta.mat, ILSVRC2012_validation_ground_truth.txt   the 1860 synsets with their children;
                                                                        the shipped ground truth
    kaggle_loc/LOC_synset_mapping.txt, LOC_val_solution.csv            all 50,000 val rows (shuffled, 1-2 boxes)
    caffe_ilsvrc12/synsets.txt, synset_words.txt, val.txt              sorted-wnid indices
    images/val_original/ILSVRC2012_val_00000001-00000100.JPEG          sizes from 120x90 to 250x188 (small: fast);
                                                                        every 17th greyscale (as is 34)
    images/imagenette2_224_subset/{train,val}/<wnid>/                  the 10 Imagenette classes, 224x224:
        train: 8 <wnid>_<n>.JPEG and 2 ILSVRC2012_val_%08d.JPEG of that class, val: 5 of that class
    images/test_original/ILSVRC2012_test_00000001-5.JPEG

Labels come from the package's shipped metadata and ground truth, which equal the real devkit's; what
differs from the real folder is the pixels (so sizes, modes and bytes), the Kaggle boxes, and the
files no layout reads (ReaL labels, WordNet, Keras, the 2015 devkit)."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

import numpy as np
import scipy.io

from imagenet_prep.labels import load_class_meta, load_val_ground_truth
from imagenet_prep.synthetic import _jpeg, class_image

IMAGENETTE = ["n01440764", "n02102040", "n02979186", "n03000684", "n03028079",
              "n03394916", "n03417042", "n03425413", "n03445777", "n03888257"]
N_VAL = 100  # val_original: ILSVRC2012_val_00000001-00000100
MARKER = "GENERATED"  # in the folder's root: tells a generated folder from the real one
VAL_SIZES = [(250, 188), (120, 90), (188, 250), (200, 150), (160, 240), (224, 224), (160, 120), (180, 240)]


def make_fixtures(dest: Path, seed: int = 0) -> Path:
    """Write the generated counterpart of ../shared/data into `dest`; returns dest."""
    rng = np.random.default_rng(seed)
    dest.mkdir(parents=True)
    (dest / MARKER).write_text("made by tests/fixtures.py; not the real ILSVRC2012 files\n")
    classes = load_class_meta().classes
    wnids = sorted(c["wnid"] for c in classes)
    index = {w: i for i, w in enumerate(wnids)}
    truth = load_val_ground_truth()

    def picture(wnid: str, size: tuple[int, int], grey: bool = False) -> bytes:
        return _jpeg(class_image(rng, index[wnid] % 10, 10, size), grey=grey)

    # label files, from the shipped metadata
    kit = dest / "devkit_t12" / "data"
    kit.mkdir(parents=True)
    devkit_meta_mat(kit / "meta.mat")
    (kit / "ILSVRC2012_validation_ground_truth.txt").write_bytes(
        resources.files("imagenet_prep").joinpath("data", "ILSVRC2012_validation_ground_truth.txt").read_bytes())
    words = "".join(f"{w} {c['words']}\n" for w, c in sorted((c["wnid"], c) for c in classes))
    (dest / "kaggle_loc").mkdir()
    (dest / "kaggle_loc" / "LOC_synset_mapping.txt").write_text(words)
    rows = [f"ILSVRC2012_val_{n:08d},{w} 10 20 {110 + n % 90} {120 + n % 70} " + (f"{w} 5 6 70 80 " if n % 3 else "")
            for n, w in enumerate(truth, start=1)]  # one or two boxes, each line ending in a space as Kaggle's
    rows = [rows[k] for k in rng.permutation(len(rows))]  # in no particular order, as Kaggle's
    (dest / "kaggle_loc" / "LOC_val_solution.csv").write_text("".join(f"{r}\n" for r in ["ImageId,PredictionString", *rows]))
    caffe = dest / "caffe_ilsvrc12"
    caffe.mkdir()
    (caffe / "synsets.txt").write_text("".join(f"{w}\n" for w in wnids))
    (caffe / "synset_words.txt").write_text(words)
    (caffe / "val.txt").write_text("".join(f"ILSVRC2012_val_{n:08d}.JPEG {index[w]}\n"
                                           for n, w in enumerate(truth, start=1)))

    # pictures
    images = dest / "images"
    (images / "val_original").mkdir(parents=True)
    for n in range(1, N_VAL + 1):
        (images / "val_original" / f"ILSVRC2012_val_{n:08d}.JPEG").write_bytes(
            picture(truth[n - 1], VAL_SIZES[n % len(VAL_SIZES)], grey=n % 17 == 0))
    (images / "test_original").mkdir()
    for n in range(1, 6):
        (images / "test_original" / f"ILSVRC2012_test_{n:08d}.JPEG").write_bytes(
            picture(wnids[n], VAL_SIZES[n], grey=False))
    for k, wnid in enumerate(IMAGENETTE):
        numbers = [n for n, w in enumerate(truth, start=1) if w == wnid]  # 50 val images per class
        names = {"train": [f"{wnid}_{10000 + 37 * j}.JPEG" for j in range(8)]
                 + [f"ILSVRC2012_val_{n:08d}.JPEG" for n in numbers[5:7]],
                 "val": [f"ILSVRC2012_val_{n:08d}.JPEG" for n in numbers[:5]]}
        for split, files in names.items():
            folder = images / "imagenette2_224_subset" / split / wnid
            folder.mkdir(parents=True)
            for j, name in enumerate(files):
                (folder / name).write_bytes(picture(wnid, (224, 224), grey=(j + k) % 13 == 0))
    return dest


def devkit_meta_mat(path: Path) -> None:
    """The devkit's data/meta.mat from the shipped metadata: all 1860 synsets in ILSVRC2012_ID order (the 1000
    classes, then the inner WordNet nodes, each with its children's IDs), in the devkit's MATLAB struct layout."""
    meta = load_class_meta()
    ids = {s["wnid"]: s["ilsvrc2012_id"] for s in meta.synsets}
    children: dict[str, list[int]] = {w: [] for w in ids}
    for child, parents in meta.hierarchy.items():
        for parent in parents:
            children[parent].append(ids[child])
    fields = ("ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
              "num_train_images")
    table = np.zeros((len(meta.synsets), 1), dtype=[(f, "O") for f in fields])
    for i, s in enumerate(meta.synsets):
        kids = np.array(sorted(children[s["wnid"]]), np.uint16).reshape(1, -1)
        table[i, 0] = (np.array([[s["ilsvrc2012_id"]]], np.uint16), np.array([s["wnid"]]), np.array([s["words"]]),
                       np.array([s["gloss"]]), np.array([[kids.size]], np.uint16), kids, np.array([[0]], np.uint8),
                       np.array([[1300 if i < 1000 else 0]], np.uint16))
    scipy.io.savemat(path, {"synsets": table}, do_compression=True)


def generated(folder: Path) -> bool:
    """True for a folder that make_fixtures wrote, False for the real ../shared/data."""
    return (folder / MARKER).is_file()


def fixture_tree(cache: Path) -> Path:
    """make_fixtures into `cache`/fixtures once (a session's temporary folder); returns that folder."""
    dest = cache / "fixtures"
    if not (dest / "images" / "test_original").is_dir():
        shutil.rmtree(dest, ignore_errors=True)
        make_fixtures(dest)
    return dest

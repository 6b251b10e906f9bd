"""A small ILSVRC2012-shaped source made on the fly: the official archive layout with learnable classes.

`make_sample(dest)` writes, like the real download:
    ILSVRC2012_img_train.tar       a tar of per-class tars <wnid>.tar holding <wnid>_<n>.JPEG
    ILSVRC2012_img_val.tar         flat ILSVRC2012_val_%08d.JPEG
    ILSVRC2012_devkit_t12.tar.gz   data/meta.mat (the 1000 classes) and data/ILSVRC2012_validation_ground_truth.txt

Classes are real ILSVRC2012 wnids; their pictures are synthetic: each class has its own hue and stripe
orientation, drawn with random phase, position, contrast and noise at real-world sizes and aspect
ratios, so a network can learn them from a few dozen images. Used by `imgnet demo`, the benchmarks and
the tests; no real image ships with the package.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np

# the first ten classes in sorted-wnid order, so that `imgnet prep --classes N` keeps exactly the first N
DEMO_WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361", "n01494475",
              "n01496331", "n01498041", "n01514668", "n01514859", "n01518878"]
SIZES = [(500, 375), (375, 500), (500, 333), (640, 480), (400, 400), (333, 500), (800, 600), (300, 225)]


def class_image(rng: np.random.Generator, cls: int, n_classes: int, size: tuple[int, int]) -> np.ndarray:
    """A uint8 (H, W, 3) picture of class `cls`: its hue and stripe angle, random everything else."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = np.pi * cls / n_classes + rng.normal(0, 0.08)
    period = rng.uniform(18, 40) * min(w, h) / 300
    phase = rng.uniform(0, 2 * np.pi)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period + phase)
    hue = 2 * np.pi * cls / n_classes
    base = np.array([np.cos(hue), np.cos(hue - 2.094), np.cos(hue + 2.094)], np.float32)
    colour = 128 + 70 * base + rng.normal(0, 12, 3)
    contrast = rng.uniform(35, 70)
    # a soft blob at a random place, so crops differ in content
    cx, cy, r = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h, rng.uniform(0.15, 0.4) * min(w, h)
    blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))[..., None]
    img = colour + contrast * stripes[..., None] * (0.4 + 0.6 * blob) + rng.normal(0, 10, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _jpeg(img: np.ndarray, quality: int = 90, grey: bool = False) -> bytes:
    from PIL import Image

    im = Image.fromarray(img, "RGB")
    if grey:
        im = im.convert("L")  # real ILSVRC has greyscale JPEGs
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 1335744000  # fixed: identical inputs give identical archives
    tar.addfile(info, io.BytesIO(data))


def _meta_mat(path: Path) -> None:
    """devkit data/meta.mat with the 1000 leaf synsets, in the devkit's MATLAB struct layout."""
    import scipy.io

    from imagenet_prep.labels import load_ilsvrc_classes

    classes = sorted(load_ilsvrc_classes(), key=lambda c: c["ilsvrc2012_id"])
    dtype = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("gloss", "O"), ("num_children", "O"),
             ("children", "O"), ("wordnet_height", "O"), ("num_train_images", "O")]
    synsets = np.zeros((len(classes), 1), dtype=dtype)
    for i, c in enumerate(classes):
        synsets[i, 0] = (np.array([[c["ilsvrc2012_id"]]], np.uint16), np.array([c["wnid"]]), np.array([c["words"]]),
                         np.array([c["gloss"]]), np.array([[0]], np.uint8), np.zeros((1, 0), np.uint8),
                         np.array([[0]], np.uint8), np.array([[1300]], np.uint16))
    scipy.io.savemat(path, {"synsets": synsets})


def make_sample(dest, classes: int = 4, train_per_class: int = 40, val_per_class: int = 10,
                seed: int = 0, sizes=SIZES, grey_every: int = 17) -> Path:
    """Write the three official archives for `classes` of DEMO_WNIDS into `dest`; returns dest."""
    from imagenet_prep.labels import load_ilsvrc_classes, load_val_ground_truth

    if not 1 <= classes <= len(DEMO_WNIDS):
        raise ValueError(f"classes={classes}; expected 1..{len(DEMO_WNIDS)}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    wnids = DEMO_WNIDS[:classes]
    ids = {c["wnid"]: c["ilsvrc2012_id"] for c in load_ilsvrc_classes()}
    k = 0

    def picture(cls: int) -> bytes:
        nonlocal k
        k += 1
        size = sizes[int(rng.integers(len(sizes)))]
        return _jpeg(class_image(rng, cls, classes, size), grey=grey_every > 0 and k % grey_every == 0)

    with tarfile.open(dest / "ILSVRC2012_img_train.tar.part", "w") as outer:
        for cls, wnid in enumerate(wnids):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as inner:
                for j in range(train_per_class):
                    _add(inner, f"{wnid}_{1000 + j}.JPEG", picture(cls))
            _add(outer, f"{wnid}.tar", buf.getvalue())
    # val: the real val numbers of these classes (interleaved, as in the release), so that the devkit's
    # ground truth is the real one, which prep checks against the copy it ships
    truth = load_val_ground_truth()
    val = sorted(n for w in wnids for n in [k + 1 for k, t in enumerate(truth) if t == w][:val_per_class])
    with tarfile.open(dest / "ILSVRC2012_img_val.tar.part", "w") as tar:
        for n in val:
            _add(tar, f"ILSVRC2012_val_{n:08d}.JPEG", picture(wnids.index(truth[n - 1])))
    devkit_dir = dest / ".devkit"
    (devkit_dir / "data").mkdir(parents=True, exist_ok=True)
    _meta_mat(devkit_dir / "data" / "meta.mat")
    (devkit_dir / "data" / "ILSVRC2012_validation_ground_truth.txt").write_text(
        "".join(f"{ids[w]}\n" for w in truth))
    with tarfile.open(dest / "ILSVRC2012_devkit_t12.tar.gz.part", "w:gz") as tar:
        tar.add(devkit_dir, arcname="ILSVRC2012_devkit_t12")
    for name in ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", "ILSVRC2012_devkit_t12.tar.gz"):
        os.replace(dest / f"{name}.part", dest / name)
    shutil.rmtree(devkit_dir)
    return dest

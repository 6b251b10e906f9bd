"""A tiny packed DATA folder at any image size (32, 64, ...) for the trainer's tests, made on the fly.

Until the store records the image size in a split's meta (issue 19's data side: prep --size), its record
shape is one constant; `store_size(monkeypatch, n)` sets that constant for one test, in this process, so
write_split, the readers and pca-stats work at n x n, and has the trainer read a split's size from its
image_shape where the meta has no "size". Runs using it load with workers=0 (in process)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

MODULES = ("imagenet_prep.store.records", "imagenet_prep.store.writer", "imagenet_prep.store.lmdb",
           "imagenet_prep.store.hdf5", "imagenet_prep.stats")


def store_size(monkeypatch, size: int) -> None:
    """The store's record shape set to (size, size, 3) for this test (a no-op at 256)."""
    import importlib

    shape = (size, size, 3)
    for name in MODULES:
        mod = importlib.import_module(name)
        if hasattr(mod, "IMAGE_SHAPE"):
            monkeypatch.setattr(mod, "IMAGE_SHAPE", shape)
        if hasattr(mod, "RAW_BYTES"):
            monkeypatch.setattr(mod, "RAW_BYTES", size * size * 3)
    import trainer.data

    monkeypatch.setattr(trainer.data, "split_size",
                        lambda split: int(split.meta.get("size") or split.meta["image_shape"][0]))


def class_images(rng: np.random.Generator, label: int, classes: int, size: int, n: int) -> list[np.ndarray]:
    """n uint8 (size, size, 3) images of one class: its own colour plus noise (separable by their mean)."""
    base = np.zeros(3)
    base[label % 3] = 170 if label < 3 else 90
    base[(label + 1) % 3] += 40 * (label // 3)
    noise = rng.normal(0, 25, (n, size, size, 3))
    return list(np.clip(base + 40 + noise, 0, 255).astype(np.uint8))


def make_sized_data(root: Path, size: int, classes: int = 4, train_per_class: int = 16, held_per_class: int = 4,
                    held_out: str = "test", seed: int = 0) -> Path:
    """DATA with train and `held_out` (test: a CIFAR download's held-out split) at size x size, write_split's
    generic labels.json and the statistics. Call store_size(monkeypatch, size) first."""
    from imagenet_prep.stats import compute_stats
    from imagenet_prep.store import write_split

    rng = np.random.default_rng(seed)
    for split, per in (("train", train_per_class), (held_out, held_per_class)):
        records = [(img, c, f"{split}_{c}_{j}.png") for c in range(classes)
                   for j, img in enumerate(class_images(rng, c, classes, size, per))]
        write_split(root, split, records, num_classes=classes)
    compute_stats(root, workers=1, progress=False)
    return root

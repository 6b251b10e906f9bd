"""A tiny packed DATA folder at any image size (32, 64, ...) for the trainer's tests, made on the fly
(write_split records the images' side in each split's meta, as prep --size does)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

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
    generic labels.json and the statistics."""
    from imagenet_prep.stats import compute_stats
    from imagenet_prep.store import write_split

    rng = np.random.default_rng(seed)
    for split, per in (("train", train_per_class), (held_out, held_per_class)):
        records = [(img, c, f"{split}_{c}_{j}.png") for c in range(classes)
                   for j, img in enumerate(class_images(rng, c, classes, size, per))]
        write_split(root, split, records, num_classes=classes)
    compute_stats(root, workers=1, progress=False)
    return root

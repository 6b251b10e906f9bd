"""`imgnet pca-stats`: mean image, RGB covariance and its eigendecomposition over the train split.

Section 4.1 of the paper: PCA on the set of RGB pixel values throughout the training set. Workers
accumulate exact int64 sums of the 0-255 values (sum x, sum x x^T, the per-position sum image), so
the result is the same for any number of workers and any order; conversion to the [0, 1] scale and
the eigendecomposition happen once at the end in float64.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from imagenet_prep.atomic import write_json
from imagenet_prep.errors import ImgnetError
from imagenet_prep.store import IMAGE_SHAPE, open_split

BATCH = 64  # images per exact float64 partial sum: 64 * 65,536 * 255^2 < 2^53
GRAM_IMAGES = 4  # images per float64 matmul, so the float copy stays in cache
SAMPLE_SEED = 0


def _sums(data_dir: str, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact int64 (sum_rgb (3,), sum_outer (3, 3), sum_image (256, 256, 3)) over `indices`."""
    split = open_split(data_dir, "train")
    s2 = np.zeros((3, 3), np.int64)
    simg = np.zeros(IMAGE_SHAPE, np.int64)
    buf = np.empty((BATCH, *IMAGE_SHAPE), np.uint8)
    px = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
    xf = np.empty((GRAM_IMAGES * px, 3), np.float64)  # cache-sized float64 copy for the Gram matrix
    for lo in range(0, len(indices), BATCH):
        chunk = indices[lo:lo + BATCH]
        b = buf[:len(chunk)]
        for j, i in enumerate(chunk):
            split.read_image(int(i), out=b[j])
        simg += b.sum(axis=0, dtype=np.uint32)  # <= 64 * 255: exact in uint32
        gram = np.zeros((3, 3))
        for g in range(0, len(chunk), GRAM_IMAGES):
            x = xf[:min(GRAM_IMAGES, len(chunk) - g) * px]
            np.copyto(x, b[g:g + GRAM_IMAGES].reshape(-1, 3))
            gram += x.T @ x  # integer-valued and below 2^53 over a batch: exact in float64
        s2 += gram.astype(np.int64)
    split.close()
    return simg.sum(axis=(0, 1)), s2, simg


def sample_indices(n_total: int, sample: int | None) -> np.ndarray:
    """All indices, or `sample` of them drawn without replacement with a fixed seed, sorted."""
    if sample is None or sample >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(SAMPLE_SEED).choice(n_total, size=sample, replace=False))


def finalize(s1: np.ndarray, s2: np.ndarray, simg: np.ndarray, n_images: int) -> dict:
    """Exact sums -> the statistics of DESIGN.md ([0, 1] scale; mean_image on the 0-255 scale)."""
    n_pixels = n_images * IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
    mean = s1 / n_pixels / 255.0
    cov = s2 / n_pixels / 255.0**2 - np.outer(mean, mean)  # population covariance, ddof 0
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1]  # descending; eigvec[:, j] belongs to eigval[j]
    eigval, eigvec = eigval[order], eigvec[:, order]
    return {
        "mean_rgb": mean.tolist(),
        "std_rgb": np.sqrt(np.diag(cov)).tolist(),
        "cov": cov.tolist(),
        "eigval": eigval.tolist(),
        "eigvec": eigvec.tolist(),
        "n_pixels": int(n_pixels),
        "n_images": int(n_images),
        "mean_image": (simg / n_images).astype(np.float32),
    }


def compute_stats(data_dir, sample: int | None = None, workers: int | None = None, progress: bool = True) -> dict:
    """Compute and write DATA/stats.json and DATA/stats.h5; returns the statistics."""
    import h5py
    from joblib import Parallel, delayed
    from tqdm import tqdm

    data_dir = str(data_dir)
    split = open_split(data_dir, "train")
    n_total = len(split)
    if n_total == 0:
        raise ImgnetError(f"the train split in {data_dir} is empty; nothing to compute statistics from")
    indices = sample_indices(n_total, sample)
    workers = max(1, min(workers or os.cpu_count() or 1, len(indices) // BATCH + 1))
    # chunks of whole batches, several per worker so the bar moves and the load balances
    n_chunks = min(len(indices) // BATCH + 1, workers * 16)
    chunks = [c for c in np.array_split(indices, n_chunks) if len(c)]
    s1, s2, simg = np.zeros(3, np.int64), np.zeros((3, 3), np.int64), np.zeros(IMAGE_SHAPE, np.int64)
    bar = tqdm(total=len(indices), unit="img", desc="pca-stats", disable=None if progress else True)
    jobs = (delayed(_sums)(data_dir, c) for c in chunks)
    parallel = Parallel(n_jobs=workers, return_as="generator") if workers > 1 else None
    results = parallel(jobs) if parallel else (_sums(data_dir, c) for c in chunks)
    for c, (a, b, img) in zip(chunks, results):
        s1 += a
        s2 += b
        simg += img
        bar.update(len(c))
    bar.close()
    stats = finalize(s1, s2, simg, len(indices))
    stats["source"] = {"split": "train", "sample": sample, "labels_sha256": split.meta.get("labels_sha256")}

    out = Path(data_dir)
    tmp_h5 = out / "stats.h5.tmp"
    with h5py.File(tmp_h5, "w") as f:
        for key, value in stats.items():
            if key != "source":
                f.create_dataset(key, data=np.asarray(value))
        f.attrs["source"] = json.dumps(stats["source"])
    os.replace(tmp_h5, out / "stats.h5")
    small = {k: v for k, v in stats.items() if k != "mean_image"}
    write_json(out / "stats.json", small)
    return stats


def load_stats(data_dir) -> dict:
    """stats.json plus mean_image (float32 (256, 256, 3), 0-255 scale) from stats.h5."""
    import h5py

    d = Path(data_dir)
    if not (d / "stats.json").is_file() or not (d / "stats.h5").is_file():
        raise ImgnetError(f"no stats.json/stats.h5 in {d}: run `imgnet pca-stats --data {d}` first")
    try:
        stats = json.loads((d / "stats.json").read_text())
        with h5py.File(d / "stats.h5", "r") as f:
            stats["mean_image"] = f["mean_image"][:].astype(np.float32)
    except (OSError, KeyError, ValueError) as e:
        raise ImgnetError(f"cannot read the statistics in {d} ({e}); rerun `imgnet pca-stats --data {d}`") from e
    if stats["mean_image"].shape != IMAGE_SHAPE or len(stats.get("eigval", ())) != 3:
        raise ImgnetError(f"{d / 'stats.json'} is malformed; rerun `imgnet pca-stats --data {d}`")
    return stats

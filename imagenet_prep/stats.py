"""`imgnet pca-stats`: mean image, RGB covariance and its eigendecomposition over the train split.

Section 4.1 of the paper: PCA on the set of RGB pixel values throughout the training set. Workers
accumulate exact int64 sums of the 0-255 values (sum x, sum x x^T, the per-position sum image), so
the result is the same for any number of workers and any order; conversion to the [0, 1] scale and
the eigendecomposition happen once at the end in float64.

Workers come from imagenet_prep.pool (a dead one is an error naming its records; none outlives the main
process). DATA must be writable before the scan starts, and stats.h5 + stats.json replace the old pair
together or not at all (imagenet_prep.atomic), so a full or read-only disk leaves no temporary file.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from imagenet_prep.atomic import check_writable, os_reason, read_json, replacing
from imagenet_prep.errors import ImgnetError
from imagenet_prep.pool import WorkerPool, sigterm_as_interrupt
from imagenet_prep.store import SIZE, image_shape, open_split

BATCH = 64  # images per exact float64 partial sum: 64 * 65,536 * 255^2 < 2^53
GRAM_IMAGES = 4  # images per float64 matmul, so the float copy stays in cache
SAMPLE_SEED = 0
MAX_STATS_JSON_BYTES = 1 << 20  # stats.json holds a few dozen numbers: about 1 KB


# worker state (set by _init_worker in each process): the split and the chosen indices
_SPLIT = None
_INDICES: np.ndarray | None = None


def _init_worker(split, indices: np.ndarray) -> None:
    """Fork copies both for free; the split opens its own LMDB/HDF5 handle in this process on first read."""
    global _SPLIT, _INDICES
    _SPLIT, _INDICES = split, indices


def _sums(span: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact int64 (sum_rgb (3,), sum_outer (3, 3), sum_image (N, N, 3)) over _INDICES[lo:hi]."""
    lo, hi = span
    indices = _INDICES[lo:hi]
    shape = _SPLIT.image_shape  # (N, N, 3), N the split's size
    s2 = np.zeros((3, 3), np.int64)
    simg = np.zeros(shape, np.int64)
    buf = np.empty((BATCH, *shape), np.uint8)
    px = shape[0] * shape[1]
    xf = np.empty((GRAM_IMAGES * px, 3), np.float64)  # cache-sized float64 copy for the Gram matrix
    for b_lo in range(0, len(indices), BATCH):
        chunk = indices[b_lo:b_lo + BATCH]
        b = buf[:len(chunk)]
        for j, i in enumerate(chunk):
            _SPLIT.read_image(int(i), out=b[j])
        simg += b.sum(axis=0, dtype=np.uint32)  # <= 64 * 255: exact in uint32
        gram = np.zeros((3, 3))
        for g in range(0, len(chunk), GRAM_IMAGES):
            x = xf[:min(GRAM_IMAGES, len(chunk) - g) * px]
            np.copyto(x, b[g:g + GRAM_IMAGES].reshape(-1, 3))
            gram += x.T @ x  # integer-valued and below 2^53 over a batch: exact in float64
        s2 += gram.astype(np.int64)
    return simg.sum(axis=(0, 1)), s2, simg


def sample_indices(n_total: int, sample: int | None) -> np.ndarray:
    """All indices, or `sample` of them drawn without replacement with a fixed seed, sorted."""
    if sample is None or sample >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(SAMPLE_SEED).choice(n_total, size=sample, replace=False))


def finalize(s1: np.ndarray, s2: np.ndarray, simg: np.ndarray, n_images: int) -> dict:
    """Exact sums -> the statistics of docs/design.md ([0, 1] scale; mean_image (N, N, 3) on the 0-255 scale,
    N = `size`, the side of the images, from simg's shape)."""
    size = simg.shape[0]
    n_pixels = n_images * size * size
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
        "size": int(size),
        "mean_image": (simg / n_images).astype(np.float32),
    }


def compute_stats(data_dir, sample: int | None = None, workers: int | None = None, progress: bool = True) -> dict:
    """Compute and write DATA/stats.json and DATA/stats.h5; returns the statistics. SIGTERM stops it the
    way Ctrl-C does (KeyboardInterrupt), with no worker left running and no temporary file left behind."""
    with sigterm_as_interrupt():
        return _compute_stats(Path(data_dir), sample, workers, progress)


def _compute_stats(data_dir: Path, sample: int | None, workers: int | None, progress: bool) -> dict:
    # readahead: each worker reads its spans in storage order, a scan that a cold disk serves in large reads
    split = open_split(data_dir, "train", readahead=True)
    if len(split) == 0:
        raise ImgnetError(f"the train split in {data_dir} is empty; nothing to compute statistics from")
    check_writable(data_dir, "to hold stats.h5 and stats.json")  # before the hours of reading, not after
    indices = sample_indices(len(split), sample)
    workers = max(1, min(workers or os.cpu_count() or 1, len(indices) // BATCH + 1))
    # spans of whole batches, several per worker so the bar moves and the load balances
    n_spans = min(len(indices) // BATCH + 1, workers * 16)
    bounds = np.linspace(0, len(indices), n_spans + 1).astype(int)
    spans = [(int(lo), int(hi)) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]
    s1, s2, simg = np.zeros(3, np.int64), np.zeros((3, 3), np.int64), np.zeros(split.image_shape, np.int64)
    with contextlib.ExitStack() as stack:
        if workers > 1:  # the pool before the bar: fork before tqdm starts its monitor thread
            pool = stack.enter_context(WorkerPool(workers, _init_worker, (split, indices), name="pca-stats",
                                                  hint=f"nothing was written; rerun `imgnet pca-stats --data {data_dir}`"))
            results = pool.imap(_sums, spans, describe=lambda sp: f"train records {indices[sp[0]]}-{indices[sp[1] - 1]}")
        else:
            _init_worker(split, indices)
            results = map(_sums, spans)
        bar = stack.enter_context(tqdm(total=len(indices), unit="img", desc="pca-stats",
                                       disable=None if progress else True))
        for (lo, hi), (a, b, img) in zip(spans, results):
            s1 += a
            s2 += b
            simg += img
            bar.update(hi - lo)
    split.close()
    stats = finalize(s1, s2, simg, len(indices))
    stats["source"] = {"split": "train", "sample": sample, "labels_sha256": split.meta.get("labels_sha256")}
    _write_stats(data_dir, stats)
    return stats


def _write_stats(out: Path, stats: dict) -> None:
    """stats.h5 and stats.json via temporary files renamed into place together once both are written: a full
    or read-only disk is an ImgnetError naming the file, and leaves the old pair and no temporary file."""
    import h5py

    small = {k: v for k, v in stats.items() if k != "mean_image"}
    with replacing(out / "stats.h5", out / "stats.json") as (tmp_h5, tmp_json):
        try:
            with h5py.File(tmp_h5, "w") as f:
                for key, value in stats.items():
                    if key != "source":
                        f.create_dataset(key, data=np.asarray(value))
                f.attrs["source"] = json.dumps(stats["source"])
        except OSError as e:  # the ImgnetError names the file that failed
            raise ImgnetError(f"cannot write {out / 'stats.h5'} ({os_reason(e)}); expected a writable folder "
                              "with free space") from e
        except (RuntimeError, ValueError) as e:  # h5py reports some failed writes (at close) as these
            raise ImgnetError(f"cannot write {out / 'stats.h5'} ({os_reason(e)})") from e
        with open(tmp_json, "w") as f:
            f.write(json.dumps(small, indent=1) + "\n")


def load_stats(data_dir) -> dict:
    """stats.json plus mean_image (float32 (N, N, 3), 0-255 scale, N = stats["size"], 256 in files written
    before sizes were recorded) from stats.h5. Both are read bounded
    and checked (a link to a device, a huge, deeply nested or edited file is a one-line error)."""
    d = Path(data_dir)
    rerun = f"rerun `imgnet pca-stats --data {d}`"
    if not (d / "stats.json").exists() or not (d / "stats.h5").exists():
        raise ImgnetError(f"no stats.json/stats.h5 in {d}: run `imgnet pca-stats --data {d}` first")
    try:
        stats = read_json(d / "stats.json", MAX_STATS_JSON_BYTES, "the stats.json that `imgnet pca-stats` writes")
    except (ImgnetError, FileNotFoundError) as e:
        raise ImgnetError(f"{e}; {rerun}") from None
    problem = _stats_problem(stats)
    if problem:
        raise ImgnetError(f"{d / 'stats.json'} is malformed: {problem}; {rerun}")
    stats["size"] = stats.get("size", SIZE)
    stats["mean_image"] = _mean_image(d / "stats.h5", rerun, stats["size"])
    return stats


def _stats_problem(stats) -> str | None:
    """Why stats.json is not what finalize writes, or None."""
    if not isinstance(stats, dict):
        return f"a JSON {type(stats).__name__}; expected an object"
    shapes = {"mean_rgb": (3,), "std_rgb": (3,), "eigval": (3,), "cov": (3, 3), "eigvec": (3, 3)}
    for key, shape in shapes.items():
        try:
            a = np.asarray(stats.get(key), dtype=np.float64)
        except (TypeError, ValueError):
            return f"{key} is not numbers; expected {shape}"
        if a.shape != shape or not np.isfinite(a).all():
            return f"{key} is not {len(shape) == 1 and '3' or '3x3'} finite numbers"
    for key in ("n_images", "n_pixels"):
        if type(stats.get(key)) is not int or stats[key] < 1:
            return f"{key} is {stats.get(key)!r}; expected a positive count"
    size = stats.get("size", SIZE)
    if type(size) is not int or size < 1:
        return f"size is {size!r}; expected the side of the images in pixels"
    if stats["n_pixels"] != stats["n_images"] * size * size:
        return f"n_pixels {stats['n_pixels']} is not n_images {stats['n_images']} x {size} x {size}"
    return None


def _mean_image(path: Path, rerun: str, size: int) -> np.ndarray:
    """The float32 (size, size, 3) mean_image dataset of stats.h5, checked before it is read (store.hdf5.dataset)."""
    import h5py

    from imagenet_prep.store.hdf5 import check_regular, dataset

    try:
        check_regular(path, "the stats.h5 that `imgnet pca-stats` writes")
        with h5py.File(path, "r") as f:
            mean = dataset(f, "mean_image", path, "float32", image_shape(size))[()]
    except ImgnetError as e:
        raise ImgnetError(f"{e}; {rerun}") from None
    except (OSError, KeyError, ValueError, RuntimeError) as e:
        raise ImgnetError(f"cannot read {path} ({os_reason(e)}); {rerun}") from e
    if not np.isfinite(mean).all():
        raise ImgnetError(f"{path}: mean_image holds values that are not finite; {rerun}")
    return mean.astype(np.float32)

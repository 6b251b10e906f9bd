import json

import numpy as np
import pytest

from imagenet_prep import ImgnetError
from imagenet_prep.stats import compute_stats, load_stats, sample_indices
from imagenet_prep.store import write_split


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    d = tmp_path_factory.mktemp("stats")
    rng = np.random.default_rng(3)
    images = []
    for i in range(70):  # more than one 64-image batch
        base = rng.integers(0, 256, 3)
        img = np.clip(base + rng.normal(0, 40, (256, 256, 3)), 0, 255).astype(np.uint8)
        images.append((img, i % 2, f"x_{i}.JPEG"))
    write_split(d, "train", images)
    return d, np.stack([im for im, _, _ in images])


def _reference(images: np.ndarray) -> dict:
    x = images.reshape(-1, 3).astype(np.float64) / 255.0
    cov = np.cov(x, rowvar=False, ddof=0)
    w, v = np.linalg.eigh(cov)
    return {"mean": x.mean(0), "cov": cov, "eigval": w[::-1], "eigvec": v[:, ::-1],
            "mean_image": images.astype(np.float64).mean(0)}


@pytest.mark.parametrize("workers", [1, 2])
def test_stats_match_float64_numpy(packed, workers):
    d, images = packed
    s = compute_stats(d, workers=workers, progress=False)
    ref = _reference(images)
    np.testing.assert_allclose(s["mean_rgb"], ref["mean"], rtol=0, atol=1e-9)  # the float64 reference itself carries ~1e-11 summation error
    np.testing.assert_allclose(s["cov"], ref["cov"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(s["eigval"], ref["eigval"], rtol=1e-9)
    np.testing.assert_allclose(s["std_rgb"], np.sqrt(np.diag(ref["cov"])), rtol=1e-9)
    for j in range(3):  # eigenvectors are defined up to sign
        a, b = np.asarray(s["eigvec"])[:, j], ref["eigvec"][:, j]
        assert min(np.abs(a - b).max(), np.abs(a + b).max()) < 1e-8
    assert s["n_images"] == 70 and s["n_pixels"] == 70 * 256 * 256
    np.testing.assert_allclose(load_stats(d)["mean_image"], ref["mean_image"], atol=1e-4)
    on_disk = json.loads((d / "stats.json").read_text())
    assert on_disk["eigval"] == s["eigval"] and "mean_image" not in on_disk


def test_stats_exact_whatever_the_worker_count(packed):
    d, _ = packed
    one = compute_stats(d, workers=1, progress=False)
    two = compute_stats(d, workers=2, progress=False)
    assert one["cov"] == two["cov"] and one["mean_rgb"] == two["mean_rgb"]
    np.testing.assert_array_equal(one["mean_image"], two["mean_image"])


def test_sample_is_deterministic_subset(packed):
    d, images = packed
    idx = sample_indices(70, 20)
    assert len(set(idx.tolist())) == 20 and (np.diff(idx) > 0).all()
    np.testing.assert_array_equal(idx, sample_indices(70, 20))
    s = compute_stats(d, sample=20, workers=1, progress=False)
    np.testing.assert_allclose(s["cov"], _reference(images[idx])["cov"], atol=1e-10)
    assert s["n_images"] == 20


def test_missing_stats_says_what_to_run(tmp_path):
    with pytest.raises(ImgnetError, match="imgnet pca-stats"):
        load_stats(tmp_path)

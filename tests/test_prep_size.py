"""`imgnet prep --size N` on an ILSVRC-shaped source made on the fly (synthetic.py): prep, pca-stats, verify,
an epoch of training and `imgnet test` at 32 and 64 (Chrabaszcz et al.'s downsampled ImageNet sizes), an N x N source image stored bit for bit, and
one size per DATA folder."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli import main
from imagenet_prep import ImgnetError, open_split, store
from imagenet_prep.resize import prepare
from imagenet_prep.stats import load_stats
from imagenet_prep.synthetic import make_sample


def _imgnet(*args) -> tuple[int, str]:
    r = CliRunner().invoke(main, [*map(str, args)])
    return r.exit_code, r.output


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return make_sample(tmp_path_factory.mktemp("ilsvrc"), classes=2, train_per_class=4, val_per_class=2)


def _first_train_image(src) -> bytes:
    """The bytes of the first image of the first class tar: the first record of train."""
    with tarfile.open(src / "ILSVRC2012_img_train.tar") as outer:
        inner = outer.extractfile(outer.next()).read()
    with tarfile.open(fileobj=io.BytesIO(inner)) as tar:
        return tar.extractfile(sorted(tar.getmembers(), key=lambda m: m.name)[0]).read()


@pytest.mark.parametrize("size,fmt", [(32, "lmdb"), (64, "hdf5")])
def test_prep_stats_verify_at_a_small_size(tmp_path, sample, size, fmt):
    out = tmp_path / "data"
    code, output = _imgnet("prep", "--src", sample, "--out", out, "--size", size, "--format", fmt, "--workers", 2)
    assert code == 0, output
    for split, n in (("train", 8), ("val", 4)):
        s = open_split(out, split)
        assert (len(s), s.size, s.image_shape, s.raw_bytes) == (n, size, (size, size, 3), size * size * 3)
        assert (s.meta["size"], s.meta["image_shape"]) == (size, [size, size, 3])
        assert s[0].image.shape == (size, size, 3) and len(s.read_bytes(0)) == size * size * 3
    first = open_split(out, "train")[0].image
    assert np.array_equal(first, prepare(_first_train_image(sample), size=size).image)  # the policy at N
    code, output = _imgnet("pca-stats", "--data", out, "--workers", 1)
    assert code == 0, output
    stats = load_stats(out)
    assert stats["size"] == size and stats["mean_image"].shape == (size, size, 3)
    assert stats["n_pixels"] == 8 * size * size
    code, output = _imgnet("verify", out)
    assert code == 0 and "all records intact" in output, output
    _train_a_step_and_test(out, tmp_path / "run", size)


def _train_a_step_and_test(data, run, size: int) -> None:
    """The rest of the pipeline on the downsampled ImageNet: one epoch of a net that takes size x size crops
    (7/8 of the size by default, from the mean image of that size), then `imgnet test` on its val split."""
    code, output = _imgnet("train", "--data", data, "--out", run, "--arch", "cifar-18pct", "--crop", size * 7 // 8,
                           "--epochs", 1, "--batch-size", 4, "--workers", 0, "--device", "cpu")
    assert code == 0, output
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert log[0]["val_source"] == "val" and np.isfinite(log[0]["train_loss"])
    assert json.loads((run / "config.json").read_text())["input"] == {"size": size, "crop": size * 7 // 8}
    code, output = _imgnet("test", "--data", data, "--ckpt", run / "checkpoints" / "last.pt", "--views",
                           "center,ten-crop", "--workers", 0, "--device", "cpu")
    assert code == 0, output
    for view in ("center", "ten-crop"):
        report = json.loads((run / "checkpoints" / f"test-last-{view}.json").read_text())
        assert report["split"] == "val" and report["n"] == 4 and 0 <= report["top1_err"] <= 1


@pytest.mark.parametrize("size", [48, 256])
def test_a_source_image_already_n_by_n_is_stored_as_it_is(tmp_path, size):
    rng = np.random.default_rng(size)
    src, pixels = tmp_path / "src", {}
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (src / split / cls).mkdir(parents=True)
            for fmt in ("PNG", "JPEG"):
                img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format=fmt, quality=85)
                name = f"{cls}_{fmt.lower()}.{fmt.lower()}"
                (src / split / cls / name).write_bytes(buf.getvalue())
                pixels[split, name] = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    out = tmp_path / "out"
    code, output = _imgnet("prep", "--src", src, "--out", out, "--workers", 1,
                           *(["--size", size] if size != 256 else []))
    assert code == 0, output
    for split in ("train", "val"):
        s = open_split(out, split)
        assert len(s) == 4 and s.size == size
        for i in range(len(s)):  # the decoded pixels, unchanged (a JPEG: as Pillow decodes it)
            assert np.array_equal(s[i].image, pixels[split, s.names[i]])
            assert bytes(s.read_bytes(i)) == pixels[split, s.names[i]].tobytes()


def test_one_size_per_data_folder(tmp_path, sample):
    out = tmp_path / "data"
    assert _imgnet("prep", "--src", sample, "--out", out, "--split", "train", "--size", 32, "--workers", 1)[0] == 0
    code, output = _imgnet("prep", "--src", sample, "--out", out, "--split", "val", "--size", 64)
    assert code != 0 and output.count("\n") == 1
    assert "--size 64" in output and "size 32" in output and "pass --size 32" in output
    assert not (out / "val.lmdb").exists()
    code, output = _imgnet("prep", "--src", sample, "--out", out, "--split", "val", "--workers", 1)  # DATA's size
    assert code == 0, output
    assert open_split(out, "val").size == 32
    report = json.loads((out / "prep-report.json").read_text())
    assert report["config"]["size"] == 32


def test_the_disk_estimate_follows_the_size():
    assert store.estimate_bytes_per_image("raw", 90, 256) == store.estimate_bytes_per_image("raw", 90)
    assert store.estimate_bytes_per_image("raw", 90, 32) < 8192 < store.estimate_bytes_per_image("raw", 90, 64)
    assert store.estimate_bytes_per_image("jpeg", 90, 32) < store.estimate_bytes_per_image("jpeg", 90, 256)


def test_write_split_records_the_size_of_its_images(tmp_path):
    imgs = np.zeros((2, 40, 40, 3), np.uint8)
    s = store.write_split(tmp_path, "train", [(imgs[0], 0, "a"), (imgs[1], 1, "b")])
    assert (s.size, s.image_shape, s[1].image.shape) == (40, (40, 40, 3), (40, 40, 3))
    with pytest.raises(ImgnetError, match="one size"):
        store.write_split(tmp_path / "x", "train", [(imgs[0], 0, "a"), (np.zeros((8, 8, 3), np.uint8), 1, "b")])


def test_a_v2_split_takes_the_size_of_data(tmp_path, sample):
    out = tmp_path / "data"
    assert _imgnet("prep", "--src", sample, "--out", out, "--split", "val", "--size", 32, "--workers", 1)[0] == 0
    variant = tmp_path / "v2" / "imagenetv2-matched-frequency-format-val"
    rng = np.random.default_rng(0)
    for n in range(1000):  # V2's folders 0..999 (sorted-wnid order); DATA holds the first two classes
        (variant / str(n)).mkdir(parents=True)
    for n in (0, 1):
        Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(variant / str(n) / f"{n:032x}.jpeg")
    code, output = _imgnet("prep", "--src", tmp_path / "v2", "--out", out, "--split", "v2", "--size", 64)
    assert code != 0 and output.count("\n") == 1 and "pass --size 32" in output, output
    code, output = _imgnet("prep", "--src", tmp_path / "v2", "--out", out, "--split", "v2", "--workers", 1)
    assert code == 0, output
    s = open_split(out, "v2-matched-frequency")
    assert (len(s), s.size, s[0].image.shape) == (2, 32, (32, 32, 3))

"""Small metadata files of DATA and SRC are read bounded and checked: a link to /dev/zero, a FIFO, a huge or
deeply nested file, JSON that is not an object, or edited counts give a one-line ImgnetError, never a hang, a
MemoryError or a traceback."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import layouts
from imagenet_prep import ImgnetError
from imagenet_prep import sources
from imagenet_prep.sources import base
from imagenet_prep.prep import PrepConfig, run_prep
from imagenet_prep.stats import compute_stats, load_stats
from imagenet_prep.store import LmdbWriter, progress_of, write_split

NESTED = "[" * 200_000 + "]" * 200_000  # deeper than any JSON parser's recursion limit


def _one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def _hostile(path: Path, kind: str) -> None:
    """Replace `path` by a hostile file of `kind`."""
    if path.exists() or path.is_symlink():
        path.unlink()
    if kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "huge":
        with open(path, "wb") as f:
            f.truncate(300 << 20)  # sparse: past every bound, costs no disk
    elif kind == "nested":
        path.write_text(NESTED)
    elif kind == "not-object":
        path.write_text("[1, 2, 3]")
    else:
        raise AssertionError(kind)


HOSTILE = ["dev-zero", "fifo", "huge", "nested", "not-object"]


# ---------------------------------------------------------------------------------------- stats
@pytest.fixture
def stats_dir(tmp_path):
    rng = np.random.default_rng(0)
    write_split(tmp_path, "train", [(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8), i % 2, f"x{i}")
                                    for i in range(3)])
    compute_stats(tmp_path, workers=1, progress=False)
    return tmp_path


@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_stats_json_is_one_line(stats_dir, kind):
    _hostile(stats_dir / "stats.json", kind)
    with pytest.raises(ImgnetError) as e:
        load_stats(stats_dir)
    assert "stats.json" in _one_line(e) and "pca-stats" in str(e.value)


@pytest.mark.parametrize("edit", [{"n_images": -1}, {"n_images": 10 ** 12}, {"eigval": [1, 2]},
                                  {"eigvec": "x"}, {"cov": [[1, 2, 3]] * 3 + [[0, 0, 0]]}, {"mean_rgb": [1, 2, None]}])
def test_edited_stats_json_is_one_line(stats_dir, edit):
    d = json.loads((stats_dir / "stats.json").read_text())
    (stats_dir / "stats.json").write_text(json.dumps({**d, **edit}))
    with pytest.raises(ImgnetError, match="malformed") as e:
        load_stats(stats_dir)
    _one_line(e)


@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "wrong-shape", "float64", "external"])
def test_hostile_stats_h5_is_one_line(stats_dir, kind, tmp_path_factory):
    import h5py

    path = stats_dir / "stats.h5"
    if kind in ("dev-zero", "fifo"):
        _hostile(path, kind)
    else:
        path.unlink()
        with h5py.File(path, "w") as f:
            if kind == "wrong-shape":  # an edited shape: a huge array of fill values if read as is
                f.create_dataset("mean_image", shape=(1 << 20, 1 << 20, 3), dtype="float32", chunks=(1, 1024, 3))
            elif kind == "float64":
                f.create_dataset("mean_image", data=np.zeros((256, 256, 3)))
            else:
                raw = tmp_path_factory.mktemp("ext") / "raw.bin"
                raw.write_bytes(b"\0" * 256 * 256 * 3 * 4)
                f.create_dataset("mean_image", shape=(256, 256, 3), dtype="float32", external=[(str(raw), 0, h5py.h5f.UNLIMITED)])
    with pytest.raises(ImgnetError) as e:
        load_stats(stats_dir)
    assert "stats.h5" in _one_line(e)


# ------------------------------------------------------------------------------ prep-report.json
def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _tiny_src(root: Path) -> Path:
    for k, w in enumerate(("n01440764", "n01443537")):
        (root / "train" / w).mkdir(parents=True)
        (root / "train" / w / f"{w}_0.JPEG").write_bytes(_jpeg(k))
    return root


@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_prep_report_is_replaced(tmp_path, kind):
    src, out = _tiny_src(tmp_path / "src"), tmp_path / "out"
    out.mkdir()
    _hostile(out / "prep-report.json", kind)
    report = run_prep(PrepConfig(src=str(src), out=str(out), workers=1))
    assert report["splits"]["train"]["written"] == 2
    assert json.loads((out / "prep-report.json").read_text())["splits"]["train"]["written"] == 2


# --------------------------------------------------------------------------- the progress record
def _unfinished(path: Path, **edit) -> None:
    import lmdb

    w = LmdbWriter(path, {"k": 1}, 10)
    w.commit([(b"x" * 16, 0, "a"), (b"y" * 16, 1, "b")], 3, [{"name": "c", "reason": "bad"}])
    progress = {**w.progress, **edit}
    w.close()
    env = lmdb.open(str(path), subdir=True)
    with env.begin(write=True) as txn:
        txn.put(b"__progress__", json.dumps(progress).encode())
    env.close()


@pytest.mark.parametrize("edit", [{"consumed": 10 ** 12}, {"consumed": -1}, {"written": 5}, {"written": "2"},
                                  {"rejected": {}}, {"written": 1}])
def test_edited_progress_record_is_one_line(tmp_path, edit):
    path = tmp_path / "train.lmdb"
    _unfinished(path, **edit)
    with pytest.raises(ImgnetError, match="--force") as e:
        LmdbWriter(path, {"k": 1}, 10)
    _one_line(e)


def test_nested_progress_record_is_one_line(tmp_path):
    import lmdb

    path = tmp_path / "train.lmdb"
    _unfinished(path)
    env = lmdb.open(str(path), subdir=True)
    with env.begin(write=True) as txn:
        txn.put(b"__progress__", NESTED.encode())
    env.close()
    for read in (lambda: progress_of(path), lambda: LmdbWriter(path, {"k": 1}, 10)):
        with pytest.raises(ImgnetError, match="nested too deeply") as e:
            read()
        _one_line(e)


# ----------------------------------------------------------------------------------- SRC files
@pytest.fixture(scope="module")
def images(ilsvrc):
    return layouts.real_images(ilsvrc, per_class=1, n_val=2)


@pytest.mark.parametrize("kind", HOSTILE[:4])
def test_hostile_wds_info_is_one_line(images, tmp_path, kind):
    src = layouts.timm_wds(tmp_path / "wds", *images, shards=(1, 1))
    _hostile(src / "_info.json", kind)
    with pytest.raises(ImgnetError) as e:
        sources.discover(src)
    assert "_info.json" in _one_line(e)


def test_wds_edited_shard_lengths_are_one_line(images, tmp_path):
    src = layouts.timm_wds(tmp_path / "wds", *images, shards=(1, 1))
    info = json.loads((src / "_info.json").read_text())
    info["splits"]["train"]["shard_lengths"] = ["many"]
    (src / "_info.json").write_text(json.dumps(info))
    with pytest.raises(ImgnetError, match="shard_lengths") as e:
        sources.discover(src)
    _one_line(e)


@pytest.mark.parametrize("payload", [NESTED.encode(), b"x" * (100 << 10)], ids=["nested", "huge"])
def test_hostile_sample_json_in_a_shard_is_one_line(images, tmp_path, payload):
    train, val = images
    src = tmp_path / "wds"
    layouts.timm_wds(src, train, val, shards=(1, 1), info=False)
    shard = src / "imagenet1k-train-0000.tar"
    with tarfile.open(shard) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf]
    with tarfile.open(shard, "w") as tf:
        for i, (m, data) in enumerate(members):
            layouts.add_bytes(tf, m.name, payload if m.name.endswith(".json") and i < 3 else data)
    with pytest.raises(ImgnetError, match=r"\.json") as e:
        sources.discover(src)
    _one_line(e)


@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "huge"])
def test_hostile_kaggle_csv_and_val_labels_are_one_line(ilsvrc, tmp_path, kind):
    src = tmp_path / "src"
    (src / "ILSVRC/Data/CLS-LOC/val").mkdir(parents=True)
    (src / "ILSVRC/Data/CLS-LOC/val/ILSVRC2012_val_00000001.JPEG").write_bytes(_jpeg(1))
    (src / "LOC_synset_mapping.txt").write_bytes((ilsvrc / "kaggle_loc" / "LOC_synset_mapping.txt").read_bytes())
    _hostile(src / "LOC_val_solution.csv", kind)
    with pytest.raises(ImgnetError) as e:
        sources.discover(src)
    assert "LOC_val_solution.csv" in _one_line(e)
    _hostile(tmp_path / "labels.txt", kind)
    with pytest.raises(ImgnetError) as e:
        sources.discover(src, val_labels=tmp_path / "labels.txt")
    assert "--val-labels" in _one_line(e)


def test_devkit_gzip_bomb_is_one_line(ilsvrc, tmp_path, monkeypatch):
    monkeypatch.setattr(base, "MAX_SMALL_FILE_BYTES", 1 << 20)
    src = tmp_path / "src"
    (src / "val").mkdir(parents=True)
    (src / "val" / "ILSVRC2012_val_00000001.JPEG").write_bytes(_jpeg(1))
    (src / "ILSVRC2012_devkit_t12.tar.gz").write_bytes(gzip.compress(b"\0" * (4 << 20)))
    with pytest.raises(ImgnetError, match="inflates to more than") as e:
        sources.discover(src)
    _one_line(e)
    _hostile(src / "ILSVRC2012_devkit_t12.tar.gz", "dev-zero")
    with pytest.raises(ImgnetError, match="not a regular file") as e:
        sources.discover(src)
    _one_line(e)


def test_zip_member_that_inflates_past_the_bound_is_rejected(ilsvrc, images, tmp_path, monkeypatch):
    monkeypatch.setattr(base, "MAX_IMAGE_BYTES", 8 << 20)  # over the label files
    train, val = images
    path = layouts.kaggle(tmp_path / "k", train, val, ilsvrc)
    with __import__("zipfile").ZipFile(path, "a", compression=8) as z:
        z.writestr(f"ILSVRC/Data/CLS-LOC/train/{train[0][0]}/{train[0][0]}_bomb.JPEG", b"\0" * (32 << 20))
    report = run_prep(PrepConfig(src=str(tmp_path / "k"), out=str(tmp_path / "out"), workers=1, split="train"))
    rejected = {r["name"].rsplit("/", 1)[-1]: r["reason"] for r in report["splits"]["train"]["rejected"]}
    assert "inflates to more than" in rejected[f"{train[0][0]}_bomb.JPEG"]

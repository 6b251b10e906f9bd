"""Hugging Face sources (parquet, script-era tar.gz) built from the generated and real fixtures, compared record by record
with the official-tar prep of the same images; resume after kill -9; bad input."""

import io
import json
import os
import random
import sys
import tarfile
from pathlib import Path

import pytest

import layouts

from imagenet_prep import ImgnetError, open_split
from imagenet_prep.prep import PrepConfig, run_prep
from imagenet_prep.sources import discover

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------- the images
@pytest.fixture(scope="module")
def images(ilsvrc):
    """{"train": [(name, wnid, bytes)], "val": [...]}: 3 Imagenette classes (plus one truncated JPEG, which
    every source rejects) and 36 original val images labelled by Caffe's val.txt; of `ilsvrc`, generated and real."""
    return _images(ilsvrc)


@pytest.fixture(scope="module")
def images_once(ilsvrc_once):
    """`images` of one folder, the real one where present (for the slow tests)."""
    return _images(ilsvrc_once)


def _images(ilsvrc: Path) -> dict:
    root = ilsvrc / "images" / "imagenette2_224_subset" / "train"
    train = [(f.name, d.name, f.read_bytes()) for d in sorted(root.iterdir())[:3] for f in sorted(d.glob(f"{d.name}_*.JPEG"))]
    train.append(("n01440764_99999.JPEG", "n01440764", train[0][2][:700]))  # truncated
    wnids = (ilsvrc / "caffe_ilsvrc12" / "synsets.txt").read_text().split()
    caffe = dict(line.split() for line in (ilsvrc / "caffe_ilsvrc12" / "val.txt").read_text().splitlines())
    files = sorted((ilsvrc / "images" / "val_original").glob("*.JPEG"))[:36]
    val = [(f.name, wnids[int(caffe[f.name])], f.read_bytes()) for f in files]
    test = [(f.name, f.read_bytes()) for f in sorted((ilsvrc / "images" / "test_original").glob("*.JPEG"))]
    return {"train": train, "val": val, "test": test, "shared": ilsvrc}


def _tar_bytes(members, mode="w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_official(src: Path, images) -> Path:
    """ILSVRC2012_img_train.tar (of per-class tars), ILSVRC2012_img_val.tar, the devkit tar.gz."""
    src.mkdir(parents=True)
    by_class: dict[str, list] = {}
    for name, wnid, data in images["train"]:
        by_class.setdefault(wnid, []).append((name, data))
    (src / "ILSVRC2012_img_train.tar").write_bytes(
        _tar_bytes([(f"{w}.tar", _tar_bytes(m)) for w, m in sorted(by_class.items())]))
    (src / "ILSVRC2012_img_val.tar").write_bytes(_tar_bytes([(n, d) for n, _, d in images["val"]]))
    with tarfile.open(src / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
        tar.add(images["shared"] / "devkit_t12", arcname="ILSVRC2012_devkit_t12")
    return src


def _hf_path(name: str, wnid: str) -> str:
    stem, ext = name.rsplit(".", 1)
    return f"{stem}_{wnid}.{ext}"


def _shuffled(rows, seed=0):
    rows = list(rows)
    random.Random(seed).shuffle(rows)  # the published shards are shuffled
    return rows


IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _write_parquet(path: Path, rows, row_group_size=5, label_of=None) -> None:
    """rows: (image.path, bytes, label)."""
    table = pa.table({"image": pa.array([{"bytes": d, "path": p} for p, d, _ in rows], IMAGE_TYPE),
                      "label": pa.array([lbl for _, _, lbl in rows], pa.int64())})
    pq.write_table(table, path, row_group_size=row_group_size)


def make_parquet(src: Path, images, train_shards=2, row_group_size=5) -> Path:
    """data/{train,validation,test}-NNNNN-of-NNNNN.parquet, rows shuffled, some paths with a folder."""
    data = src / "data"
    data.mkdir(parents=True)
    wnids = (images["shared"] / "caffe_ilsvrc12" / "synsets.txt").read_text().split()
    for split, n in (("train", train_shards), ("validation", 1)):
        rows = [((f"{split}/" if i % 3 == 0 else "") + _hf_path(name, wnid), d, wnids.index(wnid))
                for i, (name, wnid, d) in enumerate(_shuffled(images["train" if split == "train" else "val"]))]
        for k in range(n):
            _write_parquet(data / f"{split}-{k:05d}-of-{n:05d}.parquet", rows[k::n], row_group_size)
    test = [(name, d, -1) for name, d in images["test"]]  # no labels, no wnid in the path: ignored
    _write_parquet(data / "test-00000-of-00001.parquet", test)
    return src


def make_targz(src: Path, images) -> Path:
    """train_images_{0..4}.tar.gz and val_images.tar.gz: flat gzip tars, shuffled."""
    src.mkdir(parents=True)
    train = [(_hf_path(n, w), d) for n, w, d in _shuffled(images["train"])]
    for k in range(5):
        (src / f"train_images_{k}.tar.gz").write_bytes(_tar_bytes(train[k::5], "w:gz"))
    (src / "val_images.tar.gz").write_bytes(_tar_bytes([(_hf_path(n, w), d) for n, w, d in _shuffled(images["val"])],
                                                       "w:gz"))
    return src


def _content(data_dir, split):
    s = open_split(data_dir, split)
    content = [(s.read_bytes(i), int(s.labels[i]), s.names[i]) for i in range(len(s))]
    s.close()
    return content


def _unnamed(entry: dict) -> dict:
    """A report entry with its name reduced to the record's: the tars' `...:n01440764_1.JPEG`, the shards'
    `...:n01440764_1_n01440764.JPEG`."""
    base = entry["name"].rsplit(":", 1)[-1]
    stem, ext = base.rsplit(".", 1)
    if stem.count("_") > 1 + stem.startswith("ILSVRC2012_val"):
        stem = stem.rsplit("_", 1)[0]
    return {**entry, "name": f"{stem}.{ext}"}


def _same_as_official(tmp_path, src, images, **opts):
    official = make_official(tmp_path / "official", images)
    ref, out = tmp_path / "ref", tmp_path / "out"
    want = run_prep(PrepConfig(src=str(official), out=str(ref), workers=1, **opts))
    got = run_prep(PrepConfig(src=str(src), out=str(out), workers=2, **opts))
    splits = ["train", "val"] if opts.get("split", "all") == "all" else [opts["split"]]
    for split in splits:
        content = _content(out, split)
        assert content and content == _content(ref, split), split
        for key in ("found", "written"):
            assert got["splits"][split][key] == want["splits"][split][key], (split, key)
        for key in ("rejected", "converted"):  # the same files, each named where it is in its own source
            assert ([_unnamed(e) for e in got["splits"][split][key]]
                    == [_unnamed(e) for e in want["splits"][split][key]]), (split, key)
    assert (out / "labels.json").read_bytes() == (ref / "labels.json").read_bytes()
    return got


# ------------------------------------------------------------------------------ same records
def test_parquet_gives_the_records_of_the_official_tars(tmp_path, images):
    src = make_parquet(tmp_path / "hf", images)
    got = _same_as_official(tmp_path, src, images)
    assert got["layout"] == "hf-parquet"
    assert got["splits"]["train"]["written"] == len(images["train"]) - 1  # the truncated one is rejected
    # named by the shard and the image.path it lists
    assert [r["name"] for r in got["splits"]["train"]["rejected"]] == [
        "data/train-00000-of-00002.parquet:n01440764_99999_n01440764.JPEG"]
    assert {"name": "data/validation-00000-of-00001.parquet:ILSVRC2012_val_00000034_n09835506.JPEG",
            "from_format": "JPEG", "from_mode": "L"} in got["splits"]["val"]["converted"]
    assert len(json.loads((tmp_path / "out" / "labels.json").read_text())["classes"]) == 1000


def test_targz_gives_the_records_of_the_official_tars(tmp_path, images):
    src = make_targz(tmp_path / "hf", images)
    assert _same_as_official(tmp_path, src, images)["layout"] == "hf-targz"


@pytest.mark.parametrize("make", [make_parquet, make_targz])
def test_subset_options_match_the_official_prep(tmp_path, images, make):
    src = make(tmp_path / "hf", images)
    _same_as_official(tmp_path, src, images, classes=300, per_class=4, label_order="devkit", format="hdf5",
                      encoding="jpeg")


def test_val_only_and_listing_is_cached(tmp_path, images):
    src = make_parquet(tmp_path / "hf", images, train_shards=3)
    _same_as_official(tmp_path, src, images, split="val")
    out = tmp_path / "out"
    assert len(list(out.glob(".listing-*.npz"))) == 1  # only the val shard was listed
    # a second listing reads the cache, not the shards
    import imagenet_prep.sources.hf_parquet as hf

    calls = []
    real = hf._list_parquet
    hf._list_parquet = lambda *a: calls.append(a) or real(*a)
    try:
        items = discover(src, splits=["val"], cache_dir=out).splits["val"]
    finally:
        hf._list_parquet = real
    assert calls == [] and [i.name for i in items] == sorted(n for n, _, _ in images["val"])


# --------------------------------------------------------------------------------- kill -9
def _many(images, n):
    """n train images of one class, from the val originals repeated (real ones: sizes up to 900x1000)."""
    vals = [d for _, _, d in images["val"]]
    return [(f"n01440764_{i:04d}.JPEG", "n01440764", vals[i % len(vals)]) for i in range(n)]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["parquet", "targz"])
def test_kill_9_then_rerun_gives_identical_content_without_redoing(tmp_path, images_once, kind, monkeypatch):
    import imagenet_prep.pack.worker as prep
    from imagenet_prep.store import progress_of

    imgs = dict(images_once, train=_many(images_once, 160), val=images_once["val"][:2])
    src = (make_parquet(tmp_path / "hf", imgs, row_group_size=4) if kind == "parquet"
           else make_targz(tmp_path / "hf", imgs))
    clean = tmp_path / "clean"
    run_prep(PrepConfig(src=str(src), out=str(clean), workers=1, split="train"))
    out = tmp_path / "killed"
    cmd = [sys.executable, str(ROOT / "cli.py"), "prep", "--src", str(src), "--out", str(out), "--workers", "2",
           "--split", "train"]
    layouts.kill_when_written(cmd, out / "train.lmdb" / "data.mdb", 20 * 196_608, commit_every=8)
    with pytest.raises(ImgnetError):
        open_split(out, "train")  # incomplete
    done = progress_of(out / "train.lmdb")
    assert 0 < done < 160
    calls = []
    real = prep.process_bytes
    monkeypatch.setattr(prep, "process_bytes", lambda data, name=None: calls.append(1) or real(data, name))
    run_prep(PrepConfig(src=str(src), out=str(out), workers=1, split="train"))
    assert len(calls) == 160 - done  # committed records are not redone
    assert _content(out, "train") == _content(clean, "train")


# ------------------------------------------------------------------------------- bad input
def _one_shard(tmp_path, rows=None, table=None):
    data = tmp_path / "bad" / "data"
    data.mkdir(parents=True)
    path = data / "train-00000-of-00001.parquet"
    if table is not None:
        pq.write_table(table, path)
    else:
        _write_parquet(path, rows, row_group_size=2)
    return tmp_path / "bad", path


def _prep_error(src, tmp_path) -> str:
    with pytest.raises(ImgnetError) as e:
        run_prep(PrepConfig(src=str(src), out=str(tmp_path / "out"), workers=1))
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_label_that_disagrees_with_the_wnid_names_shard_and_row(tmp_path, images):
    d = images["train"][0][2]
    src, path = _one_shard(tmp_path, [("n01440764_1_n01440764.JPEG", d, 0), ("n01440764_2_n01440764.JPEG", d, 0),
                                      ("n01440764_3_n01440764.JPEG", d, 0), ("n01443537_4_n01443537.JPEG", d, 0)])
    msg = _prep_error(src, tmp_path)
    assert str(path) in msg and "row group 1 row 1" in msg and "label 0" in msg and "n01443537" in msg


def test_missing_path_names_shard_and_row(tmp_path, images):
    d = images["train"][0][2]
    src, path = _one_shard(tmp_path, [("n01440764_1_n01440764.JPEG", d, 0), (None, d, 0)])
    msg = _prep_error(src, tmp_path)
    assert str(path) in msg and "row group 0 row 1" in msg and "no image path" in msg


def test_parquet_with_other_columns_is_refused(tmp_path):
    src, path = _one_shard(tmp_path, table=pa.table({"jpg": [b"x"], "cls": [0]}))
    msg = _prep_error(src, tmp_path)
    assert str(path) in msg and "jpg" in msg and "expected image: struct<bytes: binary, path: string>" in msg


def test_corrupt_parquet_shard_is_an_error(tmp_path):
    data = tmp_path / "bad" / "data"
    data.mkdir(parents=True)
    (data / "train-00000-of-00001.parquet").write_bytes(b"PAR1" + os.urandom(300))
    assert "train-00000-of-00001.parquet: not a readable parquet file" in _prep_error(tmp_path / "bad", tmp_path)


def test_missing_parquet_shard_is_an_error(tmp_path, images):
    src = make_parquet(tmp_path / "hf", images, train_shards=3)
    (src / "data" / "train-00001-of-00003.parquet").unlink()
    assert "missing train-00001-of-00003.parquet" in _prep_error(src, tmp_path)


def test_corrupt_targz_shard_is_an_error(tmp_path, images):
    src = make_targz(tmp_path / "hf", images)
    shard = src / "train_images_2.tar.gz"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    msg = _prep_error(src, tmp_path)
    assert "train_images_2.tar.gz: not a readable .tar.gz" in msg


def test_targz_with_a_shard_missing_is_an_error(tmp_path, images):
    src = make_targz(tmp_path / "hf", images)
    (src / "train_images_4.tar.gz").unlink()
    assert "train_images_4.tar.gz" in _prep_error(src, tmp_path)


def test_parquet_files_directly_in_src_and_targz_in_data_are_found(tmp_path, images):
    src = make_parquet(tmp_path / "hf", images, train_shards=3)
    before = discover(src)
    for f in (src / "data").iterdir():
        f.rename(src / f.name)
    (src / "data").rmdir()
    after = discover(src)
    assert after.layout == "hf-parquet" and after.splits["train"] and [
        (i.name, i.label) for i in after.splits["train"]] == [(i.name, i.label) for i in before.splits["train"]]
    gz = make_targz(tmp_path / "gz" / "data", images)
    assert discover(gz.parent).layout == "hf-targz"


def test_targz_member_without_a_wnid_names_shard_and_member(tmp_path, images):
    src = make_targz(tmp_path / "hf", images)
    (src / "val_images.tar.gz").write_bytes(_tar_bytes([("ILSVRC2012_val_00000001.JPEG", images["val"][0][2])], "w:gz"))
    msg = _prep_error(src, tmp_path)
    assert "val_images.tar.gz member 0" in msg and "expected <original stem>_<wnid>.JPEG" in msg


def test_null_image_names_shard_and_row(tmp_path, images):
    d = images["train"][0][2]
    image = pa.array([{"bytes": d, "path": "n01440764_1_n01440764.JPEG"}, None], IMAGE_TYPE)
    src, path = _one_shard(tmp_path, table=pa.table({"image": image, "label": pa.array([0, 0], pa.int64())}))
    msg = _prep_error(src, tmp_path)
    assert str(path) in msg and "row group 0 row 1" in msg and "no image path" in msg


def test_incomplete_train_shards_do_not_block_the_val_split(tmp_path, images):
    src = make_targz(tmp_path / "hf", images)
    (src / "train_images_1.tar.gz").unlink()
    out = tmp_path / "out"
    assert run_prep(PrepConfig(src=str(src), out=str(out), workers=1, split="val"))["splits"]["val"]["written"] == 36
    with pytest.raises(ImgnetError, match="not train_images_1.tar.gz"):
        run_prep(PrepConfig(src=str(src), out=str(out), workers=1, split="train"))


def test_targz_member_of_an_unknown_class_is_an_error(tmp_path, images):
    src = make_targz(tmp_path / "hf", images)
    (src / "val_images.tar.gz").write_bytes(_tar_bytes([("ILSVRC2012_val_00000001_n99999999.JPEG",
                                                         images["val"][0][2])], "w:gz"))
    msg = _prep_error(src, tmp_path)
    assert "val_images.tar.gz member 0" in msg and "n99999999" in msg


@pytest.mark.parametrize("make", [make_parquet, make_targz])
def test_disk_estimate_counts_the_listed_images_before_any_decoding(tmp_path, images, make, monkeypatch):
    import collections
    import shutil

    import imagenet_prep.pack.worker as prep

    src = make(tmp_path / "hf", images)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 0, 10**6))
    monkeypatch.setattr(prep, "process_bytes", lambda data, name=None: pytest.fail("decoded before the disk check"))
    n = len(images["train"]) + len(images["val"])
    with pytest.raises(ImgnetError, match=rf"{n} images as raw need about"):
        run_prep(PrepConfig(src=str(src), out=str(tmp_path / "out"), workers=1))
    assert not (tmp_path / "out" / "train.lmdb").exists()

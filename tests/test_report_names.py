"""prep-report.json names every file it lists (skipped at listing, rejected at decode, converted) in one form:
where it is in SRC (sources.Source.locate). Each name is resolved back to its bytes in the source."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

import layouts
from imagenet_prep.prep import PrepConfig, run_prep

JUNK = b"\x00\x00\x00\x01Bud1"


@pytest.fixture(scope="module")
def images(ilsvrc):
    train, val = layouts.real_images(ilsvrc, per_class=1, n_val=3)
    wnid = train[0][0]
    bad = (wnid, f"{wnid}_99999.JPEG", train[0][2][:len(train[0][2]) // 2])  # a JPEG cut short: rejected at decode
    return [*train, bad], val, bad


def _member(data: bytes, name: str) -> bytes:
    """The bytes of member `name` of an archive held in `data` (tar or zip; a webdataset sample key: its image)."""
    if data[:4] == b"PK\x03\x04":
        return zipfile.ZipFile(io.BytesIO(data)).read(name)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        names = tf.getnames()
        member = name if name in names else f"{name}.jpg"  # a sample key names its <key>.jpg
        return tf.extractfile(member).read()


def resolve(src: Path, name: str) -> bytes:
    """What a report name points at: a path relative to SRC, then ":" and a member name per archive level."""
    first, *members = name.split(":")
    data = (src / first).read_bytes()
    for m in members:
        data = _member(data, m)
    return data


def _extracted(dest: Path, train, val) -> Path:
    for wnid, name, data in train:
        (dest / "train" / wnid).mkdir(parents=True, exist_ok=True)
        (dest / "train" / wnid / name).write_bytes(data)
    (dest / "train" / train[0][0] / ".DS_Store").write_bytes(JUNK)
    (dest / "val").mkdir()
    for name, _, data in val:
        (dest / "val" / name).write_bytes(data)
    return dest


def _official(dest: Path, train, val, shared) -> Path:
    layouts.official(dest, train, val, shared)
    with tarfile.open(dest / "ILSVRC2012_img_train.tar", "a") as tf:
        layouts.add_bytes(tf, ".DS_Store", JUNK)
    return dest


def _wds(dest: Path, train, val, shared) -> Path:
    layouts.timm_wds(dest, train, val, shards=(1, 1))
    with tarfile.open(dest / "imagenet1k-train-0000.tar", "a") as tf:
        layouts.add_bytes(tf, ".DS_Store", JUNK)
    return dest


def _kaggle(dest: Path, train, val, shared) -> Path:
    path = layouts.kaggle(dest, train, val, shared)
    with zipfile.ZipFile(path, "a") as z:
        z.writestr(f"ILSVRC/Data/CLS-LOC/train/{train[0][0]}/.DS_Store", JUNK)
    return dest


@pytest.mark.parametrize("make", [_official, _wds, _kaggle, lambda d, t, v, s: _extracted(d, t, v)],
                         ids=["official-tars", "timm-wds", "kaggle-zip", "extracted"])
def test_every_named_file_resolves_to_its_bytes_in_the_source(ilsvrc, images, tmp_path, make):
    train, val, bad = images
    src = make(tmp_path / "src", train, val, ilsvrc)
    report = run_prep(PrepConfig(src=str(src), out=str(tmp_path / "out"), workers=1))["splits"]["train"]
    rejected = {r["name"]: r["reason"] for r in report["rejected"]}
    assert len(rejected) == 2, rejected  # the junk file (at listing) and the cut JPEG (at decode)
    by_bytes = {resolve(src, name): reason for name, reason in rejected.items()}
    assert by_bytes.keys() == {JUNK, bad[2]}
    assert "hidden file" in by_bytes[JUNK] and "JPEG" in by_bytes[bad[2]]
    for name in rejected:  # one printable form: no absolute path, no repr
        assert not name.startswith("/") and str(tmp_path) not in name and name.isprintable()


def test_a_name_the_store_refuses_is_named_in_the_same_form(ilsvrc, images, tmp_path):
    train, val, _ = images
    wnid = train[0][0]
    odd = [(wnid, "aQQQb.JPEG", train[0][2]), *train[1:]]
    path = layouts.kaggle(tmp_path / "src", odd, val, ilsvrc)
    path.write_bytes(path.read_bytes().replace(b"aQQQb", b"a\0\0\0b"))  # a NUL in a zip member name: not storable
    report = run_prep(PrepConfig(src=str(tmp_path / "src"), out=str(tmp_path / "out"), workers=1, split="train"))
    rejected = {r["name"]: r["reason"] for r in report["splits"]["train"]["rejected"]}  # and the cut JPEG
    nul = f"imagenet-object-localization-challenge.zip:ILSVRC/Data/CLS-LOC/train/{wnid}/a\0\0\0b.JPEG"
    assert "cannot be stored" in rejected[nul] and len(rejected) == 2
    assert report["splits"]["train"]["written"] == len(odd) - 2

"""Kaggle's imagenet-object-localization-challenge.zip read in place: the official records, cached central
directory, ZIP64, and damaged members."""

import json
import os
import zipfile

import pytest

import layouts
from imagenet_prep import ImgnetError
from imagenet_prep.sources import kaggle_zip
from imagenet_prep.prep import PrepConfig, run_prep
from imagenet_prep.sources import discover, read_item

ZIP = "imagenet-object-localization-challenge.zip"


@pytest.fixture(scope="module")
def images(ilsvrc):
    return layouts.real_images(ilsvrc, per_class=3, n_val=20)


def _prep(src, out, **kw):
    return run_prep(PrepConfig(src=str(src), out=str(out), workers=1, **kw))


@pytest.mark.parametrize("opts", [{}, {"classes": 300, "per_class": 2, "format": "hdf5", "encoding": "jpeg"}],
                         ids=["default", "subset-hdf5-jpeg"])
def test_zip_gives_the_official_records(ilsvrc, images, tmp_path, opts):
    train, val = images
    _prep(layouts.official(tmp_path / "official", train, val, ilsvrc), tmp_path / "ref", **opts)
    stored = {train[0][1], val[0][0]}  # Kaggle's zip deflates; stored members must read as well
    layouts.kaggle(tmp_path / "kaggle", train, val, ilsvrc, stored=stored)
    report = _prep(tmp_path / "kaggle", tmp_path / "out", **opts)
    assert report["layout"] == "kaggle-zip"
    for split in ("train", "val"):
        want = layouts.content(tmp_path / "ref", split)
        assert len(want) > 0 and layouts.content(tmp_path / "out", split) == want
        assert report["splits"][split]["rejected"] == []
    assert json.loads((tmp_path / "out" / "labels.json").read_text()) == \
        json.loads((tmp_path / "ref" / "labels.json").read_text())


def test_central_directory_is_listed_once_and_cached(ilsvrc, images, tmp_path, monkeypatch):
    train, val = images
    layouts.kaggle(tmp_path / "kaggle", train, val, ilsvrc)
    first = discover(tmp_path / "kaggle", cache_dir=tmp_path)
    assert len(list(tmp_path.glob(".listing-*.npz"))) == 3  # train, val and the two label files
    calls = []
    real = kaggle_zip.central_directory
    monkeypatch.setattr(kaggle_zip, "central_directory", lambda p: calls.append(p) or real(p))
    again = discover(tmp_path / "kaggle", cache_dir=tmp_path)
    assert again.splits == first.splits and calls == []
    assert discover(tmp_path / "kaggle").splits == first.splits and calls  # without a cache: parsed again
    with zipfile.ZipFile(tmp_path / "kaggle" / ZIP) as z:
        for split, items in first.splits.items():
            for item in items:
                folder = f"train/{first.label_map.names[item.label]}" if split == "train" else "val"
                assert item.method == 8 and read_item(item) == z.read(f"ILSVRC/Data/CLS-LOC/{folder}/{item.name}")
    assert "LOC_val_solution.csv" in first.origin["val"] and ZIP in first.origin["train"]


def test_zip64_offsets_past_4_gib(ilsvrc, images, tmp_path):
    """A zip whose members lie past 4 GiB (a sparse prefix): ZIP64 end record and extra fields, as in the
    155 GB Kaggle download."""
    train, val = images
    (tmp_path / "big").mkdir()
    path = tmp_path / "big" / ZIP
    with open(path, "wb") as f:
        f.truncate(4_400_000_000)  # sparse: no disk used
    small = layouts.kaggle(tmp_path / "small", train[:6], val[:4], ilsvrc)
    with zipfile.ZipFile(small) as src, zipfile.ZipFile(path, "a") as dst:  # appended after the prefix
        for info in src.infolist():
            dst.writestr(info, src.read(info))
    with zipfile.ZipFile(path) as z:
        want = {i.filename: (i.header_offset, i.compress_size, i.compress_type, i.CRC) for i in z.infolist()}
    got = {n: (o, s, m, c) for n, o, s, m, c, _ in kaggle_zip.central_directory(path)}
    assert got == {n: v for n, v in want.items() if n in got} and len(got) == len(want) - 1  # annotation xml skipped
    assert min(v[0] for v in got.values()) > 2**32
    a, b = discover(tmp_path / "big"), discover(tmp_path / "small")
    assert [[read_item(i) for i in a.splits[s]] for s in a.splits] == [[read_item(i) for i in b.splits[s]] for s in b.splits]


def _corrupt_member(path, member, at=-10):
    """Flip one byte inside `member`'s compressed data."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(member)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        n, e = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
        pos = info.header_offset + 30 + n + e + (info.compress_size + at if at < 0 else at)
        f.seek(pos)
        byte = f.read(1)
        f.seek(pos)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_a_member_failing_its_crc_is_a_reported_skip(ilsvrc, images, tmp_path):
    train, val = images
    stored_name = train[1][1]
    path = layouts.kaggle(tmp_path / "kaggle", train, val, ilsvrc, stored={stored_name})
    _corrupt_member(path, f"ILSVRC/Data/CLS-LOC/train/{train[1][0]}/{stored_name}")
    _corrupt_member(path, f"ILSVRC/Data/CLS-LOC/val/{val[2][0]}", at=40)  # inside the deflate stream
    report = _prep(tmp_path / "kaggle", tmp_path / "out")
    rejected = {r["name"]: r["reason"] for s in ("train", "val") for r in report["splits"][s]["rejected"]}
    zipped = f"{kaggle_zip.ZIP_NAME}:{kaggle_zip.CLS_LOC}"  # named by the zip and the member's name in it
    bad_train, bad_val = f"{zipped}train/{train[1][0]}/{stored_name}", f"{zipped}val/{val[2][0]}"
    assert set(rejected) == {bad_train, bad_val}
    assert "fails its CRC-32 check" in rejected[bad_train]
    assert "re-download" in rejected[bad_val]  # an inflate error or a CRC failure, whichever the flip causes
    assert report["splits"]["train"]["written"] == len(train) - 1 and report["splits"]["val"]["written"] == len(val) - 1


def test_a_truncated_zip_is_a_one_line_error(ilsvrc, images, tmp_path):
    train, val = images
    path = layouts.kaggle(tmp_path / "kaggle", train, val, ilsvrc)
    path.write_bytes(path.read_bytes()[:-5000])
    with pytest.raises(ImgnetError, match="no zip end record|central directory") as e:
        discover(tmp_path / "kaggle")
    assert "\n" not in str(e.value)


def test_zip_csv_that_disagrees_with_the_ground_truth(ilsvrc, images, tmp_path):
    train, val = images
    path = layouts.kaggle(tmp_path / "kaggle", train, val, ilsvrc)
    lines = (ilsvrc / "kaggle_loc" / "LOC_val_solution.csv").read_text().splitlines()
    lines = [ln.replace(",n", ",n99999999 0 0 1 1 n", 1) if ln.startswith("ILSVRC2012_val_00000005,") else ln
             for ln in lines]
    old = path.rename(path.with_suffix(".old"))
    with zipfile.ZipFile(old) as a, zipfile.ZipFile(path, "w") as z:  # the zip again, with the edited CSV
        for info in a.infolist():
            z.writestr(info, a.read(info) if info.filename != "LOC_val_solution.csv" else "\n".join(lines) + "\n")
    with pytest.raises(ImgnetError, match="labels ILSVRC2012_val_00000005.JPEG as n99999999, but the ILSVRC2012 "
                                          "ground truth"):
        discover(tmp_path / "kaggle")


def test_member_name_that_is_not_utf8_under_the_utf8_flag_keeps_its_bytes(ilsvrc, images, tmp_path):
    train, val = images
    wnid = train[0][0]
    odd = [(wnid, "\u00e9t\u00e9.JPEG", train[0][2]), *train[1:]]
    path = layouts.kaggle(tmp_path / "k", odd, val, ilsvrc)
    # the name's bytes: 0xff 0xfe are not UTF-8, though the entry's flag says UTF-8
    path.write_bytes(path.read_bytes().replace("\u00e9t\u00e9".encode(), b"\xff\xfet\xfe\xff"))
    _prep(tmp_path / "k", tmp_path / "out", split="train")
    names = [n for _, _, n in layouts.content(tmp_path / "out", "train")]
    assert os.fsdecode(b"\xff\xfet\xfe\xff.JPEG") in names and len(names) == len(odd)
    assert {n.encode("utf-8", "surrogateescape") for n in names} >= {b"\xff\xfet\xfe\xff.JPEG"}

"""Hostile downloads, made on the fly: what a source declares (a zip's directory, a parquet footer, _info.json,
shard numbers) is checked against what it holds; an image in both train and val is an error in every layout
that names images; declared sizes are bounded before anything is allocated; malformed fields are one line."""

from __future__ import annotations

import io
import json
import shutil
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import pytest

import layouts
from imagenet_prep import ImgnetError
from imagenet_prep.resize import BadImage
from imagenet_prep.sources import base, discover, read_item

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

CLS_LOC = "ILSVRC/Data/CLS-LOC/"
ZIP = "imagenet-object-localization-challenge.zip"
W0 = "n01440764"  # sorted-wnid index 0


@pytest.fixture(scope="module")
def images(ilsvrc_once):
    """(train [(wnid, name, bytes)], val [(name, wnid, bytes)]): real names, 3 classes x 2 and 6 val images."""
    train, val = layouts.real_images(ilsvrc_once, per_class=2, n_val=6)
    wnids = sorted({w for w, _, _ in train})[:3]
    return [t for t in train if t[0] in wnids], val


def _one_line(e) -> str:
    text = str(e.value)
    assert "\n" not in text and "Traceback" not in text
    return text


# ------------------------------------------------------------------------------------ hand-made zips
def _zip(path: Path, members, central=None, count=None) -> Path:
    """A stored zip of `members` [(name, bytes)]; `central(i, fields)` may change entry i of the central
    directory (fields: name, offset, csize, method, extra); `count`: the end record's entry count."""
    out, cd = bytearray(), bytearray()
    for i, (name, data) in enumerate(members):
        crc, raw = zlib.crc32(data), name.encode()
        f = {"name": raw, "offset": len(out), "csize": len(data), "method": 0, "extra": b""}
        out += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, crc, len(data), len(data), len(raw), 0)
        out += raw + data
        if central:
            central(i, f)
        cd += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, f["method"], 0, 0, crc, f["csize"], len(data),
                          len(f["name"]), len(f["extra"]), 0, 0, 0, 0, f["offset"]) + f["name"] + f["extra"]
    n = len(members) if count is None else count
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(out + cd) + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, n, n, len(cd), len(out), 0))
    return path


def _zip_train(images) -> list[tuple[str, bytes]]:
    train, _ = images
    return [(f"{CLS_LOC}train/{w}/{n}", d) for w, n, d in train]


def _entry(images, src: Path, k: int):
    """The listed item of train image k."""
    name = images[0][k][1]
    return next(i for i in discover(src).splits["train"] if i.name == name)


def test_zip_entry_pointing_at_another_members_header_is_rejected(images, tmp_path):
    members = _zip_train(images)
    second = 30 + len(members[0][0].encode()) + len(members[0][1])  # member 1's local header
    path = _zip(tmp_path / "src" / ZIP, members, lambda i, f: f.update(offset=second) if i == 0 else None)
    with pytest.raises(zipfile.BadZipFile):  # what zipfile makes of it too
        zipfile.ZipFile(path).read(members[0][0])
    with pytest.raises(BadImage, match="local header names .*: the central directory points .* at another member"):
        read_item(_entry(images, tmp_path / "src", 0))
    assert read_item(_entry(images, tmp_path / "src", 1)) == members[1][1]


def test_zip_entry_with_another_method_than_its_local_header_is_rejected(images, tmp_path):
    members = _zip_train(images)
    _zip(tmp_path / ZIP, members, lambda i, f: f.update(method=8) if i == 0 else None)
    with pytest.raises(BadImage, match="local header has method 0, its central entry 8"):
        read_item(_entry(images, tmp_path, 0))


def test_zip_end_record_that_undercounts_its_entries_is_an_error(images, tmp_path):
    members = _zip_train(images)
    _zip(tmp_path / ZIP, members, count=2)
    with pytest.raises(ImgnetError, match=f"declares 2 members but the central directory holds {len(members)}") as e:
        discover(tmp_path)
    _one_line(e)


def test_zip_with_a_name_listed_twice_is_an_error(images, tmp_path):
    members = _zip_train(images)
    _zip(tmp_path / ZIP, members + [members[2]])
    with pytest.raises(ImgnetError, match="member .* is listed twice in the central directory") as e:
        discover(tmp_path)
    _one_line(e)


@pytest.mark.parametrize("extra", [struct.pack("<HH", 1, 0), b""], ids=["empty-zip64-field", "no-zip64-field"])
def test_zip64_sizes_without_their_extra_field_data_are_one_line(images, tmp_path, extra):
    members = _zip_train(images)
    _zip(tmp_path / ZIP, members, lambda i, f: f.update(csize=0xFFFFFFFF, extra=extra) if i == 0 else None)
    with pytest.raises(ImgnetError, match="ZIP64") as e:
        discover(tmp_path)
    _one_line(e)


# ---------------------------------------------------------------------------------------- parquet
def _rows(n: int, wnid: str = W0) -> list[tuple[str, bytes, int]]:
    return [(f"{wnid}_{k}_{wnid}.JPEG", b"x" * 50, layouts.sorted_wnids().index(wnid)) for k in range(n)]


def _parquet(path: Path, rows, image_type=None, row_group_size=None) -> Path:
    image_type = image_type or pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({"image": pa.array([{"bytes": d, "path": p} for p, d, _ in rows], image_type),
                      "label": pa.array([lbl for _, _, lbl in rows], pa.int64())})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def _varint(n: int) -> bytes:
    out = b""
    while True:
        out += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
        n >>= 7
        if not n:
            return out


def _declare_rows(path: Path, held: int, declared: int) -> int:
    """Rewrite every row count of the footer (the file's, the row group's, each column chunk's values: thrift
    i64 fields after the field before them, `0x16 <zigzag varint>`) from `held` to `declared`; how many."""
    data = path.read_bytes()
    n = struct.unpack("<I", data[-8:-4])[0]
    footer = data[-8 - n:-8]
    old, new = b"\x16" + _varint(2 * held), b"\x16" + _varint(2 * declared)
    count = footer.count(old)
    footer = footer.replace(old, new)
    path.write_bytes(data[:-8 - n] + footer + struct.pack("<I", len(footer)) + b"PAR1")
    return count


def test_parquet_footer_that_declares_fewer_rows_than_its_pages_hold_is_an_error(tmp_path):
    path = _parquet(tmp_path / "train-00000-of-00001.parquet", _rows(37))
    assert _declare_rows(path, 37, 20) >= 3
    assert pq.ParquetFile(path).read().num_rows == 20  # what pyarrow makes of it: 17 rows gone without a word
    with pytest.raises(ImgnetError, match="holds 37 values in its pages but declares 20") as e:
        discover(tmp_path).splits["train"]
    _one_line(e)


def test_parquet_footer_declaring_2_to_the_40_rows_is_refused_before_reading(tmp_path):
    path = _parquet(tmp_path / "train-00000-of-00001.parquet", _rows(37))
    _declare_rows(path, 37, 1 << 40)
    with pytest.raises(ImgnetError, match="declares 1,099,511,627,776 rows, more than the file's .* bytes") as e:
        discover(tmp_path)
    _one_line(e)


def test_parquet_shard_numbered_past_its_count_is_an_error(tmp_path):
    _parquet(tmp_path / "train-00000-of-00001.parquet", _rows(3))
    _parquet(tmp_path / "validation-00000-of-00001.parquet", _rows(2, "n01443537"))
    _parquet(tmp_path / "validation-00005-of-00001.parquet", _rows(2, "n01484850"))
    with pytest.raises(ImgnetError, match="numbered past their count: validation-00005-of-00001.parquet") as e:
        discover(tmp_path)
    _one_line(e)
    assert len(discover(tmp_path, splits=["train"]).splits["train"]) == 3  # the complete split still prepares


@pytest.mark.parametrize("path_type", [pa.binary(), pa.int64()], ids=["binary", "int"])
def test_parquet_image_path_of_another_type_is_one_line(tmp_path, path_type):
    rows = [(p.encode() if path_type == pa.binary() else k, d, lbl) for k, (p, d, lbl) in enumerate(_rows(3))]
    _parquet(tmp_path / "train-00000-of-00001.parquet", rows, pa.struct([("bytes", pa.binary()), ("path", path_type)]))
    with pytest.raises(ImgnetError, match=r"has columns .*; expected image: struct<bytes: binary, path: string>") as e:
        discover(tmp_path)
    _one_line(e)


# ------------------------------------------------------------------------------------ timm shards
def _info(src: Path, change) -> None:
    info = json.loads((src / "_info.json").read_text())
    change(info["splits"]["train"])
    (src / "_info.json").write_text(json.dumps(info))


@pytest.mark.parametrize("change, message", [
    (lambda t: t.update(num_samples=t["num_samples"] + 1), r"holds 6 samples in its shard_lengths but declares 7"),
    (lambda t: t.update(shard_lengths=t["shard_lengths"][:-1]), r"the train entry has 2 shard_lengths for 3 filenames"),
    (lambda t: t.update(num_samples=t["num_samples"] + 1, shard_lengths=None),
     r"\(train shards, per _info.json\) holds 6 samples but declares 7"),
], ids=["num-samples", "shard-lengths-count", "num-samples-alone"])
def test_wds_info_counts_are_checked_against_the_shards(images, tmp_path, change, message):
    train, val = images
    src = layouts.timm_wds(tmp_path / "wds", train, val, shards=(3, 2))
    _info(src, change)
    with pytest.raises(ImgnetError, match=message) as e:
        discover(src)
    _one_line(e)


def test_wds_cls_of_5000_digits_is_one_line(images, tmp_path):
    train, val = images
    src = layouts.timm_wds(tmp_path / "wds", train, val, shards=(1, 1), info=False)
    shard = src / "imagenet1k-train-0000.tar"
    with tarfile.open(shard) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar]
    with tarfile.open(shard, "w") as tar:  # .cls alone labels each sample: the .json left out
        for name, data in members:
            if not name.endswith(".json"):
                layouts.add_bytes(tar, name, b"1" * 5000 if name.endswith(".cls") else data)
    with pytest.raises(ImgnetError, match=r"\.cls holds '1111.*; expected a sorted-wnid index") as e:
        discover(src)
    _one_line(e)


# --------------------------------------------------------------------------- train/val leaks, every layout
def _hf_name(name: str, wnid: str) -> str:
    stem, ext = name.rsplit(".", 1)
    return f"{stem}_{wnid}.{ext}"


def _targz(path: Path, members) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members:
            layouts.add_bytes(tar, name, data)
    path.write_bytes(buf.getvalue())


def _layout(kind: str, dest: Path, train, val, shared: Path) -> Path:
    """SRC of layout `kind` holding train [(wnid, name, bytes)] and val [(name, wnid, bytes)]."""
    if kind == "archives":
        return layouts.official(dest, train, val, shared)
    if kind == "timm-wds":
        return layouts.timm_wds(dest, train, val, shards=(2, 1))
    if kind == "kaggle-zip":
        return layouts.kaggle(dest, train, val, shared).parent
    dest.mkdir(parents=True)
    wnids = layouts.sorted_wnids()
    if kind == "extracted":
        for w, n, d in train:
            (dest / "train" / w).mkdir(parents=True, exist_ok=True)
            (dest / "train" / w / n).write_bytes(d)
        (dest / "val").mkdir()
        for n, _, d in val:
            (dest / "val" / n).write_bytes(d)
    elif kind == "hf-parquet":
        _parquet(dest / "train-00000-of-00001.parquet", [(_hf_name(n, w), d, wnids.index(w)) for w, n, d in train])
        _parquet(dest / "validation-00000-of-00001.parquet", [(_hf_name(n, w), d, wnids.index(w)) for n, w, d in val])
    else:  # hf-targz
        for k in range(5):
            _targz(dest / f"train_images_{k}.tar.gz", [(_hf_name(n, w), d) for w, n, d in train[k::5]])
        _targz(dest / "val_images.tar.gz", [(_hf_name(n, w), d) for n, w, d in val])
    return dest


LEAK_LAYOUTS = ["extracted", "archives", "timm-wds", "kaggle-zip", "hf-parquet", "hf-targz"]


@pytest.mark.parametrize("kind", LEAK_LAYOUTS)
def test_an_image_in_both_train_and_val_is_an_error_naming_it_and_both_places(images, ilsvrc_once, tmp_path, kind):
    train, val = images
    leaked, wnid, data = val[0]
    src = _layout(kind, tmp_path / kind, train + [(wnid, leaked, data)], val, ilsvrc_once)
    assert discover(src, splits=["train"]).layout == kind  # each split alone lists
    with pytest.raises(ImgnetError, match=r"image ILSVRC2012_val_00000001 is in both train \(.*\) and val \(.*\); "
                                          r"expected each image in one split only") as e:
        discover(src)
    text = _one_line(e)
    assert text.count("ILSVRC2012_val_00000001") >= 3  # the image, then where it is in train and in val


def test_wds_leak_by_sample_key_without_json(images, tmp_path):
    """A val sample that carries only .cls (its name is its key) is the train sample of that key."""
    train, val = images
    w, n, d = train[0]
    src = layouts.timm_wds(tmp_path / "wds", train, val, shards=(1, 1), info=False)
    with tarfile.open(src / "imagenet1k-validation-00.tar", "a") as tar:
        layouts.add_bytes(tar, f"{n.rsplit('.', 1)[0]}.jpg", d)
        layouts.add_bytes(tar, f"{n.rsplit('.', 1)[0]}.cls", str(layouts.sorted_wnids().index(w)).encode())
    with pytest.raises(ImgnetError, match=f"image {n.rsplit('.', 1)[0]} is in both train"):
        discover(src)


def test_imagefolder_names_are_not_leaks(images, tmp_path):
    """ImageFolder names are unique within a folder only: train/cat/1.jpg and val/cat/1.jpg are two images."""
    train, _ = images
    for split in ("train", "val"):
        (tmp_path / split / "cat").mkdir(parents=True)
        (tmp_path / split / "cat" / "1.jpg").write_bytes(train[0][2])
    found = discover(tmp_path)
    assert found.layout == "imagefolder" and len(found.splits["train"]) == len(found.splits["val"]) == 1


# ------------------------------------------------------------------------------------ memory bounds
class _Stream:
    def __init__(self, data: bytes):
        self.f, self.asked = io.BytesIO(data), []

    def read(self, n=-1):
        self.asked.append(n)
        return self.f.read(n)


def test_compressed_members_are_read_in_bounded_chunks(monkeypatch):
    data = bytes(range(256)) * (12 << 10)  # 3 MB
    s = _Stream(data + b"more")
    assert base.read_capped(s, len(data), "x.tar.gz:m") == data
    assert s.asked and all(0 < n <= 1 << 20 for n in s.asked) and sum(s.asked) == len(data)
    monkeypatch.setattr(base, "MAX_IMAGE_BYTES", 1 << 20)
    s = _Stream(data)
    with pytest.raises(BadImage, match="over the 1,048,576"):
        base.read_capped(s, len(data), "x.tar.gz:m")
    assert s.asked == []  # refused before anything is read
    with pytest.raises(ImgnetError, match="ends after 10 of its 100 bytes"):
        base.read_capped(_Stream(b"0" * 10), 100, "x.tar.gz:m")


def test_one_bound_for_every_declared_image_size():
    """A 1.5 GB member of zeros (7 MB of gzip) is over the bound that files, tar and zip members and tar.gz
    members share, so that it is refused by its declared size."""
    assert base.MAX_IMAGE_BYTES < 1_500_000_000
    from imagenet_prep.sources import zipscan

    assert not hasattr(zipscan, "MAX_MEMBER_BYTES")  # the zip reads base.MAX_IMAGE_BYTES, not its own


def test_hf_targz_member_over_the_bound_is_rejected_unread(images, tmp_path, monkeypatch):
    train, val = images
    src = _layout("hf-targz", tmp_path / "hf", train, val, None)
    big = max(range(len(train)), key=lambda k: len(train[k][2]))
    monkeypatch.setattr(base, "MAX_IMAGE_BYTES", len(train[big][2]) - 1)
    read = []
    real = base.read_capped
    monkeypatch.setattr(base, "read_capped", lambda f, size, what: read.append(size) or real(f, size, what))
    from imagenet_prep.sources.hf_targz import stream_targz

    got = {name: data for _, name, data in stream_targz(src / f"train_images_{big % 5}.tar.gz")}
    assert got[_hf_name(train[big][1], train[big][0])] is None  # over the bound: not read
    assert all(size < len(train[big][2]) for size in read)  # the others are read, through the bound


# ------------------------------------------------------------------------------------ one-line errors
@pytest.mark.parametrize("where", ["kaggle-zip", "kaggle-folders"])
def test_loc_val_solution_field_over_the_csv_limit_is_one_line(images, ilsvrc_once, tmp_path, where):
    train, val = images
    csv = (ilsvrc_once / "kaggle_loc" / "LOC_val_solution.csv").read_text().splitlines()
    csv.insert(2, "ILSVRC2012_val_00000001," + "n01440764 0 0 1 1 " * 10_000)  # a field of 190 KB
    text = "\n".join(csv) + "\n"
    if where == "kaggle-zip":
        path = layouts.kaggle(tmp_path / "k", train, val, ilsvrc_once)
        old = path.rename(path.with_suffix(".old"))
        with zipfile.ZipFile(old) as a, zipfile.ZipFile(path, "w") as z:
            for info in a.infolist():
                z.writestr(info, text if info.filename == "LOC_val_solution.csv" else a.read(info))
        old.unlink()
        src = path.parent
    else:
        src = tmp_path / "k"
        for w, n, d in train:
            (src / CLS_LOC / "train" / w).mkdir(parents=True, exist_ok=True)
            (src / CLS_LOC / "train" / w / n).write_bytes(d)
        (src / CLS_LOC / "val").mkdir(parents=True)
        for n, _, d in val:
            (src / CLS_LOC / "val" / n).write_bytes(d)
        shutil.copy(ilsvrc_once / "kaggle_loc" / "LOC_synset_mapping.txt", src)
        (src / "LOC_val_solution.csv").write_text(text)
    with pytest.raises(ImgnetError, match=r"LOC_val_solution.csv line \d+: not a readable CSV row \(field larger") as e:
        discover(src)
    assert len(_one_line(e)) < 600


@pytest.mark.parametrize("kind", ["extracted", "kaggle-folders"])
def test_a_stray_file_in_a_flat_val_is_skipped_and_reported(images, ilsvrc_once, tmp_path, kind):
    train, val = images
    src = tmp_path / "src"
    if kind == "extracted":
        _layout("extracted", src, train, val, ilsvrc_once)
        root = src
    else:
        root = src / CLS_LOC
        _layout("extracted", root, train, val, ilsvrc_once)
        for f in ("LOC_synset_mapping.txt", "LOC_val_solution.csv"):
            shutil.copy(ilsvrc_once / "kaggle_loc" / f, src)
    (root / "val" / "notes.txt").write_text("downloaded from ...")
    (root / "val" / "Thumbs.db").write_bytes(b"\0" * 16)
    found = discover(src)
    assert len(found.splits["val"]) == len(val) and len(found.splits["train"]) == len(train)
    reasons = {d["name"]: d["reason"] for d in found.skipped["val"]}
    prefix = "" if kind == "extracted" else CLS_LOC
    assert "not an image file" in reasons[f"{prefix}val/notes.txt"] and f"{prefix}val/Thumbs.db" in reasons
    (root / "val" / "ILSVRC2012_val_1.JPEG").write_bytes(val[0][2])  # a misnamed image is still an error
    with pytest.raises(ImgnetError, match="ILSVRC2012_val_1.JPEG"):
        discover(src)


def test_prep_packs_around_a_stray_val_file(images, ilsvrc_once, tmp_path):
    from imagenet_prep.prep import PrepConfig, run_prep

    train, val = images
    src = _layout("extracted", tmp_path / "src", train, val, ilsvrc_once)
    (src / "val" / "notes.txt").write_text("downloaded from ...")
    report = run_prep(PrepConfig(src=str(src), out=str(tmp_path / "out"), workers=1))
    assert report["splits"]["val"]["written"] == len(val) and report["splits"]["train"]["written"] == len(train)
    assert any(r["name"] == "val/notes.txt" for r in report["splits"]["val"]["rejected"])


def test_sharded_fingerprint_covers_which_shard_holds_each_image(tmp_path):
    """Two parquet shards of the same shape that swap names between a kill and the rerun: the same names,
    labels and positions, in other shards; the fingerprint tells them apart (a resume would mix them up)."""
    from imagenet_prep.pack.run import _fingerprint
    from imagenet_prep.prep import PrepConfig

    a, b = tmp_path / "train-00000-of-00002.parquet", tmp_path / "train-00001-of-00002.parquet"
    _parquet(a, _rows(4, W0))
    _parquet(b, _rows(4, "n01443537"))
    cfg = PrepConfig(src=str(tmp_path), out=str(tmp_path / "out"))

    def fingerprint():
        fp = _fingerprint(cfg, discover(tmp_path).splits["train"], "sha", "hf-parquet")
        return fp["items_sha256"], fp["units_sha256"]
    before = fingerprint()
    a.rename(tmp_path / "x")
    b.rename(a)
    (tmp_path / "x").rename(b)
    assert fingerprint() != before
    # a layout read by byte range keeps its fingerprint: the shard file is not part of it
    from imagenet_prep.sources import registry

    assert registry.unit_key("archives", base.Item("a.JPEG", 0, "/x/t.tar", 512, 10)) == ""
    assert registry.unit_key("hf-parquet", base.Item("a.JPEG", 0, "/x/t.parquet", 3, 10)) == "t.parquet:3"
    assert "units_sha256" not in _fingerprint(cfg, [base.Item("a.JPEG", 0, "/x/t.tar", 512, 10)], "sha", "archives")


def test_a_split_finished_before_units_were_recorded_stays_complete(tmp_path, monkeypatch, capsys):
    """A sharded split finished by an earlier version has no units_sha256: it is complete as it stands (what
    shard held what matters only to a resume); any other difference is still refused."""
    from imagenet_prep.pack import run as pack_run
    from imagenet_prep.prep import PrepConfig

    cfg = PrepConfig(src=str(tmp_path), out=str(tmp_path / "out"))
    fp = pack_run._fingerprint(cfg, [base.Item("a.JPEG", 0, "/x/t.parquet", 0, 10)], "sha", "hf-parquet")
    old = {k: v for k, v in fp.items() if k != "units_sha256"}
    monkeypatch.setattr(pack_run, "_complete_meta", lambda out, name: {"fingerprint": old, "count": 1})
    monkeypatch.setattr(pack_run.store, "check_holds", lambda *a: None)
    monkeypatch.setattr(pack_run.store, "split_path", lambda out, name: (out / f"{name}.lmdb", "lmdb"))
    monkeypatch.setattr(pack_run, "_check_disk", lambda *a: None)
    assert pack_run._plan(cfg, tmp_path / "out", ["train"], {"train": fp}) == {}
    assert "already complete" in capsys.readouterr().err
    old["items_sha256"] = "0" * 64
    with pytest.raises(ImgnetError, match="complete with other settings: items_sha256"):
        pack_run._plan(cfg, tmp_path / "out", ["train"], {"train": fp})


def test_wds_shard_not_listed_in_info_is_an_error(images, tmp_path):
    train, val = images
    src = layouts.timm_wds(tmp_path / "wds", train, val, shards=(2, 1))
    shutil.copy(src / "imagenet1k-train-0001.tar", src / "imagenet1k-train-0007.tar")
    with pytest.raises(ImgnetError, match="imagenet1k-train-0007.tar not among the 2 train shards listed in "
                                          "_info.json") as e:
        discover(src)
    _one_line(e)


def test_parquet_row_over_the_bound_is_rejected_by_name(tmp_path, monkeypatch):
    from imagenet_prep.sources import hf_parquet

    path = _parquet(tmp_path / "train-00000-of-00001.parquet", [(p, b"x" * (50 + k), lbl) for k, (p, _, lbl)
                                                               in enumerate(_rows(3))])
    monkeypatch.setattr(base, "MAX_IMAGE_BYTES", 51)
    got = list(hf_parquet.LAYOUT.read_unit(str(path), 0, {k: f"{W0}_{k}.JPEG" for k in range(3)}))
    assert [d is None for _, d, _ in got] == [False, False, True] and "over the 51" in got[2][2]


def test_resume_after_two_parquet_shards_swapped_names_is_one_line_then_force_completes(images, tmp_path,
                                                                                          monkeypatch):
    from imagenet_prep.prep import PrepConfig, run_prep
    from imagenet_prep.sources import hf_parquet

    train, _ = images
    wnids = layouts.sorted_wnids()
    rows = [(_hf_name(n, w), d, wnids.index(w)) for w, n, d in train]
    a, b = tmp_path / "src" / "train-00000-of-00002.parquet", tmp_path / "src" / "train-00001-of-00002.parquet"
    _parquet(a, rows[0::2], row_group_size=1)  # the same shape: 3 row groups of one row each
    _parquet(b, rows[1::2], row_group_size=1)
    cfg = PrepConfig(src=str(tmp_path / "src"), out=str(tmp_path / "out"), workers=1, split="train")
    real, calls = hf_parquet.HfParquet.read_unit, []

    def killed_after_two_units(self, path, unit, want):
        calls.append(unit)
        if len(calls) > 2:
            raise ImgnetError("killed")
        yield from real(self, path, unit, want)
    monkeypatch.setattr(hf_parquet.HfParquet, "read_unit", killed_after_two_units)
    with pytest.raises(ImgnetError, match="killed"):
        run_prep(cfg)
    monkeypatch.setattr(hf_parquet.HfParquet, "read_unit", real)
    a.rename(tmp_path / "x")
    b.rename(a)
    (tmp_path / "x").rename(b)
    with pytest.raises(ImgnetError, match=r"unfinished run with different settings \((items|units)_sha256") as e:
        run_prep(cfg)
    _one_line(e)
    from dataclasses import replace

    report = run_prep(replace(cfg, force=True))
    clean = run_prep(replace(cfg, out=str(tmp_path / "clean")))
    assert report["splits"]["train"]["written"] == len(train)
    assert layouts.content(tmp_path / "out", "train") == layouts.content(tmp_path / "clean", "train")
    assert clean["splits"]["train"]["written"] == len(train)


@pytest.mark.parametrize("header", [b"\x1c" * 5000, b"\x15", b"\x15\x00\x15\x10\x15" + b"\xff" * 11],
                         ids=["nested", "cut-short", "long-varint"])
def test_damaged_parquet_page_headers_are_one_line(header):
    from imagenet_prep.sources.parquet_pages import chunk_rows

    with pytest.raises(ImgnetError, match="x.parquet row group 0: .*page header at byte 0") as e:
        chunk_rows(io.BytesIO(header), 0, len(header), "x.parquet row group 0")
    _one_line(e)

"""Prep under faults and hostile input, source side: read failures stop the run (and the rerun completes it),
damaged archives are errors naming them, any file name survives, odd folders are errors or reasoned skips.

Errnos are injected in the read path (CI runs as root: chmod proves nothing there)."""

import builtins
import errno
import gzip
import io
import os
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import layouts
from imagenet_prep import ImgnetError, sources
from imagenet_prep.pack import commits
from imagenet_prep.sources import archives, base, kaggle_zip, truth, zipscan
from imagenet_prep.sources import cache as listing_cache
from imagenet_prep.prep import PrepConfig, run_prep
from imagenet_prep.sources import discover
from imagenet_prep.synthetic import class_image

W1, W2 = "n01440764", "n01443537"


def _jpeg(seed: int, w=96, h=80, fmt="JPEG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(class_image(np.random.default_rng(seed), seed % 3, 3, (w, h))).save(buf, format=fmt)
    return buf.getvalue()


def _train(n=3):
    return [(w, f"{w}_{i}.JPEG", _jpeg(10 * k + i)) for k, w in enumerate((W1, W2)) for i in range(n)]


def _extracted(root: Path, train) -> Path:
    for w, name, data in train:
        (root / "train" / w).mkdir(parents=True, exist_ok=True)
        (root / "train" / w / name).write_bytes(data)
    return root


def _faulty_open(module, code: int, match: str, after_calls: int = 0):
    """Make `open` in `module` raise OSError(code) for paths holding `match`, after `after_calls` good opens."""
    state = {"calls": 0}

    def fake(path, *a, **kw):
        if match in os.fsdecode(path):
            state["calls"] += 1
            if state["calls"] > after_calls:
                raise OSError(code, os.strerror(code), os.fsdecode(path))
        return builtins.open(path, *a, **kw)
    return fake


def _names(data_dir, split="train"):
    return [r[2] for r in layouts.content(data_dir, split)]


# ------------------------------------------------------------------------------- 1: read failures
@pytest.mark.parametrize("code,workers", [(errno.EIO, 1), (errno.EACCES, 2), (errno.ESTALE, 1), (errno.ENOENT, 2)])
def test_read_failure_stops_the_run_and_the_rerun_writes_the_images(tmp_path, monkeypatch, code, workers):
    train = _train()
    src = _extracted(tmp_path / "src", train)
    monkeypatch.setattr(commits, "COMMIT_EVERY", 2)
    ref = tmp_path / "ref"
    run_prep(PrepConfig(src=str(src), out=str(ref), workers=1))
    out = tmp_path / "out"
    with monkeypatch.context() as m:  # the 5th image is unreadable: two commits of two are already made
        m.setattr(base, "open", _faulty_open(base, code, f"{W2}_1.JPEG"), raising=False)
        with pytest.raises(ImgnetError) as e:
            run_prep(PrepConfig(src=str(src), out=str(out), workers=workers))
    msg = str(e.value)
    assert f"{W2}_1.JPEG" in msg and errno.errorcode[code] in msg and "\n" not in msg
    report = run_prep(PrepConfig(src=str(src), out=str(out), workers=workers))["splits"]["train"]
    assert report["written"] == 6 and report["rejected"] == []
    assert layouts.content(out, "train") == layouts.content(ref, "train")


def test_read_failure_in_a_tar_member_and_a_zip_member(tmp_path, monkeypatch):
    train = _train(2)
    src = layouts.official(tmp_path / "official", train, [])
    (src / "ILSVRC2012_img_val.tar").unlink()
    with monkeypatch.context() as m:  # listing the tar fails: an I/O failure naming it
        m.setattr(archives, "open", _faulty_open(archives, errno.EIO, "img_train.tar"), raising=False)
        with pytest.raises(ImgnetError, match=r"ILSVRC2012_img_train.tar \(EIO"):
            discover(src)
    (tmp_path / "a").mkdir()
    discover(src, cache_dir=tmp_path / "a")  # listed (cached) with the real open: then reading a member fails
    with monkeypatch.context() as m:
        m.setattr(base, "open", _faulty_open(base, errno.EIO, "img_train.tar"), raising=False)
        with pytest.raises(ImgnetError, match=rf"{W1}_0.JPEG in .*ILSVRC2012_img_train.tar \(EIO"):
            run_prep(PrepConfig(src=str(src), out=str(tmp_path / "a"), workers=2))
    assert run_prep(PrepConfig(src=str(src), out=str(tmp_path / "a"), workers=1))["splits"]["train"]["written"] == 4
    zsrc = tmp_path / "zip"
    zsrc.mkdir()
    import zipfile

    with zipfile.ZipFile(zsrc / kaggle_zip.ZIP_NAME, "w") as z:
        for w, name, data in train:
            z.writestr(f"{kaggle_zip.CLS_LOC}train/{w}/{name}", data)
    out = tmp_path / "b"
    out.mkdir()
    discover(zsrc, cache_dir=out)
    monkeypatch.setattr(zipscan, "open", _faulty_open(zipscan, errno.EIO, ".zip"), raising=False)
    with pytest.raises(ImgnetError) as e:
        run_prep(PrepConfig(src=str(zsrc), out=str(out), workers=1))
    assert "EIO" in str(e.value) and f"{W1}_0.JPEG" in str(e.value)
    monkeypatch.undo()
    assert run_prep(PrepConfig(src=str(zsrc), out=str(out), workers=1))["splits"]["train"]["written"] == 4


def test_an_unreadable_class_folder_stops_the_run(tmp_path, monkeypatch):
    src = _extracted(tmp_path / "src", _train(1))
    real = os.scandir

    def scandir(path="."):
        if os.fsdecode(path).endswith(W2):
            raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))
        return real(path)
    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(ImgnetError, match=rf"cannot read folder .*{W2} \(EACCES"):
        discover(src)


# ---------------------------------------------------------------------------- 2: damaged archives
def _tar(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, data in members:
            layouts.add_bytes(t, name, data)
    return buf.getvalue()


def _cut_points(members) -> tuple[int, int]:
    """(a cut exactly between the first and the second member, a cut inside the second member's header)."""
    first = 512 + -(-len(members[0][1]) // 512) * 512
    return first, first + 100


@pytest.mark.parametrize("where", ["boundary", "header"])
def test_truncated_val_tar_is_an_error(tmp_path, where):
    members = [(f"ILSVRC2012_val_{n:08d}.JPEG", _jpeg(n)) for n in (1, 2, 3)]
    data = _tar(members)
    cut = _cut_points(members)[where == "header"]
    (tmp_path / "ILSVRC2012_img_val.tar").write_bytes(data[:cut])
    with pytest.raises(ImgnetError, match=r"ILSVRC2012_img_val.tar: the tar ends early or is damaged at byte"):
        discover(tmp_path)


@pytest.mark.parametrize("where", ["outer boundary", "outer header", "inner boundary", "inner header"])
def test_truncated_train_tar_is_an_error_naming_it(tmp_path, where):
    inner = {w: [(n, d) for x, n, d in _train(2) if x == w] for w in (W1, W2)}
    if where.startswith("inner"):
        whole = _tar(inner[W1])
        inner_data = whole[:_cut_points(inner[W1])[where.endswith("header")]]
        outer = _tar([(f"{W1}.tar", inner_data), (f"{W2}.tar", _tar(inner[W2]))])
    else:
        members = [(f"{w}.tar", _tar(inner[w])) for w in (W1, W2)]
        outer = _tar(members)[:_cut_points(members)[where.endswith("header")]]
    (tmp_path / "ILSVRC2012_img_train.tar").write_bytes(outer)
    with pytest.raises(ImgnetError) as e:
        run_prep(PrepConfig(src=str(tmp_path), out=str(tmp_path / "out"), workers=1, split="train"))
    msg = str(e.value)
    assert "ILSVRC2012_img_train.tar" in msg and "ends early" in msg
    if where.startswith("inner"):
        assert f"{W1}.tar" in msg


def test_class_tar_present_twice_is_an_error(tmp_path):
    members = [(n, d) for _, n, d in _train(1)]
    (tmp_path / "ILSVRC2012_img_train.tar").write_bytes(
        _tar([(f"{W1}.tar", _tar(members[:1])), (f"x/{W1}.tar", _tar(members[1:]))]))
    with pytest.raises(ImgnetError, match=rf"class tar {W1}.tar is there twice"):
        discover(tmp_path, splits=["train"])


def test_val_only_while_the_train_tar_is_incomplete(ilsvrc, tmp_path):
    train, val = layouts.real_images(ilsvrc, per_class=1, n_val=3)
    src = layouts.official(tmp_path / "src", train, val, ilsvrc)
    tar = src / "ILSVRC2012_img_train.tar"
    tar.write_bytes(tar.read_bytes()[:5000])
    report = run_prep(PrepConfig(src=str(src), out=str(tmp_path / "out"), workers=1, split="val"))
    assert report["splits"]["val"]["written"] == 3
    with pytest.raises(ImgnetError, match="ILSVRC2012_img_train.tar"):
        run_prep(PrepConfig(src=str(src), out=str(tmp_path / "out"), workers=1, split="train"))


def _devkit_tgz(path: Path) -> bytes:
    files = [("ILSVRC2012_devkit_t12/data/meta.mat", b"m" * 3000), ("ILSVRC2012_devkit_t12/readme.txt", b"r" * 50)]
    data = gzip.compress(_tar(files), mtime=0)
    path.write_bytes(data)
    return data


@pytest.mark.parametrize("damage", ["crc", "body", "truncated", "tar cut"])
def test_damaged_devkit_tgz_is_an_error(tmp_path, damage):
    tgz = tmp_path / "ILSVRC2012_devkit_t12.tar.gz"
    data = bytearray(_devkit_tgz(tgz))
    assert truth.read_devkit_tgz(tgz)[truth.META] == b"m" * 3000  # intact: reads
    if damage == "crc":
        data[-8] ^= 0x01
    elif damage == "body":
        data[len(data) // 2] ^= 0x10
    elif damage == "truncated":
        data = data[:-20]
    else:  # a complete gzip stream of a tar cut at a member boundary
        raw = gzip.decompress(bytes(data))
        data = gzip.compress(raw[:512 + 3072])
    tgz.write_bytes(bytes(data))
    with pytest.raises(ImgnetError, match="ILSVRC2012_devkit_t12.tar.gz"):
        truth.find_devkit(tmp_path)


@pytest.mark.parametrize("where", ["boundary", "header"])
def test_truncated_wds_shard_is_an_error(tmp_path, where):
    src = layouts.timm_wds(tmp_path / "src", _train(2), [], shards=(1, 0), info=False)
    shard = src / "imagenet1k-train-0000.tar"
    with tarfile.open(shard) as t:
        m = t.getmembers()[3]  # the second sample's first member
    shard.write_bytes(shard.read_bytes()[:m.offset + (100 if where == "header" else 0)])
    with pytest.raises(ImgnetError, match="imagenet1k-train-0000.tar: the tar ends early"):
        discover(src, splits=["train"])


@pytest.mark.parametrize("damage", ["boundary", "header", "crc", "gzip cut"])
def test_damaged_hf_targz_shard_is_an_error(tmp_path, damage):
    pytest.importorskip("pyarrow")
    from imagenet_prep.sources import hf_targz as hf

    members = [(f"{n.rsplit('.', 1)[0]}_{w}.JPEG", d) for w, n, d in _train(2)]
    raw = _tar(members)
    if damage in ("boundary", "header"):
        raw = raw[:_cut_points(members)[damage == "header"]]
    data = bytearray(gzip.compress(raw))
    if damage == "crc":
        data[-8] ^= 0x01
    elif damage == "gzip cut":
        data = data[:-30]
    shard = tmp_path / "val_images.tar.gz"
    shard.write_bytes(bytes(data))
    with pytest.raises(ImgnetError, match="val_images.tar.gz"):
        list(hf.stream_targz(shard))
    shard.write_bytes(gzip.compress(_tar(members)))
    assert [n for _, n, _ in hf.stream_targz(shard)] == [n for n, _ in members]  # intact: reads


# ------------------------------------------------------------------------------------ 3: names
ODD = ["new\nline.JPEG", "tab\there.JPEG", " lead and trail .JPEG", "emoji \U0001F600.JPEG", "back\\slash.JPEG",
       "quote\"'.JPEG", "semi;colon$(x).JPEG", "cr\rname.JPEG"]
UNDECODABLE = os.fsdecode(b"latin1-\xe9\xff.JPEG")  # surrogateescape: bytes that are not UTF-8


def _odd_source(root: Path) -> tuple[Path, list[str]]:
    names = [*ODD, UNDECODABLE, "z_plain.JPEG"]
    folder = root / "train" / W1
    folder.mkdir(parents=True)
    for i, name in enumerate(names):
        (folder / name).write_bytes(_jpeg(i))
    (root / "train" / W2).mkdir()
    (root / "train" / W2 / f"{W2}_0.JPEG").write_bytes(_jpeg(99))
    return root, names


def test_odd_names_are_listed_exactly_with_and_without_the_cache(tmp_path):
    src, names = _odd_source(tmp_path / "src")
    cache = tmp_path / "cache"
    cache.mkdir()
    first = discover(src, cache_dir=cache)
    got = {i.name: i.path for i in first.splits["train"]}
    assert set(names) <= set(got)
    for n in names:  # each name beside its own file: nothing shifted
        assert Path(got[n]).name == n and Path(got[n]).read_bytes() == (src / "train" / W1 / n).read_bytes()
    blob = listing_cache.join_strings([*names, ""])
    assert listing_cache.split_strings(blob, len(names) + 1) == [*names, ""]


def test_odd_names_in_a_tar_survive_the_listing_cache(tmp_path):
    names = [*ODD, UNDECODABLE]
    (tmp_path / "ILSVRC2012_img_train.tar").write_bytes(
        _tar([(f"{W1}.tar", _tar([(n, _jpeg(i)) for i, n in enumerate(names)]))]))
    cache = tmp_path / "cache"
    cache.mkdir()
    a = discover(tmp_path, splits=["train"], cache_dir=cache).splits["train"]
    assert list(cache.glob(".listing-*.npz"))  # cached, newline or not
    b = discover(tmp_path, splits=["train"], cache_dir=cache).splits["train"]
    assert a == b and sorted(i.name for i in a) == sorted(names)
    for i in b:
        assert sources.read_item(i) == _jpeg(names.index(i.name))


def _store_keeps_any_name() -> bool:
    """Whether the store writes and reads back names with a newline and undecodable bytes (its format)."""
    import tempfile

    from imagenet_prep import store

    with tempfile.TemporaryDirectory() as d:
        img = np.zeros((256, 256, 3), np.uint8)
        try:
            s = store.write_split(d, "train", [(img, 0, "a\nb"), (img, 0, UNDECODABLE)])
            ok = list(s.names) == ["a\nb", UNDECODABLE]
            s.close()
            return ok
        except Exception:  # noqa: BLE001
            return False


def test_odd_names_are_stored_and_read_back_unchanged(tmp_path):
    if not _store_keeps_any_name():
        pytest.skip("this store format cannot hold names with newlines or undecodable bytes")
    src, names = _odd_source(tmp_path / "src")
    out = tmp_path / "out"
    run_prep(PrepConfig(src=str(src), out=str(out), workers=2))
    content = layouts.content(out, "train")
    stored = {name: data for data, _, name in content}
    assert set(names) <= set(stored)
    s = discover(src).splits["train"]
    from imagenet_prep.resize import prepare
    from imagenet_prep.store import decode_image

    for it in s:  # each record holds the pixels of the file of its name
        want = prepare(it.path and Path(it.path).read_bytes()).image
        assert np.array_equal(decode_image(stored[it.name], "raw"), want), it.name


# ---------------------------------------------------------------------------------- 4: folders
@pytest.mark.parametrize("odd", ["N01440764", "n01440764 (copy)", "n01440764-old", "n014407640"])
@pytest.mark.parametrize("layout", ["extracted", "kaggle"])
def test_wnid_like_folder_is_an_error_naming_it(tmp_path, odd, layout):
    root = tmp_path / "src"
    base = root / ("ILSVRC/Data/CLS-LOC" if layout == "kaggle" else "")
    _extracted(base, _train(1))
    (base / "train" / odd).mkdir()
    (base / "train" / odd / "x.JPEG").write_bytes(_jpeg(5))
    with pytest.raises(ImgnetError, match=f"class '{re.escape(odd)}' looks like a wnid"):
        discover(root)


@pytest.mark.parametrize("other", ["Backup", "tmp", "n0144076"])
@pytest.mark.parametrize("layout", ["extracted", "train-tar"])
def test_another_folder_among_wnid_class_folders_is_an_error_naming_it(tmp_path, other, layout):
    train = _train(1)
    if layout == "extracted":
        root = _extracted(tmp_path / "src", train)
        (root / "train" / other).mkdir()
        (root / "train" / other / "x.JPEG").write_bytes(_jpeg(5))
    else:  # "Backup" would sort first and shift every class index by one
        root = layouts.official(tmp_path / "src", [*train, (other, "x.JPEG", _jpeg(5))], [])
        (root / "ILSVRC2012_img_val.tar").unlink()
    with pytest.raises(ImgnetError, match=f"class folder '{other}' is not a wnid, beside 2 wnid class folders") as e:
        discover(root)
    assert "\n" not in str(e.value)
    imagefolder = _extracted(tmp_path / "own", [("cat", "a.JPEG", _jpeg(1)), ("dog", "b.JPEG", _jpeg(2)),
                                                 (W1, "c.JPEG", _jpeg(3))])
    assert discover(imagefolder).label_map.names == ["cat", "dog", W1]  # mostly other names: an ImageFolder tree


def test_symlink_loops_and_junk_are_skipped_with_a_reason(tmp_path):
    src = _extracted(tmp_path / "src", _train(1))
    cls = src / "train" / W1
    (cls / "sub").mkdir()
    (cls / "sub" / "back").symlink_to(cls, target_is_directory=True)  # a loop through a folder link
    (cls / "self").symlink_to(cls / "self")                            # a link to itself: ELOOP
    (cls / "gone.JPEG").symlink_to(cls / "missing.JPEG")
    (cls / "Thumbs.db").write_bytes(b"x")
    os.mkfifo(cls / "pipe")
    found = discover(src)
    skipped = {d["name"]: d["reason"] for d in found.skipped["train"]}  # named by their path in SRC
    at = f"train/{W1}"
    assert "loop" in skipped[f"{at}/self"] and "broken" in skipped[f"{at}/gone.JPEG"]
    assert "loop" in skipped[f"{at}/sub/back/"] and skipped[f"{at}/Thumbs.db"] == "system file"
    assert "not a regular file" in skipped[f"{at}/pipe"]
    assert [i.name for i in found.splits["train"]] == [f"{W1}_0.JPEG", f"{W2}_0.JPEG"]


def test_read_failure_while_listing_shards_names_the_shard(tmp_path, monkeypatch):
    from imagenet_prep.sources import wds

    src = layouts.timm_wds(tmp_path / "src", _train(1), [], shards=(1, 0), info=False)
    monkeypatch.setattr(wds, "open", _faulty_open(wds, errno.EIO, "imagenet1k-train-0000.tar"), raising=False)
    with pytest.raises(ImgnetError, match=r"imagenet1k-train-0000.tar \(EIO"):
        discover(src, splits=["train"])


class _FailingFile:
    """A file whose reads fail with EIO once `good` bytes are read."""

    def __init__(self, f, good: int):
        self._f, self._left = f, good

    def read(self, n=-1):
        if self._left <= 0:
            raise OSError(errno.EIO, "Input/output error")
        data = self._f.read(n if n >= 0 else self._left)
        self._left -= len(data)
        return data

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def _hf_rows():
    return [(f"{n.rsplit('.', 1)[0]}_{w}.JPEG", d, [W1, W2].index(w)) for w, n, d in _train(3)]


@pytest.mark.parametrize("kind", ["parquet", "targz"])
def test_hf_read_failure_stops_the_run_and_the_rerun_completes(tmp_path, monkeypatch, kind):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from imagenet_prep.sources import hf_targz as hf

    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    rows = _hf_rows()
    if kind == "parquet":
        image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        table = pa.table({"image": pa.array([{"bytes": d, "path": p} for p, d, _ in rows], image),
                          "label": pa.array([lbl for _, _, lbl in rows], pa.int64())})
        pq.write_table(table, src / "train-00000-of-00001.parquet", row_group_size=2)
    else:
        for k in range(5):
            (src / f"train_images_{k}.tar.gz").write_bytes(gzip.compress(_tar([(p, d) for p, d, _ in rows[k::5]])))
    discover(src, cache_dir=out)  # listed and cached with the real reads
    if kind == "parquet":
        monkeypatch.setattr(pq, "ParquetFile", lambda path, *a, **kw: (_ for _ in ()).throw(
            OSError(errno.ESTALE, "Stale file handle", str(path))))
    else:
        monkeypatch.setattr(hf, "open", lambda path, mode="rb": _FailingFile(builtins.open(path, mode), 40),
                            raising=False)
    with pytest.raises(ImgnetError) as e:
        run_prep(PrepConfig(src=str(src), out=str(out), workers=1))
    assert ("ESTALE" if kind == "parquet" else "EIO") in str(e.value)
    assert ("train-00000-of-00001.parquet" if kind == "parquet" else "train_images_0.tar.gz") in str(e.value)
    monkeypatch.undo()
    report = run_prep(PrepConfig(src=str(src), out=str(out), workers=2))["splits"]["train"]
    assert report["written"] == 6 and report["rejected"] == []


def test_a_read_failure_on_an_odd_name_is_still_one_line(tmp_path, monkeypatch):
    src = tmp_path / "src"
    (src / "train" / W1).mkdir(parents=True)
    for name in ("a\nb.JPEG", UNDECODABLE):
        (src / "train" / W1 / name).write_bytes(_jpeg(1))
    monkeypatch.setattr(base, "open", _faulty_open(base, errno.EIO, ".JPEG"), raising=False)
    with pytest.raises(ImgnetError) as e:
        run_prep(PrepConfig(src=str(src), out=str(tmp_path / "out"), workers=1))
    msg = str(e.value)
    assert msg.isprintable() and "EIO" in msg and ("'a\\nb.JPEG' in " in msg or "'latin1-\\udce9" in msg)


# ------------------------------------------------------------------- oversized and sparse members
def test_a_sparse_tar_member_is_skipped_with_a_reason(tmp_path):
    import shutil
    import subprocess

    if shutil.which("tar") is None:
        pytest.skip("no tar program to make a sparse member")
    cls = tmp_path / "build" / W1
    cls.mkdir(parents=True)
    (cls / f"{W1}_0.JPEG").write_bytes(_jpeg(1))
    with open(cls / f"{W1}_holes.JPEG", "wb") as f:  # a 2 MB hole, then a byte: GNU tar -S stores it sparse
        f.truncate(2 << 20)
        f.seek(0, 2)
        f.write(b"x")
    subprocess.run(["tar", "-S", "-cf", str(tmp_path / f"{W1}.tar"), f"{W1}_0.JPEG", f"{W1}_holes.JPEG"], cwd=cls,
                   check=True)
    with tarfile.open(tmp_path / f"{W1}.tar") as tf:
        if not tf.getmember(f"{W1}_holes.JPEG").issparse():
            pytest.skip("this file system or tar made no sparse member")
    src = tmp_path / "src"
    src.mkdir()
    with tarfile.open(src / "ILSVRC2012_img_train.tar", "w") as outer:
        outer.add(tmp_path / f"{W1}.tar", arcname=f"{W1}.tar")
    found = discover(src)
    assert [i.name for i in found.splits["train"]] == [f"{W1}_0.JPEG"]
    skipped = {s["name"]: s["reason"] for s in found.skipped["train"]}
    assert "sparse" in skipped[f"ILSVRC2012_img_train.tar:{W1}.tar:{W1}_holes.JPEG"]


def test_a_source_file_over_the_largest_image_is_rejected_unread(tmp_path, monkeypatch):
    src = _extracted(tmp_path / "src", _train(1))
    with open(src / "train" / W1 / f"{W1}_huge.JPEG", "wb") as f:
        f.truncate(sources.MAX_IMAGE_BYTES + 1)  # sparse: no disk used; reading it whole would take 2 GB
    reads = []
    real = builtins.open

    def watched(path, *a, **kw):
        f = real(path, *a, **kw)
        if os.fsdecode(path).endswith("_huge.JPEG"):
            reads.append(path)
            f.read = lambda *x: pytest.fail("the oversized file was read")
        return f
    monkeypatch.setattr(base, "open", watched, raising=False)
    report = run_prep(PrepConfig(src=str(src), out=str(tmp_path / "out"), workers=1))["splits"]["train"]
    rejected = {r["name"]: r["reason"] for r in report["rejected"]}
    assert "over the" in rejected[f"train/{W1}/{W1}_huge.JPEG"] and report["written"] == 2 and reads


@pytest.mark.parametrize("layout", ["tars", "hf-targz"])
def test_an_archive_member_over_the_bound_is_rejected_by_name(tmp_path, monkeypatch, layout):
    train = _train(2)
    big = max(len(d) for _, _, d in train)
    monkeypatch.setattr(base, "MAX_IMAGE_BYTES", big - 1)  # the largest member is now over the bound
    victim = next(n for _, n, d in train if len(d) == big)
    if layout == "tars":
        src = layouts.official(tmp_path / "src", train, [])
        (src / "ILSVRC2012_img_val.tar").unlink()
    else:
        src = tmp_path / "src"
        src.mkdir()
        rows = [(f"{n.rsplit('.', 1)[0]}_{w}.JPEG", d) for w, n, d in train]
        for k in range(5):
            (src / f"train_images_{k}.tar.gz").write_bytes(gzip.compress(_tar(rows[k::5])))
    report = run_prep(PrepConfig(src=str(src), out=str(tmp_path / "out"), workers=1))["splits"]["train"]
    stem = victim.rsplit(".", 1)[0]  # named n0..._0.JPEG in the class tar, n0..._0_<wnid>.JPEG in a tar.gz shard
    assert [r["name"].rsplit(":", 1)[-1].startswith(stem + ("." if layout == "tars" else "_"))
            for r in report["rejected"]] == [True]
    assert "over the" in report["rejected"][0]["reason"] and report["written"] == len(train) - 1

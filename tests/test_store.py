import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from imagenet_prep import ImgnetError, open_split
from imagenet_prep.store import RAW_BYTES, decode_image, encode_image, write_split


def _records(n, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8), i % 3, f"img_{i:03d}.JPEG") for i in range(n)]


@pytest.mark.parametrize("fmt", ["lmdb", "hdf5"])
def test_raw_round_trip_is_exact(tmp_path, fmt):
    recs = _records(7)
    split = write_split(tmp_path, "train", recs, format=fmt)
    assert len(split) == 7 and split.meta["format"] == fmt and split.meta["count"] == 7
    for i, (img, label, name) in enumerate(recs):
        rec = split[i]
        assert rec.image.dtype == np.uint8 and rec.image.shape == (256, 256, 3)
        np.testing.assert_array_equal(rec.image, img)
        assert (rec.label, rec.name) == (label, name)
    out = np.empty((256, 256, 3), np.uint8)
    assert split.read_image(3, out=out) is out
    np.testing.assert_array_equal(out, recs[3][0])
    np.testing.assert_array_equal(split.labels, [r[1] for r in recs])


@pytest.mark.parametrize("fmt", ["lmdb", "hdf5"])
def test_jpeg_encoding_is_close_and_small(tmp_path, fmt):
    yy, xx = np.mgrid[0:256, 0:256]
    smooth = np.stack([xx, yy, (xx + yy) // 2], -1).astype(np.uint8)
    split = write_split(tmp_path, "val", [(smooth, 0, "a.JPEG")], format=fmt, encoding="jpeg", quality=95)
    assert split.meta["encoding"] == "jpeg"
    assert np.abs(split[0].image.astype(int) - smooth).mean() < 1.5
    assert len(split.read_bytes(0)) < RAW_BYTES / 5


def test_split_pickles_into_other_processes(tmp_path):
    import multiprocessing as mp

    recs = _records(4)
    split = write_split(tmp_path, "train", recs)
    split[0]  # opens the environment in this process
    with mp.get_context("spawn").Pool(1) as pool:
        sums = pool.map(_image_sum, [(split, i) for i in range(4)])
    assert sums == [int(r[0].sum()) for r in recs]


def _image_sum(args):
    split, i = args
    return int(split[i].image.sum())


def test_reader_refuses_missing_incomplete_and_mismatched(tmp_path):
    with pytest.raises(ImgnetError, match="no train split"):
        open_split(tmp_path, "train")
    write_split(tmp_path, "train", _records(3))
    lj = json.loads((tmp_path / "labels.json").read_text())
    lj["classes"] = lj["classes"][:2]
    (tmp_path / "labels.json").write_text(json.dumps(lj))
    with pytest.raises(ImgnetError, match="classes"):
        open_split(tmp_path, "train")


def test_codec_rejects_unknown_encoding():
    img = np.zeros((256, 256, 3), np.uint8)
    with pytest.raises(ImgnetError, match="encoding"):
        encode_image(img, "png")
    np.testing.assert_array_equal(decode_image(encode_image(img, "raw"), "raw"), img)


def test_lmdb_map_grows_as_needed(tmp_path):
    from imagenet_prep.store import LmdbWriter

    w = LmdbWriter(tmp_path / "grow.lmdb", {"t": 1}, expected_images=1, bytes_per_image=1)  # a 64 MB map
    start = w.env.info()["map_size"]
    img = encode_image(np.full((256, 256, 3), 7, np.uint8))
    for k in range(4):  # 4 x 100 raw images: about 79 MB
        w.commit([(img, 0, f"{k}_{j}") for j in range(100)], consumed=100 * (k + 1))
    assert w.env.info()["map_size"] > start and w.written == 400
    w.close()


def _out_of_order_writer(path, n=40, holes=(0, 3, 4, 17, 39)):
    """Records at their final index 0..n-1 committed in a shuffled order, with rejected `holes`."""
    from imagenet_prep.store import LmdbWriter

    w = LmdbWriter(path, {"test": "out of order"}, n)
    order = [i for i in np.random.default_rng(1).permutation(n).tolist() if i not in holes]
    for lo in range(0, len(order), 7):
        part = order[lo:lo + 7]
        w.commit_at([(i, bytes([i]) * 16, i % 5, f"r{i:03d}") for i in part], len(part), {f"unit{lo}": 1})
    return w, [i for i in range(n) if i not in holes]


def _read_back(w):
    return [(data, label, name) for data, label, name in w.read_all()]


def test_out_of_order_commits_end_in_index_order_without_holes(tmp_path):
    w, kept = _out_of_order_writer(tmp_path / "a.lmdb")
    assert w.progress["units"] == {f"unit{lo}": 1 for lo in range(0, len(kept), 7)}
    meta = w.finish({"split": "train"})
    assert meta["count"] == len(kept)
    assert _read_back(w) == [(bytes([i]) * 16, i % 5, f"r{i:03d}") for i in kept]
    w.close()


def test_compaction_killed_midway_is_completed_by_the_next_finish(tmp_path):
    from imagenet_prep.store import LmdbWriter

    w, kept = _out_of_order_writer(tmp_path / "a.lmdb")
    calls = []
    real = w._write_txn

    def dies_on_third(fill, nbytes=0):  # a kill after two compaction transactions committed
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real(fill, nbytes)

    w._write_txn = dies_on_third
    with pytest.raises(KeyboardInterrupt):
        w._compact(batch=4)
    w.close()
    w = LmdbWriter(tmp_path / "a.lmdb", {"test": "out of order"}, 40)
    w.finish({"split": "train"})
    assert _read_back(w) == [(bytes([i]) * 16, i % 5, f"r{i:03d}") for i in kept]
    w.close()


# ---------------------------------------------------------------------------------- damaged outputs
def test_check_env_reads_the_size_lmdb_itself_requires(tmp_path):
    import lmdb

    from imagenet_prep.store.lmdb import lmdb_metas

    write_split(tmp_path, "train", _records(5)).close()
    path = tmp_path / "train.lmdb"
    env = lmdb.open(str(path), readonly=True, lock=False)
    info, psize = env.info(), env.stat()["psize"]
    env.close()
    head = (path / "data.mdb").read_bytes()[:2 * 65536]
    txnid, last_pg, ps = max(lmdb_metas(head, len(head), "data.mdb"))
    assert (txnid, last_pg, ps) == (info["last_txnid"], info["last_pgno"], psize)
    assert (last_pg + 1) * ps <= (path / "data.mdb").stat().st_size


@pytest.mark.parametrize("keep", [0, 100, 4096 + 200, "half", "one page short"])
def test_truncated_data_mdb_is_an_error_not_sigbus(tmp_path, keep):
    from imagenet_prep.store import split_meta

    write_split(tmp_path / "a", "train", _records(6))
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "a", copy)  # an interrupted copy of DATA
    mdb = copy / "train.lmdb" / "data.mdb"
    size = mdb.stat().st_size
    keep = {"half": size // 2, "one page short": size - 4096}.get(keep, keep)
    os.truncate(mdb, keep)
    with pytest.raises(ImgnetError, match="truncated|not an LMDB") as e:
        open_split(copy, "train")
    assert "\n" not in str(e.value) and "data.mdb" in str(e.value)
    assert split_meta(copy, "train") is None  # prep then treats it as unfinished: progress_of says why


def test_prep_refuses_a_truncated_split_and_force_rebuilds_it(tmp_path):
    from PIL import Image

    from imagenet_prep.prep import PrepConfig, run_prep

    src = tmp_path / "src"
    for c in ("cat", "dog"):
        (src / "train" / c).mkdir(parents=True)
        for k in range(2):
            Image.fromarray(_records(1, seed=k + 3 * len(c))[0][0]).save(src / "train" / c / f"{c}{k}.jpg")
    out = tmp_path / "data"
    run_prep(PrepConfig(src=str(src), out=str(out), workers=1))
    mdb = out / "train.lmdb" / "data.mdb"
    os.truncate(mdb, mdb.stat().st_size // 2)
    with pytest.raises(ImgnetError, match="truncated"):
        run_prep(PrepConfig(src=str(src), out=str(out), workers=1))
    run_prep(PrepConfig(src=str(src), out=str(out), workers=1, force=True))
    assert len(open_split(out, "train")) == 4


def test_data_mdb_that_is_a_device_is_refused(tmp_path):
    write_split(tmp_path, "train", _records(2)).close()
    mdb = tmp_path / "train.lmdb" / "data.mdb"
    mdb.unlink()
    mdb.symlink_to("/dev/zero")
    with pytest.raises(ImgnetError, match="not a regular file"):
        open_split(tmp_path, "train")


def _edit_h5(path, edit):
    import h5py

    with h5py.File(path, "a") as f:
        edit(f)


def _external(f):
    import h5py

    ext = f.filename + ".raw"
    n = f["images"].shape[0]
    np.zeros((n, 256, 256, 3), np.uint8).tofile(ext)
    del f["images"]
    f.create_dataset("images", shape=(n, 256, 256, 3), dtype=np.uint8, external=[(ext, 0, h5py.h5f.UNLIMITED)])


def _virtual(f):
    import h5py

    n = f["labels"].shape[0]
    layout = h5py.VirtualLayout(shape=(n,), dtype=np.int64)
    layout[:] = h5py.VirtualSource("other.h5", "labels", shape=(n,))
    del f["labels"]
    f.create_virtual_dataset("labels", layout)


def _retype(dtype, shape=None):
    def edit(f):
        n = f["images"].shape[0]
        del f["images"]
        f.create_dataset("images", shape=shape or (n, 256, 256, 3), dtype=dtype)
    return edit


def _edit_meta(**changes):
    def edit(f):
        f.attrs["meta"] = json.dumps({**json.loads(f.attrs["meta"]), **changes})
    return edit


@pytest.mark.parametrize("edit, match", [
    (_external, "other files"),
    (_virtual, "other files"),
    (_retype(np.float32), "float32"),
    (_retype(np.uint16), "uint16"),
    (_retype(np.uint8, (3, 128, 128, 3)), r"\(3, 128, 128, 3\)"),
    (lambda f: _relink(f), "link"),
    (_edit_meta(count=10**12), "count|expected"),
    (_edit_meta(count="3"), "count"),
    (lambda f: f.attrs.__setitem__("meta", "[" * 100_000 + "]" * 100_000), "nested too deeply"),
    (lambda f: f.attrs.__setitem__("meta", "[1, 2]"), "expected an object"),
    (lambda f: f.attrs.__setitem__("meta", 5), "expected JSON text"),
    (_edit_meta(image_shape=5), "shape"),
])
def test_open_split_refuses_bad_hdf5(tmp_path, edit, match):
    write_split(tmp_path, "train", _records(3), format="hdf5")
    _edit_h5(tmp_path / "train.h5", edit)
    with pytest.raises(ImgnetError, match=match) as e:
        open_split(tmp_path, "train")
    assert "\n" not in str(e.value)


def _relink(f):
    import h5py

    del f["labels"]
    f["labels"] = h5py.ExternalLink("other.h5", "/labels")


def test_hdf5_that_is_a_link_to_dev_zero_is_refused(tmp_path):
    write_split(tmp_path, "train", _records(1), format="hdf5")
    (tmp_path / "train.h5").unlink()
    (tmp_path / "train.h5").symlink_to("/dev/zero")
    with pytest.raises(ImgnetError, match="not a regular file"):
        open_split(tmp_path, "train")


def _put_meta(path, edit):
    import lmdb

    env = lmdb.open(str(path), subdir=True)
    with env.begin(write=True) as txn:
        txn.put(b"__meta__", edit(txn.get(b"__meta__")))
    env.close()


@pytest.mark.parametrize("edit, match", [
    (lambda raw: json.dumps({**json.loads(raw), "count": 2}).encode(), "index for the 2 records"),
    (lambda raw: json.dumps({**json.loads(raw), "count": 10**15}).encode(), "index"),
    (lambda raw: b"[" * 50_000, "nested too deeply"),
    (lambda raw: b"\xff\xfe not json", "not readable JSON"),
])
def test_open_split_refuses_edited_lmdb_metadata(tmp_path, edit, match):
    write_split(tmp_path, "train", _records(3)).close()
    _put_meta(tmp_path / "train.lmdb", edit)
    with pytest.raises(ImgnetError, match=match) as e:
        open_split(tmp_path, "train")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("content", ["deep", "dev-zero", "huge", "fifo", "bad hierarchy"])
def test_labels_json_is_read_with_bounds(tmp_path, content):
    write_split(tmp_path, "train", _records(2))
    lj = tmp_path / "labels.json"
    good = json.loads(lj.read_text())
    lj.unlink()
    if content == "deep":
        lj.write_text('{"order": "sorted", "classes": ' + "[" * 200_000 + "]" * 200_000 + "}")
    elif content == "dev-zero":
        lj.symlink_to("/dev/zero")
    elif content == "huge":
        with open(lj, "wb") as f:
            f.truncate(65 << 20)  # sparse: costs no disk
    elif content == "fifo":
        os.mkfifo(lj)  # a reader that waited for a writer would hang here
    else:
        lj.write_text(json.dumps({**good, "hierarchy": {"c0": "n00001740"}}))
    with pytest.raises(ImgnetError, match="labels.json") as e:
        open_split(tmp_path, "train")
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------- names
ODD_NAMES = ["line\nbreak.JPEG", os.fsdecode(b"caf\xe9-latin1.JPEG"), os.fsdecode(b"\xff\xfe.JPEG"), "tab\there.JPEG",
             "\U0001f600 emoji.JPEG", " lead and trail ", "back\\slash?*.JPEG", "", "sub/dir/x.JPEG", "\r\n"]


@pytest.mark.parametrize("fmt", ["lmdb", "hdf5"])
def test_odd_names_round_trip_byte_exact(tmp_path, fmt):
    recs = [(img, 0, name) for (img, _, _), name in zip(_records(len(ODD_NAMES)), ODD_NAMES)]
    split = write_split(tmp_path, "train", recs, format=fmt)
    split.close()
    split = open_split(tmp_path, "train")
    assert split.names == ODD_NAMES  # in order: a newline shifts nothing
    assert [os.fsencode(n) for n in split.names] == [os.fsencode(n) for n in ODD_NAMES]
    assert split[2].name == ODD_NAMES[2]


@pytest.mark.parametrize("name, why", [("nul\0byte.JPEG", "NUL"), ("lone\ud800.JPEG", "surrogate U\\+D800"),
                                       ("\udcc3\udca9.JPEG", "another name"), ("x" * 5000, "4096")])
def test_unstorable_names_are_rejected_by_name(tmp_path, name, why):
    from imagenet_prep.store import LmdbWriter

    w = LmdbWriter(tmp_path / "w.lmdb", {"t": 1})
    img = encode_image(np.zeros((256, 256, 3), np.uint8))
    w.commit([(img, 0, "ok_0.JPEG"), (img, 1, name), (img, 0, "ok_1.JPEG")], consumed=3)
    assert w.written == 2
    (rej,) = w.rejected
    assert rej["name"] == name and "cannot be stored" in rej["reason"]
    assert __import__("re").search(why, rej["reason"])
    meta = w.finish({"split": "train"})
    assert meta["count"] == 2 and [n for _, _, n in w.read_all()] == ["ok_0.JPEG", "ok_1.JPEG"]
    w.close()
    with pytest.raises(ImgnetError, match="cannot be stored"):
        write_split(tmp_path / "d", "train", [(np.zeros((256, 256, 3), np.uint8), 0, name)])


# ----------------------------------------------------------------------------- format versions
V1 = Path(__file__).parent / "data" / "store_v1"


def _v1_image(k):
    yy, xx = np.mgrid[0:256, 0:256]
    return np.stack([(xx + 40 * k) % 256, yy, (xx + yy + 17 * k) // 2 % 256], -1).astype(np.uint8)


def test_data_written_by_format_version_1_stays_readable(tmp_path):
    data = tmp_path / "v1"
    shutil.copytree(V1, data)
    train, val = open_split(data, "train"), open_split(data, "val")
    assert train.meta["format_version"] == 1 and train.format == "lmdb" and val.format == "hdf5"
    assert train.names == ["n01440764_10026.JPEG", "café photo.JPEG", "x_3.JPEG"]
    assert train.labels.tolist() == [0, 1, 2]
    assert val.names == ["ILSVRC2012_val_00000001.JPEG", "漢字.JPEG"] and val.labels.tolist() == [2, 0]
    for split, ks in ((train, (0, 1, 2)), (val, (3, 4))):
        for i, k in enumerate(ks):
            assert np.abs(split[i].image.astype(int) - _v1_image(k)).mean() < 2  # jpeg q90 of the gradient


def test_unfinished_run_of_an_older_format_is_refused_with_the_fix(tmp_path):
    import lmdb

    from imagenet_prep.store import LmdbWriter

    w = LmdbWriter(tmp_path / "w.lmdb", {"t": 1})
    w.commit([(encode_image(np.zeros((256, 256, 3), np.uint8)), 0, "a.JPEG")], consumed=1)
    w.close()
    env = lmdb.open(str(tmp_path / "w.lmdb"))
    with env.begin(write=True) as txn:  # the progress record a version-1 run leaves
        txn.put(b"__progress__", json.dumps({"fingerprint": {"t": 1}, "consumed": 1, "written": 1,
                                             "rejected": [], "converted": []}).encode())
    env.close()
    with pytest.raises(ImgnetError, match="format version 1.*--force"):
        LmdbWriter(tmp_path / "w.lmdb", {"t": 1})


# ------------------------------------------------------------------------------- empty splits, disks
def test_empty_hdf5_split_works_and_warns(tmp_path, capsys):
    split = write_split(tmp_path, "val", [], format="hdf5", num_classes=2)
    assert len(split) == 0 and split.names == [] and split.format == "hdf5"
    assert "0 images" in capsys.readouterr().err
    assert len(open_split(tmp_path, "val")) == 0


def test_prep_of_a_split_that_ends_empty_in_hdf5_completes(tmp_path, capsys):
    from imagenet_prep.prep import PrepConfig, run_prep

    src = tmp_path / "src"
    for split in ("train", "val"):
        (src / split / "cat").mkdir(parents=True)
        (src / split / "cat" / "junk.jpg").write_bytes(b"not an image")
    out = tmp_path / "data"
    report = run_prep(PrepConfig(src=str(src), out=str(out), workers=1, format="hdf5"))
    assert report["splits"]["val"]["written"] == 0 and len(open_split(out, "val")) == 0
    err = capsys.readouterr().err
    assert "val ends with 0 images" in err and err.count("val ends with 0 images") == 1  # said once, with counts
    run_prep(PrepConfig(src=str(src), out=str(out), workers=1, format="hdf5"))  # the rerun: already complete


def test_a_stored_jpeg_record_decodes_as_jpeg_only():
    """A jpeg record holding another format (an edited or hostile DATA) is refused, never handed to another
    decoder (EPS goes to Ghostscript)."""
    from PIL import Image, UnidentifiedImageError

    img = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    assert decode_image(encode_image(img, "jpeg"), "jpeg").shape == (256, 256, 3)
    png = io.BytesIO()
    Image.fromarray(img).save(png, format="PNG")
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 256 256\nshowpage\n"
    for buf in (png.getvalue(), eps):
        with pytest.raises(UnidentifiedImageError):
            decode_image(buf, "jpeg")


def _staged(tmp_path, n):
    from imagenet_prep.store import LmdbWriter

    w = LmdbWriter(tmp_path / "staged.lmdb", {"t": 1}, n)
    w.commit([(encode_image(img), lbl, name) for img, lbl, name in _records(n)], consumed=n)
    return w, w.finish({"split": "train", "encoding": "raw"})


@pytest.fixture
def small_tmpfs(tmp_path):
    import subprocess

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root, or no mount permission)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_during_hdf5_conversion_is_one_line_and_leaves_no_temp(tmp_path, small_tmpfs):
    import subprocess

    from imagenet_prep.store import lmdb_to_hdf5

    w, meta = _staged(tmp_path, 20)  # about 3.9 MB: more than the 2 MB tmpfs holds
    with pytest.raises(ImgnetError, match="No space left") as e:
        lmdb_to_hdf5(w, small_tmpfs / "train.h5", meta)
    assert "\n" not in str(e.value) and "staged split" in str(e.value)
    assert list(small_tmpfs.iterdir()) == []
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    w2, meta = _staged(tmp_path / "b", 1)
    with pytest.raises(ImgnetError, match="Read-only file system"):
        lmdb_to_hdf5(w2, small_tmpfs / "train.h5", meta)


def test_failed_hdf5_write_leaves_no_temp_without_a_mount(tmp_path):
    """The same guarantee where no tmpfs can be mounted: a file size limit makes the write fail (EFBIG)."""
    import subprocess
    import sys

    code = f"""
import resource, signal, sys
from pathlib import Path
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_store import _staged
from imagenet_prep import ImgnetError
from imagenet_prep.store import lmdb_to_hdf5
w, meta = _staged(Path(sys.argv[1]), 12)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
try:
    lmdb_to_hdf5(w, Path(sys.argv[1]) / "train.h5", meta)
except ImgnetError as e:
    print("ERROR", e)
"""
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.stdout.startswith("ERROR cannot write") and "File too large" in r.stdout, r.stdout + r.stderr
    assert not (tmp_path / "train.h5.tmp").exists() and not (tmp_path / "train.h5").exists()


# ----------------------------------------------------------------------------------- readahead
def test_readahead_is_on_for_scans_only_and_survives_pickling(tmp_path):
    import pickle

    write_split(tmp_path, "train", _records(2))
    train = open_split(tmp_path, "train")
    assert not train.readahead and not train._open().flags()["readahead"]  # training: random access
    train.close()
    scan = open_split(tmp_path, "train", readahead=True)
    assert scan._open().flags()["readahead"]
    assert pickle.loads(pickle.dumps(scan)).readahead
    scan.close()


def test_the_hdf5_conversion_reads_the_staged_split_with_readahead(tmp_path, monkeypatch):
    """The conversion is one pass in storage order: the staged LMDB is read with readahead on."""
    import lmdb

    flags = []
    real_open = lmdb.open
    monkeypatch.setattr(lmdb, "open", lambda path, **kw: flags.append((Path(path).name, kw.get("readahead")))
                        or real_open(path, **kw))
    split = write_split(tmp_path, "train", _records(3), format="hdf5")
    assert split.format == "hdf5" and len(split) == 3
    staged = [r for name, r in flags if name != "train.h5"]
    assert staged[0] is False and staged[-1] is True, flags  # written without readahead, scanned with it


def test_a_split_path_that_is_not_a_folder_is_named_never_taken_for_no_split(tmp_path):
    """val.lmdb as a plain file (a botched copy): open_split, verify and a writer name it; it is not silently
    skipped as if DATA had no val split."""
    from imagenet_prep.verify import verify_data

    write_split(tmp_path, "train", _records(2))
    (tmp_path / "val.lmdb").write_bytes(b"not a folder")
    with pytest.raises(ImgnetError, match=r"val\.lmdb is not a folder.*--force"):
        open_split(tmp_path, "val")
    r = verify_data(tmp_path, progress=False)
    assert not r["ok"] and "is not a folder" in r["splits"]["val"]["error"] and r["splits"]["train"]["bad"] == []
    from imagenet_prep.store import LmdbWriter

    with pytest.raises(ImgnetError, match="is not a folder"):
        LmdbWriter(tmp_path / "val.lmdb", {"t": 1})

"""Prep's checks at its edges: grey-padded JPEGs, swapped splits, many rejections, the lock and in-use files,
the label map's word about classes without images, the Pillow build note."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from imagenet_prep import ImgnetError, open_split
from imagenet_prep.prep import PrepConfig, run_prep
from imagenet_prep.resize import BadImage, prepare
from imagenet_prep.synthetic import class_image


def _photo(seed: int, w: int = 320, h: int = 240) -> np.ndarray:
    return class_image(np.random.default_rng(seed), seed % 3, 3, (w, h))


def _jpeg(img: np.ndarray, mode: str = "RGB", **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).convert(mode).save(buf, format="JPEG", **save)
    return buf.getvalue()


def _cut_with_eoi(data: bytes, keep: float) -> bytes:
    """A JPEG cut short with an end-of-image marker appended: libjpeg pads the rest with grey and only warns."""
    return data[:int(len(data) * keep)] + b"\xff\xd9"


def _claiming(data: bytes, side: int) -> bytes:
    """The JPEG with its frame header rewritten to claim side x side pixels (its data stays that of a small one)."""
    d = bytearray(data)
    at = d.find(b"\xff\xc0") if b"\xff\xc0" in d else d.find(b"\xff\xc2")
    d[at + 5:at + 9] = side.to_bytes(2, "big") * 2
    return bytes(d)


# ------------------------------------------------------------------------------ A: grey padding
@pytest.mark.parametrize("save", [{}, {"optimize": True}, {"progressive": True}, {"subsampling": 0}],
                         ids=["baseline", "optimized", "progressive", "444"])
@pytest.mark.parametrize("keep", [0.5, 0.97])
def test_a_jpeg_cut_short_with_an_end_marker_is_rejected(save, keep):
    data = _jpeg(_photo(1, 500, 400), **save)
    assert prepare(data).image.shape == (256, 256, 3)  # whole: fine
    cut = _cut_with_eoi(data, keep)
    im = Image.open(io.BytesIO(cut))
    im.load()  # what a plain decoder does with it: no error at all
    with pytest.raises(BadImage, match="truncated JPEG"):
        prepare(cut)


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_a_cut_greyscale_or_cmyk_jpeg_is_rejected(mode):
    data = _jpeg(_photo(2, 400, 300), mode)
    prepare(data)
    with pytest.raises(BadImage, match="truncated JPEG"):
        prepare(_cut_with_eoi(data, 0.6))


@pytest.mark.parametrize("save", [{}, {"optimize": True}, {"progressive": True}])
def test_a_whole_jpeg_ending_in_mid_grey_is_kept(save):
    """The padding's grey in a whole image (a grey picture, a grey lower border) is not a cut."""
    img = _photo(3, 400, 300)
    img[200:] = 128
    for data in (_jpeg(img, **save), _jpeg(np.full((300, 300, 3), 128, np.uint8), **save),
                 _jpeg(img, **save) + b"trailing bytes after the end marker"):
        assert prepare(data).image.shape == (256, 256, 3)


@pytest.mark.parametrize("save", [{}, {"progressive": True}])
def test_a_header_claiming_more_pixels_than_the_file_holds_is_rejected(save):
    data = _claiming(_jpeg(_photo(4, 400, 300), **save), 30000)
    with pytest.raises(BadImage, match=r"claims 30000x30000 pixels .* more than its \d+ bytes can hold"):
        prepare(data)


def test_a_grey_padded_files_are_rejected_and_reported_by_prep(tmp_path):
    src = tmp_path / "src" / "train" / "n01440764"
    src.mkdir(parents=True)
    whole = [_jpeg(_photo(i, 400, 300)) for i in range(3)]
    for i, data in enumerate(whole):
        (src / f"n01440764_{i}.JPEG").write_bytes(data)
    (src / "n01440764_7.JPEG").write_bytes(_cut_with_eoi(whole[0], 0.5))
    (src / "n01440764_8.JPEG").write_bytes(_claiming(whole[1], 30000))
    (src / "n01440764_9.JPEG").write_bytes(whole[2][:len(whole[2]) // 2])  # plainly truncated, as before
    out = tmp_path / "data"
    report = run_prep(PrepConfig(src=str(tmp_path / "src"), out=str(out), workers=1, split="train"))
    r = report["splits"]["train"]
    assert r["written"] == 3
    reasons = {x["name"].rsplit("/", 1)[1]: x["reason"] for x in r["rejected"]}
    assert set(reasons) == {"n01440764_7.JPEG", "n01440764_8.JPEG", "n01440764_9.JPEG"}
    assert "truncated JPEG" in reasons["n01440764_7.JPEG"] and "30000x30000" in reasons["n01440764_8.JPEG"]
    split = open_split(out, "train")
    assert all((split[i].image == 128).all(axis=2).mean() < 0.05 for i in range(len(split)))


# ------------------------------------------------------------------------------ B: swapped splits
def _folder_src(root, per_class=(3, 2), wnids=("n01440764", "n01443537")):
    """An ImageFolder source: train/<wnid>/ and val/<wnid>/ with per_class images each."""
    for split, n in zip(("train", "val"), per_class):
        for c, wnid in enumerate(wnids):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(n):
                (folder / f"{wnid}_{split}{i}.JPEG").write_bytes(_jpeg(_photo(10 * c + i + (50 if split == "val" else 0))))
    return root


@pytest.mark.parametrize("fmt", ["lmdb", "hdf5"])
def test_b_swapped_split_files_are_refused_by_the_reader_and_verify(tmp_path, fmt):
    from imagenet_prep.store import formats
    from imagenet_prep.verify import verify_data

    out = tmp_path / "data"
    run_prep(PrepConfig(src=str(_folder_src(tmp_path / "src")), out=str(out), workers=1, format=fmt))
    assert verify_data(out, progress=False)["ok"]
    f = formats.get(fmt)
    train, val, tmp = f.path(out, "train"), f.path(out, "val"), out / "swap"
    train.rename(tmp)
    val.rename(train)
    tmp.rename(val)
    with pytest.raises(ImgnetError) as e:
        open_split(out, "val")
    msg = str(e.value)
    assert "\n" not in msg and str(val) in msg and "holds the train split, not val" in msg
    result = verify_data(out, progress=False)
    assert not result["ok"]
    assert "holds the val split, not train" in result["splits"]["train"]["error"]
    assert "holds the train split, not val" in result["splits"]["val"]["error"]


# ------------------------------------------------------------------------------ C: rejections in linear time
def _entry(i):
    return {"name": f"bad_{i}.JPEG", "reason": "empty file (0 bytes)", "index": i}


def test_c_rejections_go_to_an_append_only_log_not_the_progress_record(tmp_path):
    from imagenet_prep.store import LmdbWriter
    from imagenet_prep.store.lmdb import PROGRESS
    from imagenet_prep.store.writer import ENTRIES

    w = LmdbWriter(tmp_path / "w.lmdb", {"t": 1}, 4000)
    for k in range(10):  # 10 commits of 300 rejections: each commit writes only its own
        w.commit([], consumed=300 * (k + 1), rejected=[_entry(i) for i in range(300 * k, 300 * (k + 1))],
                 converted=[{"name": f"c{k}", "from_format": "PNG", "from_mode": "L", "index": 300 * k}])
        with w.env.begin() as txn:
            assert len(txn.get(PROGRESS)) < 1000  # the progress record stays small: no rewrite of all entries
    assert w.rejected == [_entry(i) for i in range(3000)] and len(w.converted) == 10
    w.close()
    w = LmdbWriter(tmp_path / "w.lmdb", {"t": 1}, 4000)  # resumed: the entries read back
    assert w.rejected == [_entry(i) for i in range(3000)] and [c["name"] for c in w.converted] == [
        f"c{k}" for k in range(10)]
    w.finish({"split": "train"})
    assert not (tmp_path / "w.lmdb" / ENTRIES).exists()  # finished: the report holds them
    w.close()


def test_c_entries_written_after_the_last_commit_are_cut_on_resume(tmp_path):
    """A kill between the log's write and the commit that counts it: the rerun holds exactly the committed."""
    from imagenet_prep.store import LmdbWriter
    from imagenet_prep.store.writer import ENTRIES

    w = LmdbWriter(tmp_path / "w.lmdb", {"t": 1}, 100)
    w.commit([], consumed=2, rejected=[_entry(0), _entry(1)])
    w.close()
    with open(tmp_path / "w.lmdb" / ENTRIES, "ab") as f:  # what the killed commit had appended
        f.write(json.dumps(["rejected", _entry(2)]).encode() + b"\n" + b'["rejected", {"na')
    w = LmdbWriter(tmp_path / "w.lmdb", {"t": 1}, 100)
    assert w.consumed == 2 and w.rejected == [_entry(0), _entry(1)]
    w.commit([], consumed=4, rejected=[_entry(2), _entry(3)])  # the rerun redoes items 2 and 3
    w.close()
    w = LmdbWriter(tmp_path / "w.lmdb", {"t": 1}, 100)
    assert w.rejected == [_entry(i) for i in range(4)]
    w.close()
    (tmp_path / "w.lmdb" / ENTRIES).write_bytes(b"")  # shorter than committed: damaged, one line
    with pytest.raises(ImgnetError, match="less than the .* committed"):
        LmdbWriter(tmp_path / "w.lmdb", {"t": 1}, 100)


def test_c_a_run_started_with_entries_in_the_progress_record_keeps_them(tmp_path):
    """An unfinished split of an earlier version (its lists inside the progress record) resumes with them."""
    from imagenet_prep.store import LmdbWriter
    from imagenet_prep.store.lmdb import PROGRESS

    w = LmdbWriter(tmp_path / "w.lmdb", {"t": 1}, 100)
    old = dict(w.progress, consumed=2, rejected=[_entry(0)], converted=[{"name": "c", "index": 1}])
    del old["entries_bytes"]
    with w.env.begin(write=True) as txn:
        txn.put(PROGRESS, json.dumps(old).encode())
    w.close()
    w = LmdbWriter(tmp_path / "w.lmdb", {"t": 1}, 100)
    w.commit([], consumed=3, rejected=[_entry(2)])
    w.close()
    w = LmdbWriter(tmp_path / "w.lmdb", {"t": 1}, 100)
    assert w.rejected == [_entry(0), _entry(2)] and w.converted == [{"name": "c", "index": 1}]
    assert w.progress["rejected"] == [] and w.progress["converted"] == []
    w.close()


@pytest.mark.parametrize("fmt", ["lmdb", "hdf5"])
def test_c_kill_9_then_rerun_reports_every_rejection_once(tmp_path, fmt):
    import sys
    from pathlib import Path

    import layouts
    from imagenet_prep.store.writer import ENTRIES

    folder = tmp_path / "src" / "train" / "n01440764"
    folder.mkdir(parents=True)
    good = _jpeg(_photo(1, 96, 80))
    for i in range(600):
        (folder / f"n01440764_{i:04d}.JPEG").write_bytes(good if i % 50 == 0 else b"" if i % 2 else b"junk")
    clean, out = tmp_path / "clean", tmp_path / "killed"
    want = run_prep(PrepConfig(src=str(tmp_path / "src"), out=str(clean), workers=1, format=fmt))
    cli = Path(__file__).resolve().parents[1] / "cli.py"
    work = out / ("train.lmdb" if fmt == "lmdb" else ".train.h5.staging.lmdb")
    layouts.kill_when_written([sys.executable, str(cli), "prep", "--src", str(tmp_path / "src"), "--out", str(out),
                               "--workers", "1", "--format", fmt], work / ENTRIES, 3000, commit_every=8)
    with pytest.raises(ImgnetError):
        open_split(out, "train")  # killed while packing
    got = run_prep(PrepConfig(src=str(tmp_path / "src"), out=str(out), workers=1, format=fmt))
    for key in ("found", "written", "rejected", "converted"):
        assert got["splits"]["train"][key] == want["splits"]["train"][key], key
    assert len(got["splits"]["train"]["rejected"]) == 588
    assert layouts.content(out, "train") == layouts.content(clean, "train")

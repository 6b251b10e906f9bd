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
                seed = 10 * c + i + (50 if split == "val" else 0)
                (folder / f"{wnid}_{split}{i}.JPEG").write_bytes(_jpeg(_photo(seed)))
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
    with pytest.raises(ImgnetError, match="holds the val split, not train"):  # a rerun of prep says the same
        run_prep(PrepConfig(src=str(tmp_path / "src"), out=str(out), workers=1, format=fmt))


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


# ------------------------------------------------------------------------------ D: prep's rough edges
def _flat_val_src(root, wnids=("n01440764", "n02102040", "n02979186"), per_class=2):
    """train/<wnid>/ of a few classes and a flat val/ of their official val images (labelled by the ground truth)."""
    from imagenet_prep.labels import load_val_ground_truth

    for k, wnid in enumerate(wnids):
        folder = root / "train" / wnid
        folder.mkdir(parents=True)
        for j in range(per_class):
            (folder / f"{wnid}_{j}.JPEG").write_bytes(_jpeg(_photo(k + 3 * j, 96, 80)))
    (root / "val").mkdir()
    numbers = [n for n, w in enumerate(load_val_ground_truth(), start=1) if w in wnids][:2 * len(wnids)]
    for n in numbers:
        (root / "val" / f"ILSVRC2012_val_{n:08d}.JPEG").write_bytes(_jpeg(_photo(n, 96, 80)))
    return root


@pytest.mark.parametrize("classes", [None, 3])
def test_d_a_label_map_with_classes_without_train_images_is_said_in_one_line_and_reported(tmp_path, capsys, classes):
    src = _flat_val_src(tmp_path / "src")
    report = run_prep(PrepConfig(src=str(src), out=str(tmp_path / "data"), workers=1, classes=classes))
    n, held = (1000, 3) if classes is None else (3, 1)  # --classes 3: the first 3 wnids; train holds only n01440764
    note = report["label_map"]
    assert {k: note[k] for k in ("classes", "with_train_images", "source_classes")} == {
        "classes": n, "with_train_images": held, "source_classes": 1000}
    assert json.loads((tmp_path / "data" / "prep-report.json").read_text())["label_map"] == note
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("note: labels.json")]
    assert len(lines) == 1 and f"holds {n} classes" in lines[0] and f"{n - held} of them without train images" in lines[0]
    assert ("--classes 3: the first 3 of the source's 1000" in lines[0]) == (classes == 3)
    assert "ground_truth" in lines[0]  # where the classes come from: the labels of the flat val
    assert len({int(x) for x in open_split(tmp_path / "data", "train").labels}) == held


def test_d_a_label_map_whose_classes_all_have_train_images_adds_nothing(tmp_path, capsys):
    report = run_prep(PrepConfig(src=str(_folder_src(tmp_path / "src")), out=str(tmp_path / "data"), workers=1))
    assert "label_map" not in report and "note: labels.json" not in capsys.readouterr().err


def test_d_the_lock_file_goes_when_prep_ends_and_a_failed_first_run_leaves_no_empty_folder(tmp_path):
    from imagenet_prep.inuse import PREP_LOCK

    out = tmp_path / "data"
    run_prep(PrepConfig(src=str(_folder_src(tmp_path / "src")), out=str(out), workers=1))
    assert not (out / PREP_LOCK).exists()
    run_prep(PrepConfig(src=str(tmp_path / "src"), out=str(out), workers=1))  # the rerun: nothing to do
    assert not (out / PREP_LOCK).exists()
    (tmp_path / "empty").mkdir()
    new = tmp_path / "new" / "data"
    with pytest.raises(ImgnetError):
        run_prep(PrepConfig(src=str(tmp_path / "empty"), out=str(new), workers=1))  # no layout in an empty SRC
    assert not new.exists()
    given = tmp_path / "given"
    given.mkdir()
    with pytest.raises(ImgnetError):
        run_prep(PrepConfig(src=str(tmp_path / "empty"), out=str(given), workers=1))
    assert given.is_dir() and list(given.iterdir()) == []  # the user's folder stays, without the lock


def test_d_rerunning_a_finished_prep_says_it_is_complete_once_without_old_figures(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    src, out = _folder_src(tmp_path / "src"), tmp_path / "data"
    cmd = [sys.executable, str(Path(__file__).resolve().parents[1] / "cli.py"), "prep", "--src", str(src),
           "--out", str(out), "--workers", "1"]
    first = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "train: 6 written" in first.stdout and "images/s" in first.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "images/s" not in again.stdout + again.stderr and "written" not in again.stdout
    said = [x for x in again.stderr.splitlines() if "already complete" in x]
    assert said == [f"train and val: already complete in {out} (6 and 4 images); --force redoes them"]


_HOLDER = ("import sys, time; from imagenet_prep.inuse import hold_data\n"
           "with hold_data(sys.argv[1]):\n    print('held', flush=True); sys.stdin.readline()\n")


def test_d_prep_force_refuses_while_a_run_holds_data_and_proceeds_once_released(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from imagenet_prep.inuse import IN_USE, claim_data, data_in_use, hold_data

    src, out = _folder_src(tmp_path / "src"), tmp_path / "data"
    run_prep(PrepConfig(src=str(src), out=str(out), workers=1))
    assert not data_in_use(out)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert data_in_use(out)
        before = open_split(out, "train").meta["encoding"]
        with pytest.raises(ImgnetError) as e:
            run_prep(PrepConfig(src=str(src), out=str(out), workers=1, encoding="jpeg", force=True))
        assert "\n" not in str(e.value) and "in use by a running `imgnet train` or `imgnet test`" in str(e.value)
        assert open_split(out, "train").meta["encoding"] == before  # nothing deleted
        run_prep(PrepConfig(src=str(src), out=str(out), workers=1))  # without --force: nothing is redone, allowed
        with hold_data(out):  # a second run reads the same DATA alongside
            assert data_in_use(out)
    finally:
        holder.communicate("\n")
    assert not data_in_use(out) and not (out / IN_USE).exists()  # the last holder removed the file
    run_prep(PrepConfig(src=str(src), out=str(out), workers=1, encoding="jpeg", force=True))
    assert open_split(out, "train").meta["encoding"] == "jpeg" and not (out / IN_USE).exists()
    with claim_data(out):  # while prep --force rewrites DATA, a run is refused in one line
        with pytest.raises(ImgnetError, match="`imgnet prep --force` is rewriting"):
            with hold_data(out):
                pass


# ------------------------------------------------------------------------------ E: stock Pillow
def test_e_stock_pillow_is_said_once_in_one_line(monkeypatch, capsys):
    from imagenet_prep import resize

    monkeypatch.setattr(resize, "pillow_flavour", lambda: "pillow")
    resize.note_stock_pillow.cache_clear()
    try:
        line = resize.note_stock_pillow()
        assert resize.note_stock_pillow() == line  # asked again: not said again
        err = capsys.readouterr().err
        assert err == line + "\n" and "pillow-simd" in line and "about 2x" in line
        monkeypatch.setattr(resize, "pillow_flavour", lambda: "pillow-simd")
        resize.note_stock_pillow.cache_clear()
        assert resize.note_stock_pillow() is None and capsys.readouterr().err == ""
    finally:
        resize.note_stock_pillow.cache_clear()

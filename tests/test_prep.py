"""`imgnet prep` end to end on small real and generated sources: content, bad input, resume, disk."""

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import layouts

from imagenet_prep import ImgnetError, open_split
from imagenet_prep.prep import PrepConfig, run_prep
from imagenet_prep.resize import reference_resize

ROOT = Path(__file__).resolve().parents[1]


def _jpeg(img: np.ndarray, mode="RGB", fmt="JPEG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).convert(mode).save(buf, format=fmt)
    return buf.getvalue()


def _photo(seed, w=320, h=240) -> np.ndarray:
    from imagenet_prep.synthetic import class_image

    return class_image(np.random.default_rng(seed), seed % 3, 3, (w, h))


@pytest.fixture
def messy_src(tmp_path):
    """Extracted layout with the real-world quirks: junk, truncation, PNG/CMYK/16-bit under .JPEG."""
    src = tmp_path / "src"
    a, b = src / "train" / "n01440764", src / "train" / "n01443537"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    for i in range(4):
        (a / f"n01440764_{i}.JPEG").write_bytes(_jpeg(_photo(i)))
        (b / f"n01443537_{i}.JPEG").write_bytes(_jpeg(_photo(10 + i, 200, 300)))
    (a / "n01440764_90.JPEG").write_bytes(b"")                                  # zero bytes
    (a / "n01440764_91.JPEG").write_bytes(_jpeg(_photo(5))[:600])               # truncated
    (a / "n01440764_92.JPEG").write_bytes(b"<html>not an image</html>")         # not an image
    (b / "n01443537_93.JPEG").write_bytes(_jpeg(_photo(6), fmt="PNG"))          # PNG named .JPEG
    (b / "n01443537_94.JPEG").write_bytes(_jpeg(_photo(7), mode="CMYK"))        # CMYK JPEG
    (b / "n01443537_95.JPEG").write_bytes(_jpeg(_photo(8), mode="L"))           # greyscale
    deep = (np.arange(300 * 260, dtype=np.uint32).reshape(260, 300) * 3 % 65535).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(deep).save(buf, format="PNG")                              # 16-bit greyscale
    (b / "n01443537_96.JPEG").write_bytes(buf.getvalue())
    (a / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    return src


def _content(data_dir, split="train"):
    s = open_split(data_dir, split)
    content = [(s.read_bytes(i), int(s.labels[i]), s.names[i]) for i in range(len(s))]
    s.close()
    return content


def test_messy_source_skips_and_converts(messy_src, tmp_path):
    out = tmp_path / "data"
    report = run_prep(PrepConfig(src=str(messy_src), out=str(out), workers=2))
    r = report["splits"]["train"]
    assert r["written"] == 8 + 4
    rejected = {x["name"]: x["reason"] for x in r["rejected"]}
    # skipped at listing and rejected at decode: both named by their path relative to --src
    assert set(rejected) == {f"train/n01440764/{n}" for n in (".DS_Store", "n01440764_90.JPEG", "n01440764_91.JPEG",
                                                              "n01440764_92.JPEG")}
    assert all(reason for reason in rejected.values())
    converted = {x["name"]: x["from_mode"] for x in r["converted"]}
    assert converted["train/n01443537/n01443537_94.JPEG"] == "CMYK"
    assert converted["train/n01443537/n01443537_95.JPEG"] == "L"
    assert converted["train/n01443537/n01443537_96.JPEG"].startswith("I")
    assert json.loads((out / "prep-report.json").read_text())["splits"]["train"]["written"] == 12
    split = open_split(out, "train")
    assert split.names == sorted(split.names, key=lambda n: (n.split("_")[0], n))  # (class, name) order
    assert list(split.labels) == [0] * 4 + [1] * 8
    # stored pixels follow the reference resize policy
    for i, name in enumerate(split.names):
        src = next(messy_src.rglob(name)).read_bytes()
        ref = reference_resize(src)
        assert np.abs(split[i].image.astype(int) - ref).mean() < 2, name


def test_tar_layout_with_real_images_and_devkit(ilsvrc, tmp_path):
    """Layout 1 built from the fixtures (generated and real): per-class tars inside the train tar, flat val tar, devkit tar.gz."""
    src = tmp_path / "ILSVRC2012"
    src.mkdir()
    train_root = ilsvrc / "images" / "imagenette2_224_subset" / "train"
    classes = sorted(p.name for p in train_root.iterdir())[:3]
    with tarfile.open(src / "ILSVRC2012_img_train.tar", "w") as outer:
        for wnid in classes:
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as inner:
                for f in sorted((train_root / wnid).glob(f"{wnid}_*.JPEG")):
                    inner.add(f, arcname=f.name)
            info = tarfile.TarInfo(f"{wnid}.tar")
            info.size = buf.tell()
            buf.seek(0)
            outer.addfile(info, buf)
    val_files = sorted((ilsvrc / "images" / "val_original").glob("*.JPEG"))[:30]
    with tarfile.open(src / "ILSVRC2012_img_val.tar", "w") as tar:
        for f in val_files:
            tar.add(f, arcname=f.name)
    with tarfile.open(src / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
        tar.add(ilsvrc / "devkit_t12", arcname="ILSVRC2012_devkit_t12")
    out = tmp_path / "data"
    report = run_prep(PrepConfig(src=str(src), out=str(out), workers=2))
    assert report["layout"] and report["splits"]["val"]["written"] == 30
    val = open_split(out, "val")
    caffe = dict(line.split() for line in (ilsvrc / "caffe_ilsvrc12" / "val.txt").read_text().splitlines())
    assert val.names == [f.name for f in val_files]
    assert [int(caffe[n]) for n in val.names] == val.labels.tolist()
    for i in (0, 6, 29):
        ref = reference_resize(val_files[i].read_bytes())
        assert np.abs(val[i].image.astype(int) - ref).mean() < 2
    train = open_split(out, "train")
    labels = json.loads((out / "labels.json").read_text())
    wnid_of = {c["index"]: c["wnid"] for c in labels["classes"]}
    assert all(name.startswith(wnid_of[int(lbl)]) for name, lbl in zip(train.names, train.labels))
    assert {wnid_of[int(lbl)] for lbl in train.labels} == set(classes)


def test_rerun_does_not_redo_and_force_does(messy_src, tmp_path, capsys):
    out = tmp_path / "data"
    run_prep(PrepConfig(src=str(messy_src), out=str(out), workers=1))
    mtime = (out / "train.lmdb" / "data.mdb").stat().st_mtime_ns
    run_prep(PrepConfig(src=str(messy_src), out=str(out), workers=1))
    assert "already complete" in capsys.readouterr().err
    assert (out / "train.lmdb" / "data.mdb").stat().st_mtime_ns == mtime
    with pytest.raises(ImgnetError, match="--force"):
        run_prep(PrepConfig(src=str(messy_src), out=str(out), workers=1, encoding="jpeg"))
    run_prep(PrepConfig(src=str(messy_src), out=str(out), workers=1, encoding="jpeg", force=True))
    assert open_split(out, "train").meta["encoding"] == "jpeg"


@pytest.mark.parametrize("fmt", ["lmdb", "hdf5"])
def test_subset_options_and_formats_give_same_pixels(messy_src, tmp_path, fmt):
    out = tmp_path / fmt
    run_prep(PrepConfig(src=str(messy_src), out=str(out), workers=1, format=fmt, classes=1, per_class=2))
    split = open_split(out, "train")
    assert split.format == fmt and split.names == ["n01440764_0.JPEG", "n01440764_1.JPEG"]
    assert len(json.loads((out / "labels.json").read_text())["classes"]) == 1


def _big_source(root: Path, n: int) -> Path:
    d = root / "train" / "n01440764"
    d.mkdir(parents=True)
    for i in range(n):
        (d / f"n01440764_{i:04d}.JPEG").write_bytes(_jpeg(_photo(i, 900, 700)))
    return root


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["lmdb", "hdf5"])
def test_kill_9_then_rerun_gives_identical_content(tmp_path, fmt):
    src = _big_source(tmp_path / "src", 120)
    clean = tmp_path / "clean"
    run_prep(PrepConfig(src=str(src), out=str(clean), workers=1, format=fmt))
    out = tmp_path / "killed"
    cmd = [sys.executable, str(ROOT / "cli.py"), "prep", "--src", str(src), "--out", str(out), "--workers", "2",
           "--format", fmt]
    work = out / ("train.lmdb" if fmt == "lmdb" else ".train.h5.staging.lmdb") / "data.mdb"
    layouts.kill_when_written(cmd, work, 20 * 196_608, commit_every=8)
    with pytest.raises(ImgnetError):
        open_split(out, "train")  # the killed run left an incomplete split, and the reader says so
    run_prep(PrepConfig(src=str(src), out=str(out), workers=2, format=fmt))
    assert _content(out) == _content(clean)


def _mount_tmpfs(path: Path, size: str, *opts: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join((f"size={size}", *opts)), "tmpfs", str(path)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")


def test_unwritable_output_folder_is_refused(messy_src, tmp_path):
    ro = tmp_path / "ro"
    _mount_tmpfs(ro, "1m", "ro")
    try:
        with pytest.raises(ImgnetError, match="not writable"):
            run_prep(PrepConfig(src=str(messy_src), out=str(ro / "data"), workers=1))
    finally:
        subprocess.run(["umount", "-l", str(ro)])


def test_too_little_disk_is_refused_before_starting(messy_src, tmp_path):
    small = tmp_path / "small"
    _mount_tmpfs(small, "1m")
    try:
        with pytest.raises(ImgnetError, match=r"need about .* GB, .* GB free"):
            run_prep(PrepConfig(src=str(messy_src), out=str(small / "data"), workers=1))
        assert not (small / "data" / "train.lmdb").exists()
    finally:
        subprocess.run(["umount", "-l", str(small)])


def test_disk_that_fills_anyway_is_an_error_and_resumable(tmp_path, monkeypatch):
    import imagenet_prep.pack.commits as commits
    import imagenet_prep.pack.run as prep

    src = _big_source(tmp_path / "src", 30)
    clean = tmp_path / "clean"
    run_prep(PrepConfig(src=str(src), out=str(clean), workers=1))
    small = tmp_path / "small"
    _mount_tmpfs(small, "3m")
    try:
        check_disk = prep._check_disk
        monkeypatch.setattr(prep, "_check_disk", lambda *a: None)  # the estimate would refuse: fill it for real
        monkeypatch.setattr(commits, "COMMIT_EVERY", 4)
        with pytest.raises(ImgnetError, match="disk full"):
            run_prep(PrepConfig(src=str(src), out=str(small / "data"), workers=1))
        # room for the rest of the split but not for all of it: the check counts what remains
        subprocess.run(["mount", "-o", "remount,size=7m", str(small)], check=True)
        monkeypatch.setattr(prep, "_check_disk", check_disk)
        run_prep(PrepConfig(src=str(src), out=str(small / "data"), workers=1))
        assert _content(small / "data") == _content(clean)
    finally:
        subprocess.run(["umount", "-l", str(small)])


def test_settings_changes_are_refused_with_what_differs(messy_src, tmp_path):
    out = tmp_path / "data"
    shutil.copytree(messy_src / "train", messy_src / "val")  # class folders: an ImageFolder val
    for f in (messy_src / "val").rglob("n*.JPEG"):  # other names than train's: an image in both is a leak
        f.rename(f.with_name("v" + f.name))
    run_prep(PrepConfig(src=str(messy_src), out=str(out), workers=1, encoding="jpeg", quality=50))
    with pytest.raises(ImgnetError, match=r"quality 50 \(this run: 90\)"):
        run_prep(PrepConfig(src=str(messy_src), out=str(out), workers=1, encoding="jpeg", quality=90))
    with pytest.raises(ImgnetError, match="would leave val"):  # --force with a new label map, train only
        run_prep(PrepConfig(src=str(messy_src), out=str(out), workers=1, split="train", classes=1, force=True))
    img = open_split(out, "train")[0].image
    img[0, 0, 0] = 1  # jpeg records decode to writable arrays, like raw ones


def test_unfinished_lmdb_run_does_not_hide_a_finished_hdf5_split(messy_src, tmp_path):
    out = tmp_path / "data"
    run_prep(PrepConfig(src=str(messy_src), out=str(out), workers=1, format="hdf5"))
    from imagenet_prep.store import LmdbWriter

    LmdbWriter(out / "train.lmdb", {"an": "unfinished run"}).close()
    assert open_split(out, "train").format == "hdf5"
    shutil.rmtree(out / "train.h5", ignore_errors=True)
    (out / "train.h5").unlink()
    with pytest.raises(ImgnetError, match="unfinished --format lmdb run of train"):
        run_prep(PrepConfig(src=str(messy_src), out=str(out), workers=1, format="hdf5"))


def test_a_second_prep_on_the_same_data_is_refused(messy_src, tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.lockf(f, fcntl.LOCK_EX); "
        "print('locked', flush=True); time.sleep(30)"), str(out / ".prep.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ImgnetError, match="another `imgnet prep` is writing"):
            run_prep(PrepConfig(src=str(messy_src), out=str(out), workers=1))
    finally:
        holder.kill()
        holder.wait()
    run_prep(PrepConfig(src=str(messy_src), out=str(out), workers=1))  # free again once the holder is gone


@pytest.mark.parametrize("kind", ["link to /dev/zero", "fifo", "folder", "dangling link"])
def test_a_lock_file_that_is_not_a_plain_file_is_a_one_line_error(messy_src, tmp_path, kind):
    """Never read /dev/zero to its end, never block on a FIFO, never write through a link."""
    out = tmp_path / "data"
    out.mkdir()
    lock = out / ".prep.lock"
    if kind == "link to /dev/zero":
        lock.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(lock)
    elif kind == "folder":
        lock.mkdir()
    else:
        lock.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ImgnetError, match=r"\.prep\.lock") as e:
        run_prep(PrepConfig(src=str(messy_src), out=str(out), workers=1))
    assert "\n" not in str(e.value) and "remove it" in str(e.value)
    assert not (tmp_path / "elsewhere").exists()
    lock.unlink() if kind != "folder" else lock.rmdir()
    run_prep(PrepConfig(src=str(messy_src), out=str(out), workers=1))  # a plain lock file again: it runs


@pytest.mark.parametrize("name", ["labels.json", "prep-report.json", "stats.json"])
def test_a_folder_where_an_output_file_goes_is_a_one_line_error(messy_src, tmp_path, name):
    """prep and pca-stats never write into, or traceback on, a folder that stands where their file goes;
    once it is removed the rerun completes."""
    from imagenet_prep.stats import compute_stats

    out = tmp_path / "data"
    run_prep(PrepConfig(src=str(messy_src), out=str(out), workers=1))
    if name == "stats.json":
        (out / name).mkdir()
        with pytest.raises(ImgnetError, match=rf"{name} is a folder; expected the file"):
            compute_stats(out, workers=1, progress=False)
        (out / name).rmdir()
        compute_stats(out, workers=1, progress=False)
        assert (out / name).is_file()
        return
    (out / name).unlink()
    (out / name).mkdir()
    with pytest.raises(ImgnetError, match=rf"{name}") as e:
        run_prep(PrepConfig(src=str(messy_src), out=str(out), workers=1, force=True))
    assert "\n" not in str(e.value)
    (out / name).rmdir()
    run_prep(PrepConfig(src=str(messy_src), out=str(out), workers=1))
    assert (out / name).is_file()

"""`imgnet prep --split v2`: an ImageNetV2 variant packed beside train and val, labelled through DATA's labels.json."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import layouts

from cli import main
from imagenet_prep import ImgnetError, open_split
from imagenet_prep.prep import REPORT, PrepConfig, run_prep
from imagenet_prep.resize import reference_resize

ROOT = Path(__file__).resolve().parents[1]
MATCHED, THRESHOLD = "imagenetv2-matched-frequency-format-val", "imagenetv2-threshold0.7-format-val"
KIT_FOX = "n02119789"  # ILSVRC2012_ID 1: index 0 in devkit order, so a `--classes 5 --label-order devkit` DATA keeps it


@pytest.fixture(scope="module")
def synsets(ilsvrc) -> list[str]:
    """Caffe's synsets.txt: the sorted wnids, an independent reference for V2's folder n -> wnid."""
    return (ilsvrc / "caffe_ilsvrc12" / "synsets.txt").read_text().split()


@pytest.fixture(scope="module")
def filled(synsets) -> tuple[int, ...]:
    # 2 and 10 (and 100): string order "10" < "100" < "2" differs from numeric order
    return (2, 10, 100, synsets.index(KIT_FOX))


def make_v2(root: Path, shared: Path, filled, per_folder=2, variant=MATCHED, first=1) -> Path:
    """A V2 tree: class folders 0..999 (most empty), fixture val images under opaque hex names in `filled`."""
    v = root / variant
    for n in range(1000):
        (v / str(n)).mkdir(parents=True)
    k = first
    for n in filled:
        for j in range(per_folder):
            shutil.copy(shared / "images" / "val_original" / f"ILSVRC2012_val_{k:08d}.JPEG",
                        v / str(n) / f"{(n * 7919 + j) * 2654435761:032x}.jpeg")
            k += 1
    return root


def make_data(tmp: Path, shared: Path, **opts) -> Path:
    """DATA holding a small val split and the 1000-class labels.json, from the official archives layout."""
    train, val = layouts.real_images(shared, per_class=1, n_val=3)
    src = layouts.official(tmp / "ilsvrc", train[:2], val, shared)
    run_prep(PrepConfig(src=str(src), out=str(tmp / "data"), split="val", workers=1, **opts))
    return tmp / "data"


def prep_cli(*args):
    return CliRunner().invoke(main, ["prep", *map(str, args)], catch_exceptions=False)


def expected(root: Path, synsets, labels_json) -> list[tuple[str, int]]:
    """(name, label) by hand: folders in numeric order, names sorted, folder n -> synsets[n] -> DATA index."""
    index = {c["wnid"]: c["index"] for c in labels_json["classes"]}
    out = []
    for n in sorted(int(p.name) for p in (root / MATCHED).iterdir()):
        for f in sorted((root / MATCHED / str(n)).iterdir()):
            if synsets[n] in index:
                out.append((f"{n}/{f.name}", index[synsets[n]]))
    return out


@pytest.mark.parametrize("order", ["sorted", "devkit"])
def test_v2_split_labelled_through_data_labels_end_to_end(tmp_path, ilsvrc, synsets, filled, order):
    data = make_data(tmp_path, ilsvrc, label_order=order)
    lj_path = data / "labels.json"
    lj_bytes, lj_mtime = lj_path.read_bytes(), lj_path.stat().st_mtime_ns
    val_report = json.loads((data / REPORT).read_text())["splits"]["val"]
    src = make_v2(tmp_path / "v2", ilsvrc, filled)
    r = prep_cli("--src", src, "--out", data, "--split", "v2", "--workers", 2)
    assert r.exit_code == 0, r.output
    assert "v2-matched-frequency: 8 written" in r.output

    lj = json.loads(lj_bytes)
    s = open_split(data, "v2-matched-frequency")
    try:
        want = expected(src, synsets, lj)
        assert [(s.names[i], int(s.labels[i])) for i in range(len(s))] == want
        assert [n.split("/")[0] for n in s.names] == ["2", "2", "10", "10", "100", "100"] + [str(filled[3])] * 2
        # the ImageFolder trap is not what we did: a string sort would put folder "10" first
        assert sorted(map(str, filled))[0] == "10" and s.names[0].startswith("2/")
        if order == "devkit":
            assert int(s.labels[-1]) == 0 and lj["classes"][0]["wnid"] == KIT_FOX
        assert s.meta["label_order"] == order and s.meta["layout"] == "imagenetv2"
        img = src / MATCHED / s.names[0]
        assert np.abs(s[0].image.astype(int) - reference_resize(img.read_bytes())).mean() < 2  # same image policy
    finally:
        s.close()
    assert lj_path.read_bytes() == lj_bytes and lj_path.stat().st_mtime_ns == lj_mtime  # never rewritten
    report = json.loads((data / REPORT).read_text())
    assert report["splits"]["val"] == val_report  # merged, not overwritten
    v2r = report["splits"]["v2-matched-frequency"]
    assert v2r["written"] == 8 and v2r["variant"] == MATCHED and v2r["outside"] == {"images": 0, "classes": 0}
    assert len(open_split(data, "val")) == 3  # val is still there, and still opens with the same labels.json


def test_classes_subset_skips_and_counts_the_rest(tmp_path, ilsvrc, synsets, filled, capsys):
    data = make_data(tmp_path, ilsvrc, label_order="devkit", classes=5)
    src = make_v2(tmp_path / "v2", ilsvrc, filled)
    capsys.readouterr()
    report = run_prep(PrepConfig(src=str(src), out=str(data), split="v2-matched-frequency", workers=1))
    err = capsys.readouterr().err
    assert "v2-matched-frequency: skipped 6 images of 3 classes outside DATA's 5 classes" in err
    r = report["splits"]["v2-matched-frequency"]
    assert r["written"] == 2 and r["outside"] == {"images": 6, "classes": 3}
    s = open_split(data, "v2-matched-frequency")
    assert s.labels.tolist() == [0, 0] and all(n.startswith(f"{synsets.index(KIT_FOX)}/") for n in s.names)
    s.close()
    with pytest.raises(ImgnetError, match="--classes 3 but .*labels.json holds 5 classes"):
        run_prep(PrepConfig(src=str(src), out=str(data), split="v2", workers=1, classes=3))


def test_rerun_is_a_no_op_and_force_redoes(tmp_path, ilsvrc, filled, capsys):
    data = make_data(tmp_path, ilsvrc)
    src = make_v2(tmp_path / "v2", ilsvrc, filled[:2], per_folder=1)
    cfg = PrepConfig(src=str(src), out=str(data), split="v2", workers=1)
    run_prep(cfg)
    mdb = data / "v2-matched-frequency.lmdb" / "data.mdb"
    before, mtime = layouts.content(data, "v2-matched-frequency"), mdb.stat().st_mtime_ns
    capsys.readouterr()
    run_prep(cfg)
    assert "v2-matched-frequency: already complete" in capsys.readouterr().err
    assert mdb.stat().st_mtime_ns == mtime
    with pytest.raises(ImgnetError, match="complete with other settings: encoding 'raw'.*--force"):
        run_prep(PrepConfig(src=str(src), out=str(data), split="v2", workers=1, encoding="jpeg"))
    run_prep(PrepConfig(src=str(src), out=str(data), split="v2", workers=1, force=True))
    assert mdb.stat().st_mtime_ns != mtime and layouts.content(data, "v2-matched-frequency") == before


def test_missing_labels_json_and_other_bad_input_are_one_line_errors(tmp_path, ilsvrc, filled):
    src = make_v2(tmp_path / "v2", ilsvrc, filled[:1], per_folder=1)
    out = tmp_path / "fresh"
    r = CliRunner().invoke(main, ["prep", "--src", str(src), "--out", str(out), "--split", "v2"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1
    assert "labels.json not found" in r.output and "imgnet prep --src ILSVRC2012 --out" in r.output
    assert not out.exists()  # the refusal creates nothing
    data = make_data(tmp_path, ilsvrc)
    labels = tmp_path / "val.txt"
    labels.write_text("x 1\n")
    r = CliRunner().invoke(main, ["prep", "--src", str(src), "--out", str(data), "--split", "v2",
                                  "--val-labels", str(labels)])
    assert r.exit_code == 2 and "--val-labels labels a flat ILSVRC2012 val" in r.output
    r = CliRunner().invoke(main, ["prep", "--src", str(src), "--out", str(data), "--split", "v2-top-images"])
    assert r.exit_code == 2 and "holds no ImageNetV2 variant (for v2-top-images" in r.output


def test_relabelled_data_refuses_to_leave_a_v2_split_stale(tmp_path, ilsvrc, filled):
    data = make_data(tmp_path, ilsvrc)
    run_prep(PrepConfig(src=str(make_v2(tmp_path / "v2", ilsvrc, filled[:1], per_folder=1)), out=str(data),
                        split="v2", workers=1))
    with pytest.raises(ImgnetError, match="would leave v2-matched-frequency in .* packed with the old one; "
                                          "remove v2-matched-frequency first"):
        run_prep(PrepConfig(src=str(tmp_path / "ilsvrc"), out=str(data), split="val", workers=1,
                            label_order="devkit", force=True))


def test_hdf5_split_verify_and_imgnet_test_find_it(tmp_path, ilsvrc, filled):
    data = make_data(tmp_path, ilsvrc)
    src = make_v2(tmp_path / "v2", ilsvrc, filled[:2], per_folder=2, variant=THRESHOLD)
    r = prep_cli("--src", src, "--out", data, "--split", "v2-threshold0.7", "--format", "hdf5", "--workers", 1)
    assert r.exit_code == 0, r.output
    assert (data / "v2-threshold0.7.h5").is_file() and not (data / ".v2-threshold0.7.h5.staging.lmdb").exists()
    r = CliRunner().invoke(main, ["verify", str(data)])
    assert r.exit_code == 0, r.output
    assert "v2-threshold0.7: 4 records checked (crc32), 0 damaged" in r.output and "val: 3 records" in r.output
    r = CliRunner().invoke(main, ["verify", str(data), "--split", "v2-threshold0.7"])
    assert r.exit_code == 0 and "val:" not in r.output

    ckpt = tiny_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt", json.loads((data / "labels.json").read_text()))
    r = CliRunner().invoke(main, ["test", "--data", str(data), "--ckpt", str(ckpt), "--split", "v2-threshold0.7",
                                  "--arch", "tiny_arch:make", "--device", "cpu", "--workers", "0"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.output.strip().splitlines()[-1])
    assert result["split"] == "v2-threshold0.7" and result["n"] == 4 and 0 <= result["top1_err"] <= 1


def tiny_checkpoint(path: Path, labels: dict) -> Path:
    """A checkpoint of the small user model in tests/tiny_arch.py for DATA's label map: enough to run `imgnet test`."""
    import torch

    import tiny_arch
    from trainer.checkpoint import save_checkpoint

    torch.manual_seed(0)
    stats = {"mean_rgb": [0.485, 0.456, 0.406], "std_rgb": [0.27, 0.26, 0.28],
             "cov": np.diag([0.073, 0.068, 0.078]).tolist(), "eigval": [0.2175, 0.0188, 0.0045],
             "eigvec": [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]],
             "n_pixels": 65536, "n_images": 1, "mean_image": torch.full((256, 256, 3), 118.0)}
    return save_checkpoint(path, {"format": "imgnet-checkpoint", "version": 2, "arch": "tiny_arch:make",
                                  "model": tiny_arch.make(len(labels["classes"])).state_dict(),
                                  "model_kwargs": {"num_classes": len(labels["classes"])}, "optimizer": {},
                                  "scheduler": {}, "epoch": 1, "config": {"mean": "rgb"}, "labels": labels,
                                  "stats": stats, "rng": [], "metrics": {}})


@pytest.mark.slow
def test_kill_9_midway_then_rerun_gives_identical_content(tmp_path, ilsvrc_once):
    data = make_data(tmp_path, ilsvrc_once)
    src = make_v2(tmp_path / "v2", ilsvrc_once, range(0, 900, 30), per_folder=3)  # 90 val images
    clean = tmp_path / "clean"
    shutil.copytree(data, clean)
    run_prep(PrepConfig(src=str(src), out=str(clean), split="v2", workers=1))
    cmd = [sys.executable, str(ROOT / "cli.py"), "prep", "--src", str(src), "--out", str(data), "--split", "v2",
           "--workers", "2"]
    layouts.kill_when_written(cmd, data / "v2-matched-frequency.lmdb" / "data.mdb", 12 * 196_608, commit_every=4)
    with pytest.raises(ImgnetError, match="incomplete"):
        open_split(data, "v2-matched-frequency")  # killed midway: the reader says so
    run_prep(PrepConfig(src=str(src), out=str(data), split="v2", workers=2))
    assert layouts.content(data, "v2-matched-frequency") == layouts.content(clean, "v2-matched-frequency")
    assert len(layouts.content(data, "v2-matched-frequency")) == 90

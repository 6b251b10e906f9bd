"""The four commands and predict, through the installed CLI, on the real fixture images."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imgnet(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "imgnet"
    cmd = [str(exe)] if exe.exists() else [sys.executable, str(ROOT / "cli.py")]
    r = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=600)
    if ok:
        assert r.returncode == 0, f"imgnet {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
    return r


@pytest.mark.slow
def test_prep_stats_train_test_predict_on_real_images(ilsvrc_once, tmp_path):
    # an ImageFolder tree of ILSVRC2012 images (generated or real) whose folder names are wnids
    src = tmp_path / "src"
    fixture = ilsvrc_once / "images" / "imagenette2_224_subset"
    for split in ("train", "val"):
        shutil.copytree(fixture / split, src / split)
    data, run = tmp_path / "data", tmp_path / "run"

    r = imgnet("prep", "--src", str(src), "--out", str(data), "--classes", "3", "--workers", "2")
    assert "train: 30 written" in r.stdout and "val: 15 written" in r.stdout
    labels = json.loads((data / "labels.json").read_text())
    assert [c["wnid"] for c in labels["classes"]] == ["n01440764", "n02102040", "n02979186"]
    assert labels["classes"][0]["words"].startswith("tench")

    imgnet("pca-stats", "--data", str(data), "--workers", "2")
    stats = json.loads((data / "stats.json").read_text())
    assert stats["n_images"] == 30 and stats["eigval"][0] > stats["eigval"][1] > stats["eigval"][2] > 0

    imgnet("train", "--data", str(data), "--out", str(run), "--epochs", "1", "--batch-size", "10",
           "--workers", "1", "--device", "cpu", "--bias-init", "caffe")
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and log[0]["epoch"] == 1 and 0 <= log[0]["val_top1_err"] <= 1
    assert (run / "checkpoints" / "best.pt").is_file() and (run / "curves.png").is_file()

    ckpt = run / "checkpoints" / "best.pt"
    r = imgnet("test", "--data", str(data), "--ckpt", str(ckpt), "--ten-crop", "--device", "cpu")
    report = json.loads((run / "checkpoints" / "test-best-ten-crop.json").read_text())
    assert report["n"] == 15 and 0 <= report["top1_err"] <= 1 and report["top5_err"] == 0.0  # 3 classes
    assert f"{report['top1_err']:.4f}"[:4] in r.stdout

    images = sorted((ilsvrc_once / "images" / "val_original").glob("*.JPEG"))[:2]
    r = imgnet("predict", "--ckpt", str(ckpt), "--json", "--device", "cpu", *map(str, images))
    preds = json.loads(r.stdout)
    assert [Path(p["file"]).name for p in preds] == [f.name for f in images]
    assert all(len(p["top"]) == 3 and abs(sum(t["prob"] for t in p["top"]) - 1) < 1e-4 for p in preds)


def test_bad_source_is_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    r = imgnet("prep", "--src", str(tmp_path / "empty"), "--out", str(tmp_path / "data"), ok=False)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "layout" in lines[0]


def test_a_disk_error_in_any_command_is_one_line(tmp_path, monkeypatch):
    """An OSError no command turned into its own message (a full or vanished disk) still ends in one
    line naming the file and the errno, exit 2, never a traceback."""
    import errno
    import os

    from click.testing import CliRunner

    import cli
    import imagenet_prep.verify as V

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "x.tmp"))

    monkeypatch.setattr(V, "verify_data", full)
    r = CliRunner().invoke(cli.main, ["verify", str(tmp_path)])
    assert r.exit_code == 2 and "Traceback" not in r.output
    lines = [ln for ln in r.output.splitlines() if ln]
    assert len(lines) == 1 and "No space left on device on" in lines[0] and "x.tmp" in lines[0]
    assert "[ENOSPC]" in lines[0] and "rerun" in lines[0]

"""Run folders, test reports and `imgnet compare` under misuse: one train per run folder, DATA marked as
read, reports named after the checkpoint they score and the DATA they came from, resume by run folder alone,
and compare on hand-edited, linked and foreign runs. Small data (32 x 32, cifar-quick) keeps it fast."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from imagenet_prep.errors import ImgnetError

ROOT = Path(__file__).resolve().parents[1]


def make_data(root: Path, classes: int = 2, per_class: int = 4, seed: int = 0) -> Path:
    """A packed 32 x 32 DATA with statistics: train and val, `classes` classes of `per_class` images."""
    from imagenet_prep.stats import compute_stats
    from imagenet_prep.store import write_split
    from imagenet_prep.synthetic import class_image

    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        records = [(class_image(rng, c, classes, (32, 32)), c, f"{split}_{c}_{j}.png")
                   for c in range(classes) for j in range(per_class)]
        write_split(root, split, records, num_classes=classes)
    compute_stats(root, workers=1, progress=False)
    return root


def cli(*args):
    from click.testing import CliRunner

    from cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


TRAIN = ("--arch", "cifar-quick", "--batch-size", "4", "--workers", "0", "--device", "cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    """A finished one-epoch run."""
    run = tmp_path_factory.mktemp("runs") / "run"
    r = cli("train", "--data", data, "--out", run, "--epochs", "1", *TRAIN)
    assert r.exit_code == 0, r.output + r.stderr
    return run


# ------------------------------------------------------------------------------------ run lock
def _hold(path: Path, shared: bool = False) -> subprocess.Popen:
    """Another process holding an flock on `path` (as a live `imgnet train` holds RUN/.run.lock)."""
    code = ("import fcntl, os, sys, time; f = open(sys.argv[1], 'a+'); "
            f"fcntl.flock(f, fcntl.{'LOCK_SH' if shared else 'LOCK_EX'}); "
            "f.seek(0); f.truncate(); f.write(str(os.getpid())); f.flush(); print('held', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_train_on_a_live_run_is_refused_naming_the_pid_and_a_dead_holder_blocks_nothing(data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = _hold(run / ".run.lock")
    try:
        r = cli("train", "--data", data, "--out", run, "--epochs", "1", *TRAIN)
        assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.stderr
        assert f"another `imgnet train` (pid {holder.pid}) is running in {run}" in r.stderr
        assert not (run / "config.json").exists() and not (run / "checkpoints").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    r = cli("train", "--data", data, "--out", run, "--epochs", "1", *TRAIN)  # the killed holder's lock is gone
    assert r.exit_code == 0, r.stderr
    assert (run / "checkpoints" / "best.pt").is_file()
    assert not [p.name for p in (run / "checkpoints").iterdir() if ".tmp" in p.name]


def test_the_run_lock_is_held_for_the_run_and_released_after(data, tmp_path, monkeypatch):
    import fcntl

    from trainer import runfolder, train as train_mod

    seen = []

    def probe(run):  # during the run: a second locker is refused
        fd = os.open(Path(run) / ".run.lock", os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            seen.append(True)
        finally:
            os.close(fd)

    monkeypatch.setattr(train_mod, "_plot", probe)
    run = tmp_path / "run"
    r = cli("train", "--data", data, "--out", run, "--epochs", "1", *TRAIN)
    assert r.exit_code == 0, r.stderr
    assert seen == [True]
    with runfolder.hold_run(run):  # released on exit
        assert (run / ".run.lock").read_text() == str(os.getpid())


def test_an_unwritable_out_says_what_failed_not_what_was_kept(data, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    outs = [blocker / "run"] + ([ro / "run"] if not os.access(ro, os.W_OK) else [])  # root writes anyway
    try:
        for out in outs:
            r = cli("train", "--data", data, "--out", out, "--epochs", "1", *TRAIN)
            assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.stderr
            assert f"cannot write the run folder {out}" in r.stderr and "nothing was started" in r.stderr
            assert "what was completed is kept" not in r.stderr
    finally:
        ro.chmod(0o755)


# ------------------------------------------------------------------------------- DATA in use
def test_hold_data_is_shared_and_data_in_use_sees_it(tmp_path):
    from imagenet_prep.inuse import data_in_use, hold_data

    assert not data_in_use(tmp_path)
    with hold_data(tmp_path), hold_data(tmp_path):  # readers together
        assert data_in_use(tmp_path)
    assert not data_in_use(tmp_path)
    holder = _hold(tmp_path / ".in-use.lock", shared=True)
    try:
        assert data_in_use(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert not data_in_use(tmp_path)  # a dead reader holds nothing


def test_train_and_test_hold_data(data, trained, tmp_path, monkeypatch):
    from imagenet_prep.inuse import data_in_use
    from trainer.eval import report

    seen = []
    real = report.score_split

    def spy(data_dir, *a, **kw):
        seen.append(data_in_use(data_dir))
        return real(data_dir, *a, **kw)

    monkeypatch.setattr(report, "score_split", spy)
    r = cli("test", "--data", data, "--ckpt", trained / "checkpoints" / "best.pt", "--device", "cpu",
            "--report-dir", tmp_path)
    assert r.exit_code == 0, r.stderr
    assert seen == [True] and not data_in_use(data)


# ------------------------------------------------------------------------------ resume by RUN
def test_resume_by_run_folder_takes_every_setting_and_checks_the_ones_given(data, tmp_path):
    run = tmp_path / "run"
    r = cli("train", "--data", data, "--out", run, "--epochs", "1", "--lr", "0.002", *TRAIN)
    assert r.exit_code == 0, r.stderr
    r = cli("train", "--out", run, "--resume", "--epochs", "2")
    assert r.exit_code == 0, r.stderr
    cfg = json.loads((run / "config.json").read_text())
    (resumed,) = cfg["resumes"]
    assert resumed["data"] == str(data) and resumed["lr"] == 0.002 and resumed["arch"] == "cifar-quick"
    assert resumed["batch_size"] == 4 and resumed["epochs"] == 2
    assert [json.loads(s)["epoch"] for s in (run / "log.jsonl").read_text().splitlines()] == [1, 2]
    r = cli("train", "--out", run, "--resume", "--lr", "0.01")  # given options are still checked
    assert r.exit_code == 2 and "lr 0.002 -> 0.01" in r.stderr
    r = cli("train", "--out", tmp_path / "none", "--resume")
    assert r.exit_code == 2 and "config.json not found" in r.stderr and r.stderr.count("\n") == 1
    r = cli("train", "--out", tmp_path / "fresh", "--epochs", "1")
    assert r.exit_code == 2 and "Missing option '--data'" in r.stderr


def test_a_finished_run_says_so_once_and_writes_nothing(trained):
    before = {p: p.stat().st_mtime_ns for p in trained.rglob("*") if p.is_file() and p.name != ".run.lock"}
    r = cli("train", "--out", trained, "--resume")
    assert r.exit_code == 0, r.stderr
    out = r.stdout + r.stderr
    assert out.count("has already trained 1 epochs") == 1 and "wrote" not in out
    assert {p: p.stat().st_mtime_ns for p in trained.rglob("*") if p.is_file() and p.name != ".run.lock"} == before

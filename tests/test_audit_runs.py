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
    """Another process holding `path` as a live `imgnet train` holds RUN/.run.lock (a POSIX record lock), or
    shared as a run holds DATA/.in-use.lock (an flock)."""
    code = ("import fcntl, os, sys, time; f = open(sys.argv[1], 'a+'); "
            f"{'fcntl.flock(f, fcntl.LOCK_SH)' if shared else 'fcntl.lockf(f, fcntl.LOCK_EX)'}; "
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


def test_two_real_trains_into_one_out_and_a_kill_9(data, tmp_path):
    """A live `imgnet train` (its own process) keeps a second one out; killed with SIGKILL, it blocks nothing."""
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "cli", "train", "--data", str(data), "--out", str(run),
                              "--epochs", "100000", *TRAIN], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not (run / "log.jsonl").is_file() or not (run / "log.jsonl").read_text():
            assert first.poll() is None, "the first train ended early"
            time.sleep(0.2)
        r = cli("train", "--data", data, "--out", run, "--epochs", "1", *TRAIN)
        assert r.exit_code == 2 and f"another `imgnet train` (pid {first.pid}) is running in {run}" in r.stderr
        r = cli("train", "--out", run, "--resume")
        assert r.exit_code == 2 and f"(pid {first.pid})" in r.stderr
    finally:
        first.kill()
        first.wait()
    r = cli("train", "--out", run, "--resume", "--epochs", "1")
    assert r.exit_code == 0 and "has already trained" in r.stdout, r.stderr


def test_the_run_lock_is_held_for_the_run_and_released_after(data, tmp_path, monkeypatch):
    from trainer import runfolder, train as train_mod

    seen = []
    code = ("import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDWR)\ntry:\n"
            "    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept OSError:\n    print('refused')")

    def probe(run):  # during the run: a second locker (another process: record locks are per process) is refused
        out = subprocess.run([sys.executable, "-c", code, str(Path(run) / ".run.lock")], capture_output=True,
                             text=True)
        seen.append(out.stdout.strip() == "refused")

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
    record = run / "config.json"  # as if DATA had moved since
    record.write_text(record.read_text().replace(str(data), str(tmp_path / "gone")))
    r = cli("train", "--out", run, "--resume", "--epochs", "2")
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "pass --data DATA" in r.stderr
    r = cli("train", "--out", run, "--resume", "--epochs", "2", "--data", data)  # the run's DATA, moved
    assert r.exit_code == 0 and "has already trained 2 epochs" in r.stdout, r.stderr
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


def test_a_finished_run_killed_before_best_pt_is_repaired_by_its_resume(data, tmp_path, monkeypatch):
    from trainer import checkpoint as ck

    def crash(*a):
        raise OSError(5, "Input/output error")  # dies after the last epoch's last.pt, before best.pt

    run = tmp_path / "run"
    real = ck.save_best
    monkeypatch.setattr(ck, "save_best", crash)
    assert cli("train", "--data", data, "--out", run, "--epochs", "1", *TRAIN).exit_code == 2
    monkeypatch.setattr(ck, "save_best", real)
    assert not (run / "checkpoints" / "best.pt").exists() and not (run / "log.jsonl").exists()
    r = cli("train", "--out", run, "--resume")
    assert r.exit_code == 0 and "has already trained 1 epochs" in r.stdout, r.stderr
    assert (run / "checkpoints" / "best.pt").is_file()
    assert [json.loads(s)["epoch"] for s in (run / "log.jsonl").read_text().splitlines()] == [1]


# --------------------------------------------------------------------------- reports and names
def test_testing_last_pt_never_takes_best_pts_report_and_compare_reads_best_only(data, trained, tmp_path):
    from trainer.compare import compare_runs

    ckdir = trained / "checkpoints"
    for name in ("best.pt", "last.pt"):
        r = cli("test", "--data", data, "--ckpt", ckdir / name, "--device", "cpu", "--workers", 0)
        assert r.exit_code == 0, r.stderr
    best = json.loads((ckdir / "test-best-center.json").read_text())
    last = json.loads((ckdir / "test-last-center.json").read_text())
    assert best["checkpoint"].endswith("best.pt") and last["checkpoint"].endswith("last.pt")
    assert best["data_identity"]["records"] == 8 and len(best["data_identity"]["labels_sha256"]) == 64
    # an older run's names (test-center.json) still count, where they score best.pt; last.pt's never do
    (ckdir / "test-best-center.json").rename(ckdir / "test-center.json")
    (ckdir / "test-last-center.json").write_text(json.dumps({**last, "top1_err": 0.123}))
    old_last = {**last, "split": "val", "view": "ten-crop", "top1_err": 0.321}  # last.pt's, under an old name
    (ckdir / "test-ten-crop.json").write_text(json.dumps(old_last))
    f = compare_runs([trained])["runs"][0]["figures"]
    assert f["val/center/top1_err"] == best["top1_err"] and "val/ten-crop/top1_err" not in f
    newer = {**best, "top1_err": 0.5}
    (ckdir / "test-best-center.json").write_text(json.dumps(newer))  # beside the old name: the new one wins
    r = compare_runs([trained])
    assert r["runs"][0]["figures"]["val/center/top1_err"] == 0.5 and r["warnings"] == []
    (ckdir / "test-best-center.json").write_text(json.dumps({**newer, "epoch": 7}))  # best.pt has moved on since
    (warning,) = compare_runs([trained])["warnings"]
    assert "test-best-center.json scores best.pt of epoch 7, but best.pt now holds epoch 1" in warning


def test_report_dir_and_reports_of_another_data_are_never_replaced(data, trained, tmp_path):
    other = make_data(tmp_path / "other", per_class=3, seed=1)  # same classes, other images
    ckpt = trained / "checkpoints" / "best.pt"
    r = cli("test", "--data", data, "--ckpt", ckpt, "--device", "cpu", "--workers", 0)
    assert r.exit_code == 0, r.stderr
    before = (trained / "checkpoints" / "test-best-center.json").read_bytes()
    r = cli("test", "--data", other, "--ckpt", ckpt, "--device", "cpu", "--workers", 0)
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "holds a report on other data" in r.stderr
    assert "--report-dir" in r.stderr and (trained / "checkpoints" / "test-best-center.json").read_bytes() == before
    r = cli("test", "--data", other, "--ckpt", ckpt, "--device", "cpu", "--workers", 0,
            "--report-dir", tmp_path / "reports" / "other")
    assert r.exit_code == 0, r.stderr
    rep = json.loads((tmp_path / "reports" / "other" / "test-best-center.json").read_text())
    assert rep["n"] == 6 and rep["data"] == str(other) and rep["data_identity"]["records"] == 6
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = cli("test", "--data", data, "--ckpt", ckpt, "--device", "cpu", "--report-dir", blocker / "x")
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "--report-dir" in r.stderr


def test_two_writers_of_one_report_leave_one_whole_report(tmp_path):
    """Two `imgnet test` of one checkpoint at once: each writes through a temporary file of its own."""
    from trainer.runfolder import write_shared

    path = tmp_path / "test-best-center.json"
    code = ("import sys; from trainer.runfolder import write_shared; "
            "[write_shared(sys.argv[1], {'w': sys.argv[2], 'pad': 'x' * 200000}) for _ in range(60)]")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), w], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}) for w in "ab"]
    seen = set()
    while any(p.poll() is None for p in procs):
        if path.exists():
            seen.add(json.loads(path.read_text())["w"])  # never torn, never mixed
    assert [p.wait() for p in procs] == [0, 0]
    assert json.loads(path.read_text())["w"] in "ab" and seen <= {"a", "b"}
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    write_shared(path, {"w": "c"})
    plain = tmp_path / "plain"
    plain.write_text("")
    assert json.loads(path.read_text()) == {"w": "c"}
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777  # the umask's mode, as any file
    with pytest.raises(ImgnetError, match=f"cannot write {tmp_path / 'no' / path.name}"):
        write_shared(tmp_path / "no" / path.name, {})


def test_submission_is_refused_for_a_split_other_than_val(trained, tmp_path):
    from imagenet_prep.store import write_split
    from trainer import checkpoint as ck
    from trainer.eval.report import run_test

    labels = ck.load_checkpoint(trained / "checkpoints" / "best.pt")["labels"]
    rng = np.random.default_rng(0)
    recs = [(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), i % 2, f"{i % 2}/{i:x}.jpeg") for i in range(4)]
    write_split(tmp_path / "d", "v2-matched-frequency", recs, labels_json=labels)
    with pytest.raises(ImgnetError, match="--submission writes the devkit's ILSVRC2012 val format, which split "
                                          "'v2-matched-frequency' is not"):
        run_test(tmp_path / "d", trained / "checkpoints" / "best.pt", split="v2-matched-frequency",
                 submission=tmp_path / "sub.txt", device="cpu", progress=False)
    assert not (tmp_path / "sub.txt").exists()


def test_evaluation_bars_count_images(trained, data, monkeypatch):
    import tqdm

    from trainer.eval import report

    class Bar:  # what the bar is told: its size and each step
        made = []

        def __init__(self, **kw):
            self.kw, self.steps = kw, []
            Bar.made.append(self)

        def update(self, n):
            self.steps.append(n)

        def close(self):
            pass

    monkeypatch.setattr(tqdm, "tqdm", Bar)
    report.run_test(data, trained / "checkpoints" / "best.pt", device="cpu", workers=0, batch_size=3,
                    ten_crop=True, report_dir=trained / "bars")
    (bar,) = Bar.made
    assert bar.kw["unit"] == "img" and bar.kw["total"] == 8 and bar.kw["file"] is sys.stderr
    assert bar.steps == [3, 3, 2]  # images per batch of 3 (ten views each), not batches


# ----------------------------------------------------------------------- compare, hand-edited
def write_run(path: Path, config: dict | None = None, log: str = "", tests: dict | None = None) -> Path:
    (path / "checkpoints").mkdir(parents=True)
    base = {"data": "/data/x", "lr": 0.01, "model_kwargs": {"num_classes": 10}, "input": {"size": 32, "crop": 28}}
    (path / "config.json").write_text(json.dumps({**base, **(config or {})}))
    (path / "log.jsonl").write_text(log)
    for name, text in (tests or {}).items():
        (path / "checkpoints" / name).write_text(text)
    return path


def line(**kw) -> str:
    return json.dumps({"epoch": 1, "val_top1_err": 0.5, "val_top5_err": 0.2, "images_per_s": 100.0, **kw}) + "\n"


def imgnet(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    """The command in its own process, under a timeout: a read that never ends fails the test, not the suite."""
    return subprocess.run([sys.executable, "-m", "cli", *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_compare_refuses_fifos_and_endless_files_in_one_line(tmp_path):
    fifo_cfg = write_run(tmp_path / "fifo-config", log=line())
    (fifo_cfg / "config.json").unlink()
    os.mkfifo(fifo_cfg / "config.json")
    zero_log = write_run(tmp_path / "zero-log")
    (zero_log / "log.jsonl").unlink()
    (zero_log / "log.jsonl").symlink_to("/dev/zero")
    zero_cfg = write_run(tmp_path / "zero-config")
    (zero_cfg / "config.json").unlink()
    (zero_cfg / "config.json").symlink_to("/dev/zero")
    for run, name in ((fifo_cfg, "config.json"), (zero_log, "log.jsonl"), (zero_cfg, "config.json")):
        r = imgnet("compare", run)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert f"{run / name} is not a regular file" in r.stderr
    fifo_report = write_run(tmp_path / "fifo-report", log=line())
    os.mkfifo(fifo_report / "checkpoints" / "test-best-center.json")
    r = imgnet("compare", fifo_report)
    assert r.returncode == 0 and r.stderr.startswith("warning: left out: ") and r.stderr.count("\n") == 1
    assert "50.00" in r.stdout  # the run itself is compared


def test_compare_on_hand_edited_logs_and_reports(tmp_path):
    from trainer.compare import compare_runs, format_table

    log = "".join([
        line(epoch=None, val_top1_err=0.01), line(epoch="2", val_top1_err=0.01), line(epoch=True, val_top1_err=0.01),
        "[1, 2]\n", "\"text\"\n", "3\n", "\x00\xff\xfe binary junk \x89PNG\n",
        line(epoch=1, val_top1_err=float("nan")),  # json writes NaN: never the best epoch
        line(epoch=2, val_top1_err=0.4, val_top5_err=10 ** 400, images_per_s=10 ** 400),  # too big for a float
        line(epoch=3, val_top1_err=10 ** 400), line(epoch=4, val_top1_err=0.45, images_per_s="fast"),
        "[" * 100000 + "\n", line(epoch=5, val_top1_err=float("inf"))])
    deep_setting = "[" * 500 + "]" * 500
    report = {"split": "val/x", "view": ["center"], "checkpoint": "best.pt", "top1_err": 10 ** 400,
              "top5_err": 0.3, "n": 8, "real": {"top1_err": 0.2, "inner": {"top1_err": 0.1}}}
    run = write_run(tmp_path / "edited", {"momentum": json.loads(deep_setting), "seed": 10 ** 400}, log,
                    {"test-best-center.json": json.dumps(report),
                     "test-best-ten-crop.json": "{\"a\": " * 100000 + "1" + "}" * 100000})
    base = write_run(tmp_path / "base", {"seed": 0}, line(epoch=1, val_top1_err=0.5))
    r = compare_runs([base, run])
    edited = r["runs"][1]
    assert edited["best_epoch"] == 2 and edited["figures"]["best_val_top1_err"] == 0.4
    assert edited["figures"]["best_val_top5_err"] is None and edited["images_per_s"] == 100.0
    assert edited["epochs"] == 5 and [c["epoch"] for c in edited["curve"]] == [1, 2, 3, 4, 5]
    assert edited["curve"][0]["val_top1_err"] is None and edited["curve"][2]["val_top1_err"] is None
    assert "momentum" not in edited["settings"] and edited["differs"]["seed"] == 10 ** 400
    f = edited["figures"]
    assert "val/center/top1_err" not in f and f["val/center/top5_err"] == 0.3 and f["val/center/real_top1_err"] == 0.2
    assert not any("inner" in k or "ten-crop" in k for k in f)
    (warning,) = r["warnings"]
    assert "test-best-ten-crop.json is JSON nested too deeply" in warning
    assert "40.00 (-10.00)" in format_table(r)
    res = cli("compare", base, run, "--plot", tmp_path / "c.png")
    assert res.exit_code == 0 and res.exception is None and (tmp_path / "c.png").is_file()
    deep = write_run(tmp_path / "deep")
    (deep / "config.json").write_text("[" * 100000 + "]" * 100000)
    res = cli("compare", base, deep)
    assert res.exit_code == 2 and res.stderr.count("\n") == 1 and "nested too deeply" in res.stderr


def test_compare_warns_once_for_runs_on_different_data(tmp_path):
    a = write_run(tmp_path / "a", log=line())
    b = write_run(tmp_path / "b", {"data": "/data/y", "model_kwargs": {"num_classes": 1000}}, line())
    c = write_run(tmp_path / "c", {"data": "/copy/of/x"}, line())  # the same DATA elsewhere: no warning
    r = cli("compare", a, b)
    assert r.exit_code == 0 and r.stderr.count("\n") == 1 and r.stderr.startswith("warning: the runs were trained "
                                                                                     "on different DATA")
    assert "/data/x, 10 classes" in r.stderr and "/data/y, 1000 classes" in r.stderr
    r = cli("compare", a, c)
    assert r.exit_code == 0 and r.stderr == ""


def test_compare_plot_into_an_unwritable_place_names_the_target(tmp_path):
    run = write_run(tmp_path / "a", log=line())
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = cli("compare", run, "--plot", blocker / "c.png")
    assert r.exit_code == 2 and r.stderr.count("\n") == 1
    assert f"cannot write {blocker / 'c.png'} (" in r.stderr and ".tmp" not in r.stderr


def test_validation_in_training_shows_an_image_bar(data, tmp_path, monkeypatch):
    from trainer.eval import scoring
    from trainer.train import TrainConfig, train

    asked = []
    real = scoring.evaluate

    def spy(*a, **kw):
        asked.append(kw.get("progress"))
        return real(*a, **kw)

    monkeypatch.setattr(scoring, "evaluate", spy)
    base = dict(data=str(data), epochs=1, arch="cifar-quick", batch_size=4, workers=0, device="cpu")
    train(TrainConfig(out=str(tmp_path / "a"), progress=True, **base))
    train(TrainConfig(out=str(tmp_path / "b"), progress=False, **base))
    assert asked == ["val", False]


def test_test_runs_beside_a_live_train(data, trained):
    """`imgnet test` takes no run lock: a checkpoint is tested while its run trains on."""
    holder = _hold(trained / ".run.lock")
    try:
        r = cli("test", "--data", data, "--ckpt", trained / "checkpoints" / "last.pt", "--device", "cpu")
        assert r.exit_code == 0, r.stderr
        assert (trained / "checkpoints" / "test-last-center.json").is_file()
    finally:
        holder.kill()
        holder.wait()

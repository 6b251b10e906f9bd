"""bench/gpu_suite.py works before a GPU first sees it: `--dry-run` runs every part on the CPU through the
same code, a part that fails or overruns is recorded without stopping the rest, and `--parts` reruns merge."""

import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "bench" / "gpu_suite.py"
sys.path.insert(0, str(ROOT / "bench"))

import gpu_suite  # noqa: E402

# the figures the suite must report (issue: GPU readiness)
KEYS = ["torch", "triton", "cores", "pytest_passed", "pytest_failed", "pytest_skipped",
        "ours_img_s", "no_lrn_img_s", "torch_lrn_img_s", "ratio_vs_no_lrn", "compiled_img_s", "compiled_no_lrn_img_s",
        "loader_raw_img_s", "loader_jpeg_img_s", "end_to_end_img_s", "end_to_end_ratio",
        "test_center_img_s", "test_ten_crop_img_s", "two_tower_img_s", "two_tower_equal", "demo_top1_err"]


def suite(out: Path, work: Path, *args, timeout=600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(SUITE), "--dry-run", "--out", str(out), "--work", str(work), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_dry_run_runs_every_part_on_the_cpu(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    r = suite(out, work, "--jobs", "2")  # two parts side by side: CI's two cores, and well under 90 s
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = json.loads((out / "suite.json").read_text())
    failed = {p: rec.get("log_tail", "")[-800:] for p, rec in s["parts"].items() if not rec["ok"]}
    assert not failed, failed
    assert list(s["parts"]) == list(gpu_suite.PARTS) and s["dry_run"] is True
    fig = s["figures"]
    assert [k for k in KEYS if k not in fig] == []
    assert fig["two_tower_equal"] is True
    assert fig["compiled_ours_fullgraph"] is True  # the LRN operator in one compiled graph (aot_eager)
    assert fig["pytest_failed"] == 0 and fig["pytest_skipped"] > 0  # on the CPU every gpu test skips
    assert 0 <= fig["demo_top1_err"] <= 1 and fig["end_to_end_img_s"] > 0
    assert fig["loader_raw_output"].startswith("torch.float32 (2, 3, 224, 224)")
    assert json.loads(r.stdout.strip().splitlines()[-1])["failed"] == []  # last line: the flat figures
    assert None not in s["goals"].values()  # every goal measured (the CPU's figures need not meet them)
    with tarfile.open(out / "logs.tar.gz") as tar:
        names = set(tar.getnames())
    assert {f"logs/{p}.log" for p in gpu_suite.PARTS} <= names
    assert sorted(p.name for p in out.iterdir()) == ["logs.tar.gz", "suite.json"]  # all that comes back


def test_overrun_is_recorded_and_a_rerun_merges(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    r = suite(out, work, "--parts", "env,data", "--timeout-scale", "0.0001")  # 0.1 s each: both overrun
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((out / "suite.json").read_text())
    assert s["failed"] == ["data", "env"]
    assert all("timed out" in rec["error"] for rec in s["parts"].values())
    r = suite(out, work, "--parts", "env")
    s = json.loads((out / "suite.json").read_text())
    assert s["parts"]["env"]["ok"] and not s["parts"]["data"]["ok"]  # the earlier record stays
    assert s["failed"] == ["data"] and s["figures"]["cores"] >= 1
    fresh = tmp_path / "fresh_out"  # the device tool's $OUT is a new folder on each call
    r = suite(fresh, work, "--parts", "data")
    s = json.loads((fresh / "suite.json").read_text())
    assert s["failed"] == [] and set(s["parts"]) == {"env", "data"}


def test_unknown_part_is_refused(tmp_path):
    r = suite(tmp_path / "out", tmp_path / "work", "--parts", "env,warp_drive", timeout=60)
    assert r.returncode == 2 and "unknown part(s) warp_drive" in r.stderr
    r = subprocess.run([sys.executable, str(SUITE), "--out", str(tmp_path / "out"), "--jobs", "2"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "only with --dry-run" in r.stderr  # GPU timings need each part alone


def test_parts_side_by_side_start_after_the_parts_they_need():
    import threading

    log, lock = [], threading.Lock()

    def run(part):
        with lock:
            log.append(("start", part))
        time.sleep(0.05 if part != "data" else 0.2)
        with lock:
            log.append(("end", part))
        return {"ok": True}

    recorded = []
    gpu_suite.run_parts(list(gpu_suite.PARTS), 3, run, lambda part, rec: recorded.append(part))
    assert sorted(recorded) == sorted(gpu_suite.PARTS)
    at = {ev: i for i, ev in enumerate(log)}
    for part, needs in gpu_suite.NEEDS.items():
        for n in needs:
            assert at[("end", n)] < at[("start", part)], (part, n)
    most = max(sum(1 for e in log[:i + 1] if e[0] == "start") - sum(1 for e in log[:i + 1] if e[0] == "end")
               for i in range(len(log)))
    assert most == 3  # side by side, never more than asked
    alone = []
    gpu_suite.run_parts(["test", "env"], 1, lambda p: alone.append(p) or {"ok": True}, lambda p, r: None)
    assert alone == ["test", "env"]  # a needed part not asked for is not waited for


def test_end_to_end_ratio_needs_both_figures():
    parts = {"train": {"ok": True, "result": {"end_to_end_img_s": 90.0}},
             "train_step": {"ok": True, "result": {"ours_img_s": 100.0, "lrn_path": "triton"}},
             "loader": {"ok": False, "error": "exit code 1"}}
    assert gpu_suite.flat(parts) == {"end_to_end_img_s": 90.0, "ours_img_s": 100.0, "lrn_path": "triton",
                                     "end_to_end_ratio": 0.9}
    parts["train_step"]["ok"] = False
    assert "end_to_end_ratio" not in gpu_suite.flat(parts)
    g = gpu_suite.goals({"end_to_end_ratio": 0.9, "ratio_vs_no_lrn": 0.9, "two_tower_equal": True})
    assert g["end_to_end_ratio >= 0.9"] is True and g["ratio_vs_no_lrn >= 0.95"] is False
    assert g["two_tower_equal == True"] is True and g["demo_top1_err <= 0.1"] is None  # not measured


def test_docstring_says_how_to_run_it_on_the_lent_machine():
    doc = gpu_suite.__doc__
    for needle in ("PYTHONPATH=", "pip download lmdb", "--python-version 3.12", 'carry=["wheels"]', "--dry-run"):
        assert needle in doc, needle
    r = subprocess.run(["git", "check-ignore", "-q", "wheels/lmdb-1.0-cp312.whl"], cwd=ROOT)
    if r.returncode == 128:
        pytest.skip("not a git checkout")
    assert r.returncode == 0, "wheels/ must be git-ignored so the carried wheel is never committed"

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from imagenet_prep import ImgnetError
from imagenet_prep.stats import compute_stats, load_stats, sample_indices
from imagenet_prep.store import write_split


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    d = tmp_path_factory.mktemp("stats")
    rng = np.random.default_rng(3)
    images = []
    for i in range(70):  # more than one 64-image batch
        base = rng.integers(0, 256, 3)
        img = np.clip(base + rng.normal(0, 40, (256, 256, 3)), 0, 255).astype(np.uint8)
        images.append((img, i % 2, f"x_{i}.JPEG"))
    write_split(d, "train", images)
    return d, np.stack([im for im, _, _ in images])


def _reference(images: np.ndarray) -> dict:
    x = images.reshape(-1, 3).astype(np.float64) / 255.0
    cov = np.cov(x, rowvar=False, ddof=0)
    w, v = np.linalg.eigh(cov)
    return {"mean": x.mean(0), "cov": cov, "eigval": w[::-1], "eigvec": v[:, ::-1],
            "mean_image": images.astype(np.float64).mean(0)}


@pytest.mark.parametrize("workers", [1, 2])
def test_stats_match_float64_numpy(packed, workers):
    d, images = packed
    s = compute_stats(d, workers=workers, progress=False)
    ref = _reference(images)
    np.testing.assert_allclose(s["mean_rgb"], ref["mean"], rtol=0, atol=1e-9)  # the float64 reference itself carries ~1e-11 summation error
    np.testing.assert_allclose(s["cov"], ref["cov"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(s["eigval"], ref["eigval"], rtol=1e-9)
    np.testing.assert_allclose(s["std_rgb"], np.sqrt(np.diag(ref["cov"])), rtol=1e-9)
    for j in range(3):  # eigenvectors are defined up to sign
        a, b = np.asarray(s["eigvec"])[:, j], ref["eigvec"][:, j]
        assert min(np.abs(a - b).max(), np.abs(a + b).max()) < 1e-8
    assert s["n_images"] == 70 and s["n_pixels"] == 70 * 256 * 256
    np.testing.assert_allclose(load_stats(d)["mean_image"], ref["mean_image"], atol=1e-4)
    on_disk = json.loads((d / "stats.json").read_text())
    assert on_disk["eigval"] == s["eigval"] and "mean_image" not in on_disk


def test_stats_exact_whatever_the_worker_count(packed):
    d, _ = packed
    one = compute_stats(d, workers=1, progress=False)
    two = compute_stats(d, workers=2, progress=False)
    assert one["cov"] == two["cov"] and one["mean_rgb"] == two["mean_rgb"]
    np.testing.assert_array_equal(one["mean_image"], two["mean_image"])


def test_sample_is_deterministic_subset(packed):
    d, images = packed
    idx = sample_indices(70, 20)
    assert len(set(idx.tolist())) == 20 and (np.diff(idx) > 0).all()
    np.testing.assert_array_equal(idx, sample_indices(70, 20))
    s = compute_stats(d, sample=20, workers=1, progress=False)
    np.testing.assert_allclose(s["cov"], _reference(images[idx])["cov"], atol=1e-10)
    assert s["n_images"] == 20


def test_missing_stats_says_what_to_run(tmp_path):
    with pytest.raises(ImgnetError, match="imgnet pca-stats"):
        load_stats(tmp_path)


# ------------------------------------------------------------------------- faults: disks, signals, kills
ROOT = Path(__file__).resolve().parents[1]


def _images(n: int, seed: int = 5):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8), i % 2, f"x_{i}.JPEG") for i in range(n)]


def _leftovers(d: Path) -> list:
    """Temporary or new statistics files: a failed pca-stats must leave none."""
    return sorted(p.name for p in d.iterdir() if p.name.startswith(".stats") or p.name.startswith("stats")
                  or p.name.startswith(".write-test") or p.name.endswith(".tmp"))


@contextlib.contextmanager
def _tmpfs(path: Path, size: str):
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_read_only_data_is_refused_before_computing(tmp_path, monkeypatch):
    with _tmpfs(tmp_path / "ro", "8m") as d:
        write_split(d, "train", _images(4))
        r = subprocess.run(["mount", "-o", "remount,ro", str(d)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot remount read-only ({r.stderr.strip()})")
        monkeypatch.setattr("imagenet_prep.stats._sums", lambda span: pytest.fail("computed before checking DATA"))
        with pytest.raises(ImgnetError, match=r"not writable \(Read-only file system\)") as e:
            compute_stats(d, workers=1, progress=False)
        assert str(d) in str(e.value) and "\n" not in str(e.value)


def test_unwritable_data_is_refused_before_computing_injected(packed, monkeypatch):
    """The same refusal where mounting is not allowed: EROFS injected where DATA is probed."""
    d, _ = packed

    def refuse(*a, **kw):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr("imagenet_prep.atomic.tempfile.NamedTemporaryFile", refuse)
    monkeypatch.setattr("imagenet_prep.stats._sums", lambda span: pytest.fail("computed before checking DATA"))
    with pytest.raises(ImgnetError, match="not writable"):
        compute_stats(d, workers=1, progress=False)


def test_full_disk_is_one_line_and_leaves_no_temp_files_then_a_rerun_works(tmp_path):
    with _tmpfs(tmp_path / "full", "4m") as d:
        write_split(d, "train", _images(6))
        free = shutil.disk_usage(d).free
        filler = d / "filler"
        filler.write_bytes(b"\0" * max(0, free - 128 * 1024))  # room for the write test, not for stats.h5 (~0.8 MB)
        before = _leftovers(d)
        with pytest.raises(ImgnetError, match=r"cannot write .*stats\.h5 \(.*No space left") as e:
            compute_stats(d, workers=1, progress=False)
        assert "\n" not in str(e.value)
        assert _leftovers(d) == before == []
        filler.unlink()
        s = compute_stats(d, workers=1, progress=False)
        assert _leftovers(d) == ["stats.h5", "stats.json"] and load_stats(d)["n_images"] == s["n_images"] == 6


@pytest.mark.parametrize("target", ["h5", "json"])
def test_write_failure_injected_leaves_old_files_and_no_temp_files(packed, monkeypatch, target):
    """ENOSPC injected at the fsync of either file: the previous statistics stay whole, no temporary remains."""
    d, _ = packed
    compute_stats(d, workers=1, progress=False)
    old = {p: (d / p).read_bytes() for p in ("stats.h5", "stats.json")}
    real_fsync = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(f"stats.{target}.tmp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr("imagenet_prep.atomic.os.fsync", fsync)
    with pytest.raises(ImgnetError, match=rf"cannot write .*stats\.{target} \(No space left on device\)"):
        compute_stats(d, sample=10, workers=1, progress=False)
    assert {p: (d / p).read_bytes() for p in old} == old
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]


_SLOW_STATS = """
import os, sys, time
import imagenet_prep.stats as st

_real = st._sums

def slow_sums(span):
    os.write(1, b"%d\\n" % os.getpid())  # this worker is inside a task (one write: lines never interleave)
    time.sleep(60)
    return _real(span)

st._sums = slow_sums
from cli import main
main(["pca-stats", "--data", sys.argv[1], "--workers", "2"])
"""


def _start_slow_stats(tmp_path, d):
    script = tmp_path / "slow_stats.py"
    script.write_text(_SLOW_STATS)
    proc = subprocess.Popen([sys.executable, str(script), str(d)], cwd=ROOT, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines = [proc.stdout.readline(), proc.stdout.readline()]
    assert all(line.strip().isdigit() for line in lines), (lines, proc.communicate())
    pids = {int(line) for line in lines}  # both workers mid-task
    return proc, pids


def _gone_within(pids, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = [p for p in pids if os.path.exists(f"/proc/{p}") and
                 open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"]
        if not alive:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def fresh(tmp_path):
    d = tmp_path / "data"
    write_split(d, "train", _images(70))  # over one 64-image batch: two workers
    return d


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
def test_sigterm_is_a_clean_interrupt(tmp_path, fresh):
    proc, pids = _start_slow_stats(tmp_path, fresh)
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and err.strip() == "interrupted", err
    assert _gone_within(pids, 3) and _leftovers(fresh) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
def test_workers_do_not_outlive_a_killed_main_process(tmp_path, fresh):
    proc, pids = _start_slow_stats(tmp_path, fresh)
    proc.kill()
    _, err = proc.communicate(timeout=30)  # stderr's EOF: no worker holds it any more
    assert _gone_within(pids, 3) and "Traceback" not in err, err


def _killed(span):
    os.kill(os.getpid(), signal.SIGKILL)  # what the OOM killer does


def test_dead_worker_is_an_error_naming_its_records(packed, monkeypatch):
    d, _ = packed
    monkeypatch.setattr("imagenet_prep.stats._sums", _killed)  # forked workers inherit the patch
    with pytest.raises(ImgnetError, match=r"pca-stats worker \(pid \d+\) was killed by SIGKILL .* train records \d+-\d+"):
        compute_stats(d, workers=2, progress=False)


def test_pca_stats_scans_with_readahead(tmp_path, monkeypatch):
    """The scan reads in storage order: readahead on (a cold-cache scan then reads in large requests)."""
    import imagenet_prep.stats as stats

    rng = np.random.default_rng(0)
    write_split(tmp_path, "train", [(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8), 0, f"{i}.JPEG")
                                    for i in range(3)]).close()
    seen = []
    real = stats.open_split

    def spy(*args, **kwargs):
        seen.append(kwargs.get("readahead", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(stats, "open_split", spy)
    stats.compute_stats(tmp_path, workers=1, progress=False)
    assert seen == [True]


def test_a_folder_in_place_of_either_stats_file_leaves_both_unchanged(tmp_path):
    """stats.h5 and stats.json are replaced together or not at all: a folder where the second goes stops
    the write before the first is renamed."""
    from imagenet_prep.atomic import replacing

    (tmp_path / "stats.h5").write_text("old h5")
    (tmp_path / "stats.json").mkdir()
    with pytest.raises(ImgnetError, match=r"stats\.json is a folder"):
        with replacing(tmp_path / "stats.h5", tmp_path / "stats.json") as (h5, js):
            h5.write_text("new h5")
            js.write_text("new json")
    assert (tmp_path / "stats.h5").read_text() == "old h5"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.h5", "stats.json"]  # no temporary left

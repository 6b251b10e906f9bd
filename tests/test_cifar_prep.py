"""The four CIFAR downloads as source layouts, end to end through `imgnet prep --size 32` on tiny downloads
made on the fly (cifar_downloads.py): pixels bit for bit, labels, names, class names, counts, the test split,
CIFAR-100's coarse labels, the refused pickle, the refused upscale, and a kill -9 mid-prep then the rerun."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import cifar_downloads as cd
import layouts
from cli import main
from imagenet_prep import ImgnetError, open_split, store
from imagenet_prep.prep import PrepConfig, run_prep
from imagenet_prep.stats import compute_stats
from imagenet_prep.verify import verify_data

ROOT = Path(__file__).resolve().parents[1]


def _prep(*args) -> tuple[int, str]:
    r = CliRunner().invoke(main, ["prep", *map(str, args)])
    return r.exit_code, r.output


def _check_split(out: Path, split: str, want: list, coarse: bool = False) -> None:
    """The packed split holds `want`'s (name, fine, coarse, image) records in order, pixels bit for bit."""
    s = open_split(out, split)
    try:
        assert (len(s), s.size, s.image_shape, s.meta["size"]) == (len(want), 32, (32, 32, 3), 32)
        for i, (name, fine, coarse_label, image) in enumerate(want):
            rec = s[i]
            assert (rec.name, rec.label) == (name, coarse_label if coarse else fine)
            assert np.array_equal(rec.image, image) and rec.image.dtype == np.uint8
            assert bytes(s.read_bytes(i)) == np.ascontiguousarray(image).tobytes()  # raw: the download's bytes
    finally:
        s.close()


@pytest.mark.parametrize("key,archive", [("cifar-10-python", True), ("cifar-10-python", False),
                                         ("cifar-10-binary", True), ("cifar-10-binary", False),
                                         ("cifar-100-python", True), ("cifar-100-binary", True)])
def test_each_download_is_prepped_to_its_pixels_labels_and_names(tmp_path, key, archive):
    want = cd.write(tmp_path / "src", key, per_batch=3, n_test=3, archive=archive)
    out = tmp_path / "out"
    code, output = _prep("--src", tmp_path / "src", "--out", out, "--size", 32, "--workers", 2)
    assert code == 0, output
    assert "train: 15 written" in output and "test: 3 written" in output
    for split in ("train", "test"):
        _check_split(out, split, want[split])
    labels = json.loads((out / "labels.json").read_text())
    assert [c["wnid"] for c in labels["classes"]] == want["classes"] == [c["words"] for c in labels["classes"]]
    report = json.loads((out / "prep-report.json").read_text())
    assert report["layout"] == key and report["config"]["size"] == 32
    assert {s: (r["found"], r["written"], r["rejected"], r["converted"]) for s, r in report["splits"].items()} == \
        {"train": (15, 15, [], []), "test": (3, 3, [], [])}
    assert verify_data(out, progress=False)["ok"]
    if key == "cifar-10-python" and archive:  # the statistics stage reads the size too
        stats = compute_stats(out, workers=1, progress=False)
        train = np.stack([r[3] for r in want["train"]]).astype(np.float64)
        assert stats["size"] == 32 and np.allclose(stats["mean_image"], train.mean(axis=0), atol=1e-4)


@pytest.mark.parametrize("key", ["cifar-100-python", "cifar-100-binary"])
def test_cifar100_coarse_labels_on_request(tmp_path, key):
    want = cd.write(tmp_path / "src", key, per_batch=2, n_test=2)
    out = tmp_path / "out"
    run_prep(PrepConfig(src=str(tmp_path / "src"), out=str(out), size=32, coarse=True, workers=1))
    for split in ("train", "test"):
        _check_split(out, split, want[split], coarse=True)
    labels = json.loads((out / "labels.json").read_text())
    assert [c["wnid"] for c in labels["classes"]] == cd.COARSE


def test_coarse_on_cifar10_and_upscaling_are_refused_in_one_line(tmp_path):
    cd.write(tmp_path / "src", "cifar-10-binary")
    out = tmp_path / "out"
    code, output = _prep("--src", tmp_path / "src", "--out", out)  # the default --size 256
    assert code != 0 and output.count("\n") == 1 and "--size 32" in output and "upscale" in output
    assert not (out / "train.lmdb").exists() and not (out / "labels.json").exists()
    code, output = _prep("--src", tmp_path / "src", "--out", out, "--size", 32, "--coarse")
    assert code != 0 and output.count("\n") == 1 and "--coarse" in output and "cifar-10-binary" in output


def test_a_smaller_size_resizes_cifar(tmp_path):
    cd.write(tmp_path / "src", "cifar-10-python")
    run_prep(PrepConfig(src=str(tmp_path / "src"), out=str(tmp_path / "out"), size=16, workers=1, split="test"))
    s = open_split(tmp_path / "out", "test")
    assert (len(s), s.size, s[0].image.shape) == (3, 16, (16, 16, 3))


class _System:
    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("archive", [True, False])
def test_a_batch_asking_for_os_system_is_refused_and_nothing_runs(tmp_path, archive):
    marker = tmp_path / "ran"
    evil = _System()
    evil.marker = marker
    payload = pickle.dumps({b"data": evil}, protocol=2)
    assert b"system" in payload
    cd.write(tmp_path / "src", "cifar-10-python", archive=archive, override={"data_batch_2": payload})
    code, output = _prep("--src", tmp_path / "src", "--out", tmp_path / "out", "--size", 32)
    assert code != 0 and output.count("\n") == 1, output
    assert "data_batch_2" in output and "system" in output
    assert not marker.exists()
    assert not (tmp_path / "out" / "train.lmdb").exists()


def test_the_unknown_layout_message_lists_the_cifar_layouts(tmp_path):
    (tmp_path / "src").mkdir()
    code, output = _prep("--src", tmp_path / "src", "--out", tmp_path / "out")
    assert code != 0
    for archive, folder in cd.ARCHIVES.values():
        assert archive in output and folder in output


# `imgnet prep` with each image 50 ms slower
_SLOW = textwrap.dedent("""
    import sys, time
    from imagenet_prep.pack import worker
    worker.process_bytes = lambda data, name=None, real=worker.process_bytes: (time.sleep(0.05), real(data, name))[1]
    sys.path.insert(0, {root!r})
    import cli
    sys.exit(cli.main(sys.argv[1:], prog_name="imgnet"))
""")


def _committed(path: Path) -> bool:
    try:
        return store.progress_of(path) > 0
    except ImgnetError:  # caught between the writer's first steps
        return False


@pytest.mark.parametrize("key", ["cifar-10-python", "cifar-10-binary"])
def test_kill_9_mid_prep_then_rerun_gives_identical_content(tmp_path, key):
    want = cd.write(tmp_path / "src", key, per_batch=8, n_test=8)
    clean = tmp_path / "clean"
    run_prep(PrepConfig(src=str(tmp_path / "src"), out=str(clean), size=32, workers=1, split="train"))
    out = tmp_path / "killed"
    args = ["prep", "--src", str(tmp_path / "src"), "--out", str(out), "--size", "32", "--workers", "1",
            "--split", "train"]
    # a batch (8 records, 0.4 s) is one commit: kill once the first is in, long before the fifth
    proc = subprocess.Popen([sys.executable, "-c", _SLOW.format(root=str(ROOT)), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None and not _committed(out / "train.lmdb"):
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    with pytest.raises(ImgnetError):
        open_split(out, "train")  # stopped part way
    assert 0 < store.progress_of(out / "train.lmdb") < 40
    run_prep(PrepConfig(src=str(tmp_path / "src"), out=str(out), size=32, workers=1, split="train"))
    assert layouts.content(out, "train") == layouts.content(clean, "train")
    _check_split(out, "train", want["train"])

"""`imgnet prep` under a dead worker, SIGTERM, kill -9 of the main process, another Pillow build; the report
of a resumed split; Kaggle CSV quirks."""

import errno
import io
import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import layouts
from imagenet_prep import ImgnetError, sources
from imagenet_prep.pack import commits, run, worker
from imagenet_prep.sources import base
from imagenet_prep.sources import truth as val_truth
from imagenet_prep.errors import WorkerDied
from imagenet_prep.prep import PrepConfig, run_prep
from imagenet_prep.synthetic import class_image

ROOT = Path(__file__).resolve().parents[1]
W1, W2 = "n01440764", "n01443537"
VICTIM = f"{W2}_1.JPEG"


def _jpeg(seed: int, w=96, h=80, fmt="JPEG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(class_image(np.random.default_rng(seed), seed % 3, 3, (w, h))).save(buf, format=fmt)
    return buf.getvalue()


def _src(root: Path, n=3) -> Path:
    for k, w in enumerate((W1, W2)):
        (root / "train" / w).mkdir(parents=True)
        for i in range(n):
            (root / "train" / w / f"{w}_{i}.JPEG").write_bytes(_jpeg(10 * k + i))
    return root


_REAL = worker.process_item


def _killed_on_victim(item):
    """process_item that dies as the OOM killer would make it die, on one image."""
    if item.name == VICTIM:
        os.kill(os.getpid(), signal.SIGKILL)
    return _REAL(item)


def test_a_dead_worker_stops_prep_naming_cause_and_image_and_the_rerun_completes(tmp_path, monkeypatch):
    src, out = _src(tmp_path / "src"), tmp_path / "out"
    monkeypatch.setattr(commits, "COMMIT_EVERY", 2)
    with monkeypatch.context() as m:
        m.setattr(worker, "process_item", _killed_on_victim)
        with pytest.raises(WorkerDied) as e:
            run_prep(PrepConfig(src=str(src), out=str(out), workers=2))
    assert "SIGKILL" in str(e.value) and VICTIM in str(e.value) and "rerun" in str(e.value)
    report = run_prep(PrepConfig(src=str(src), out=str(out), workers=2))["splits"]["train"]
    assert report["written"] == 6 and report["rejected"] == []


_SLOW_PREP = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from imagenet_prep.pack import worker as prep
    real, marker = prep.process_bytes, Path(sys.argv[1])
    def slow(data, name=None):
        marker.write_text("started")
        time.sleep(0.3)
        return real(data, name)
    prep.process_bytes = slow
    sys.argv = ["imgnet", *sys.argv[2:]]
    sys.path.insert(0, {root!r})
    from cli import main
    main()
""")


def _start_slow_prep(tmp_path, src, out):
    marker = tmp_path / "started"
    code = _SLOW_PREP.format(root=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", code, str(marker), "prep", "--src", str(src), "--out", str(out),
                             "--workers", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, IMGNET_COMMIT_EVERY="1"), cwd=ROOT)
    deadline = time.monotonic() + 60
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert marker.exists(), proc.stderr.read() if proc.poll() is not None else "no image started in 60 s"
    return proc


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _gone_within(pids, seconds: float) -> bool:
    """Whether every pid has exited (or is a zombie) within `seconds` (they close their pipes before that)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = []
        for p in pids:
            try:
                if Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    alive.append(p)
            except OSError:
                pass
        if not alive:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_sigterm_is_a_clean_stop_and_kill_9_leaves_no_worker_talking(tmp_path, how):
    src, out = _src(tmp_path / "src", n=6), tmp_path / "out"
    proc = _start_slow_prep(tmp_path, src, out)
    workers = _children(proc.pid)
    os.kill(proc.pid, getattr(signal, how))
    try:
        _, err = proc.communicate(timeout=30)  # EOF only once the workers, which share stderr, are gone too
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("workers kept the pipe open 30 s after the main process ended")
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    if how == "SIGTERM":
        assert proc.returncode == 130 and "interrupted" in err
    assert _gone_within(workers, 10), "workers outlived the main process"
    report = run_prep(PrepConfig(src=str(src), out=str(out), workers=1))["splits"]["train"]
    assert report["written"] == 12


def _stop_midway(src, out, monkeypatch):
    """A first run that stops with an I/O failure after committing 4 of the 6 images."""
    real = open

    def failing(path, *a, **kw):
        if os.fsdecode(path).endswith(VICTIM):
            raise OSError(errno.EIO, "Input/output error", os.fsdecode(path))
        return real(path, *a, **kw)
    with monkeypatch.context() as m:
        m.setattr(base, "open", failing, raising=False)
        with pytest.raises(ImgnetError, match="EIO"):
            run_prep(PrepConfig(src=str(src), out=str(out), workers=1))


def test_resuming_under_another_pillow_build_is_refused(tmp_path, monkeypatch):
    src, out = _src(tmp_path / "src"), tmp_path / "out"
    monkeypatch.setattr(commits, "COMMIT_EVERY", 2)
    monkeypatch.setattr(run, "pillow_build", lambda: "pillow-simd")
    _stop_midway(src, out, monkeypatch)
    monkeypatch.setattr(run, "pillow_build", lambda: "pillow")
    with pytest.raises(ImgnetError) as e:
        run_prep(PrepConfig(src=str(src), out=str(out), workers=1))
    msg = str(e.value)
    assert "pillow-simd" in msg and "this run has pillow" in msg and "--force" in msg and "pip install" in msg
    report = run_prep(PrepConfig(src=str(src), out=str(out), workers=1, force=True))["splits"]["train"]
    assert report["written"] == 6 and report["pillow"] == "pillow"


def test_report_of_a_resumed_split_covers_every_part(tmp_path, monkeypatch):
    src, out = _src(tmp_path / "src"), tmp_path / "out"
    monkeypatch.setattr(commits, "COMMIT_EVERY", 2)
    ticks = itertools.count(0, 1000.0)  # the first part: 1000 s between readings of the clock
    monkeypatch.setattr(commits.time, "perf_counter", lambda: next(ticks))
    _stop_midway(src, out, monkeypatch)
    ticks = itertools.count(0, 1.0)  # the resumed part: 1 s between readings
    monkeypatch.setattr(commits.time, "perf_counter", lambda: next(ticks))
    report = run_prep(PrepConfig(src=str(src), out=str(out), workers=1))["splits"]["train"]
    assert report["seconds"] >= 2000  # both commits of the first part counted, not only the resumed part's
    assert report["images_per_s"] == pytest.approx(6 / report["seconds"])


def test_report_lists_png_named_jpeg_and_16_bit_under_converted(tmp_path):
    src = _src(tmp_path / "src", n=1)
    (src / "train" / W1 / f"{W1}_png.JPEG").write_bytes(_jpeg(3, fmt="PNG"))
    deep = (np.arange(90 * 80, dtype=np.uint32).reshape(80, 90) * 7 % 65535).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(deep).save(buf, format="PNG")
    (src / "train" / W1 / f"{W1}_deep.png").write_bytes(buf.getvalue())
    report = run_prep(PrepConfig(src=str(src), out=str(tmp_path / "out"), workers=1))["splits"]["train"]
    converted = {c["name"]: c for c in report["converted"]}
    png, deep = f"train/{W1}/{W1}_png.JPEG", f"train/{W1}/{W1}_deep.png"
    assert converted[png] == {"name": png, "from_format": "PNG", "from_mode": "RGB"}
    assert converted[deep]["from_format"] == "PNG" and "16" in converted[deep]["from_mode"]
    assert set(converted) == {png, deep}


# -------------------------------------------------------------------------------- Kaggle CSV
_HEADER = "ImageId,PredictionString\n"


def test_kaggle_csv_with_bom_crlf_and_trailing_blank_lines_reads():
    rows = "ILSVRC2012_val_00000001,n01751748 1 2 3 4\r\nILSVRC2012_val_00000002,n09193705 5 6 7 8\r\n"
    truth = val_truth.csv_truth(("\ufeff" + _HEADER + rows + "\n\r\n  \n").encode("utf-8"), "LOC_val_solution.csv", None)
    assert truth.by_name == {"ILSVRC2012_val_00000001": "n01751748", "ILSVRC2012_val_00000002": "n09193705"}


def test_kaggle_csv_bad_row_names_its_line():
    data = _HEADER + "ILSVRC2012_val_00000001,n01751748 1 2 3 4\n\nILSVRC2012_val_00000002,dog 1 2 3 4\n"
    with pytest.raises(ImgnetError, match=r"LOC_val_solution.csv line 4: .*ILSVRC2012_val_00000002"):
        val_truth.csv_truth(data.encode(), "LOC_val_solution.csv", None)
    with pytest.raises(ImgnetError, match="line 1"):
        val_truth.csv_truth(b"Id,Label\n", "LOC_val_solution.csv", None)


def test_kaggle_csv_with_bom_labels_the_val_end_to_end(ilsvrc, tmp_path):
    _, val = layouts.real_images(ilsvrc, per_class=1, n_val=3)
    src = tmp_path / "src"
    flat = src / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    flat.mkdir(parents=True)
    for name, _, data in val:
        (flat / name).write_bytes(data)
    csv = (ilsvrc / "kaggle_loc" / "LOC_val_solution.csv").read_bytes()
    (src / "LOC_val_solution.csv").write_bytes(b"\xef\xbb\xbf" + csv.rstrip(b"\n") + b"\n\n\n")
    (src / "LOC_synset_mapping.txt").write_bytes((ilsvrc / "kaggle_loc" / "LOC_synset_mapping.txt").read_bytes())
    found = sources.discover(src)
    want = {n: w for n, w, _ in val}
    assert {i.name: found.label_map.all_names[i.label] for i in found.splits["val"]} == want


def test_a_split_that_ends_with_no_image_warns(tmp_path, capsys):
    src = tmp_path / "src"
    (src / "train" / W1).mkdir(parents=True)
    (src / "train" / W1 / "bad.JPEG").write_bytes(b"<html>not an image</html>")
    report = run_prep(PrepConfig(src=str(src), out=str(tmp_path / "out"), workers=1))["splits"]["train"]
    assert report["written"] == 0 and [r["name"] for r in report["rejected"]] == [f"train/{W1}/bad.JPEG"]
    assert "warning: train ends with 0 images" in capsys.readouterr().err

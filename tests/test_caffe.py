"""Caffe's list-file layout (sources/caffe.py): train.txt / val.txt of `<relpath> <label>` lines and a synsets
file give the records of the extracted layout for the same images and labels."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import layouts
from imagenet_prep import ImgnetError
from imagenet_prep.labels import load_val_ground_truth, sorted_wnids
from imagenet_prep.prep import PrepConfig, run_prep
from imagenet_prep.sources import discover
from imagenet_prep.synthetic import DEMO_WNIDS, class_image

WNIDS = DEMO_WNIDS[:3]


def _jpeg(seed: int, cls: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(class_image(np.random.default_rng(seed), cls, len(WNIDS), (120 + seed % 7, 96))).save(buf, "JPEG")
    return buf.getvalue()


def _images(per_class: int = 3, val_per_class: int = 2) -> tuple[list, list]:
    """train [(wnid, name, bytes)], val [(wnid, name, bytes)] with real val numbers of these classes."""
    truth = load_val_ground_truth()
    train = [(w, f"{w}_{j}.JPEG", _jpeg(10 * c + j, c)) for c, w in enumerate(WNIDS) for j in range(per_class)]
    val = [(w, f"ILSVRC2012_val_{n:08d}.JPEG", _jpeg(100 + n, c)) for c, w in enumerate(WNIDS)
           for n in [k + 1 for k, t in enumerate(truth) if t == w][:val_per_class]]
    return train, val


def _extracted(root: Path, train, val, flat_val: bool) -> Path:
    files = [(root / "train" / w, name, data) for w, name, data in train]
    files += [(root / "val" if flat_val else root / "val" / w, name, data) for w, name, data in val]
    for folder, name, data in files:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return root


def _caffe(root: Path, train, val, flat_val: bool, classes: list[str], synsets: str = "synsets.txt") -> Path:
    """The extracted tree plus train.txt, val.txt (in another order than the records') and a synsets file."""
    _extracted(root, train, val, flat_val)
    (root / synsets).write_text("".join(f"{w} words of {w}\n" if synsets == "synset_words.txt" else f"{w}\n"
                                        for w in classes))
    (root / "train.txt").write_text("".join(f"train/{w}/{n} {classes.index(w)}\n" for w, n, _ in reversed(train)))
    (root / "val.txt").write_text("".join(f"val/{'' if flat_val else w + '/'}{n} {classes.index(w)}\n"
                                          for w, n, _ in reversed(val)))
    return root


def _same_output(a: Path, b: Path, splits=("train", "val")) -> None:
    for split in splits:
        assert layouts.content(a, split) == layouts.content(b, split)
    assert json.loads((a / "labels.json").read_text()) == json.loads((b / "labels.json").read_text())
    ra, rb = (json.loads((d / "prep-report.json").read_text())["splits"] for d in (a, b))
    for split in splits:
        for key in ("found", "written", "rejected", "converted"):
            assert ra[split][key] == rb[split][key], (split, key)


@pytest.mark.parametrize("flat_val", [False, True])
def test_list_files_give_the_records_of_the_extracted_layout(tmp_path, flat_val):
    train, val = _images()
    # a flat extracted val has the ground truth's 1000 classes: Caffe's synsets file names the same 1000
    classes = sorted_wnids() if flat_val else sorted(WNIDS)
    ext = _extracted(tmp_path / "extracted", train, val, flat_val)
    caf = _caffe(tmp_path / "caffe", train, val, flat_val, classes, "synset_words.txt" if flat_val else "synsets.txt")
    found = discover(caf)
    assert found.layout == "caffe" and discover(ext).layout == "extracted"
    assert "train.txt" in found.origin["train"] and "val.txt" in found.origin["val"]
    for d, src in (("e", ext), ("c", caf)):
        run_prep(PrepConfig(src=str(src), out=str(tmp_path / d), workers=1))
    _same_output(tmp_path / "e", tmp_path / "c")
    report = json.loads((tmp_path / "c" / "prep-report.json").read_text())
    assert report["layout"] == "caffe" and report["splits"]["train"]["written"] == len(train)


def test_only_one_list_file_and_blank_lines(tmp_path):
    train, val = _images()
    src = _caffe(tmp_path / "src", train, val, False, sorted(WNIDS))
    (src / "val.txt").unlink()
    (src / "train.txt").write_text((src / "train.txt").read_text().replace("\n", "\n\n", 1))
    found = discover(src)
    assert list(found.splits) == ["train"] and len(found.splits["train"]) == len(train)
    with pytest.raises(ImgnetError, match="has no val split"):
        discover(src, splits=["val"])


@pytest.mark.parametrize("line,what", [
    ("train/{w}/{n}", "no label"),
    ("train/{w}/{n} one", "not an integer"),
    ("train/{w}/{n} -1", "not an integer"),
    ("train/{w}/{n} 3", "past the 3 classes"),
    ("../outside/{n} 0", "not a file inside"),
    ("/etc/{n} 0", "not a file inside"),
    ("train/{w}/ 0", "not a file inside"),
])
def test_a_bad_line_is_an_error_naming_file_and_line(tmp_path, line, what):
    train, val = _images()
    src = _caffe(tmp_path / "src", train, val, False, sorted(WNIDS))
    w, n, _ = train[0]
    good = (src / "train.txt").read_text()
    (src / "train.txt").write_text(good + line.format(w=w, n=n) + "\n")
    with pytest.raises(ImgnetError) as e:
        discover(src)
    msg = str(e.value)
    assert what in msg and f"{src / 'train.txt'} line {len(train) + 1}" in msg and "\n" not in msg


def test_a_line_listed_twice_is_an_error(tmp_path):
    train, val = _images()
    src = _caffe(tmp_path / "src", train, val, False, sorted(WNIDS))
    first = (src / "val.txt").read_text().splitlines()[0]
    (src / "val.txt").write_text((src / "val.txt").read_text() + first + "\n")
    with pytest.raises(ImgnetError, match=r"val.txt line \d+: .* is line 1 already"):
        discover(src)


def test_a_bad_synsets_file_is_an_error(tmp_path):
    train, val = _images()
    src = _caffe(tmp_path / "src", train, val, False, sorted(WNIDS))
    (src / "synsets.txt").write_text(f"{WNIDS[0]}\n{WNIDS[0]}\n")
    with pytest.raises(ImgnetError, match=r"synsets.txt line 2 .*is line 1 already"):
        discover(src)


def test_missing_and_junk_files_are_skipped_and_reported(tmp_path):
    train, val = _images()
    src = _caffe(tmp_path / "src", train, val, False, sorted(WNIDS))
    (src / "train" / WNIDS[0] / "Thumbs.db").write_bytes(b"x")
    (src / "train" / WNIDS[1] / "gone.JPEG").symlink_to(tmp_path / "nowhere")
    extra = [f"train/{WNIDS[0]}/missing.JPEG 0", f"train/{WNIDS[0]}/Thumbs.db 0", f"train/{WNIDS[1]}/gone.JPEG 1",
             f"train/{WNIDS[2]} 2"]
    (src / "train.txt").write_text((src / "train.txt").read_text() + "\n".join(extra) + "\n")
    report = run_prep(PrepConfig(src=str(src), out=str(tmp_path / "out"), workers=1))["splits"]["train"]
    rejected = {r["name"]: r["reason"] for r in report["rejected"]}
    assert rejected == {f"train/{WNIDS[0]}/missing.JPEG": "listed but not found",
                        f"train/{WNIDS[0]}/Thumbs.db": "system file",
                        f"train/{WNIDS[1]}/gone.JPEG": "a broken symbolic link",
                        f"train/{WNIDS[2]}": "not a regular file"}
    assert report["written"] == len(train) and report["found"] == len(train) + 4


def test_an_official_val_image_keeps_its_class_unless_relabelled(tmp_path):
    train, val = _images()
    src = _caffe(tmp_path / "src", train, val, False, sorted(WNIDS))
    lines = (src / "val.txt").read_text().splitlines()
    path, label = lines[0].rsplit(" ", 1)
    (src / "val.txt").write_text("\n".join([f"{path} {(int(label) + 1) % 3}", *lines[1:]]) + "\n")
    with pytest.raises(ImgnetError, match="ground truth"):
        discover(src)


def test_real_caffe_files_label_the_real_val_images_as_the_extracted_layout(shared_data, tmp_path):
    n_val = 20
    names = [f"ILSVRC2012_val_{n:08d}.JPEG" for n in range(1, n_val + 1)]
    caf, ext = tmp_path / "caffe", tmp_path / "extracted" / "val"
    caf.mkdir()
    ext.mkdir(parents=True)
    for name in names:
        for d in (caf, ext):
            (d / name).symlink_to(shared_data / "images" / "val_original" / name)
    shutil.copy(shared_data / "caffe_ilsvrc12" / "synset_words.txt", caf)
    lines = (shared_data / "caffe_ilsvrc12" / "val.txt").read_text().splitlines()[:n_val]
    (caf / "val.txt").write_text("\n".join(lines) + "\n")
    assert discover(caf).layout == "caffe"
    run_prep(PrepConfig(src=str(caf), out=str(tmp_path / "c"), workers=1))
    run_prep(PrepConfig(src=str(ext.parent), out=str(tmp_path / "e"), workers=1))
    _same_output(tmp_path / "e", tmp_path / "c", splits=("val",))

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from imagenet_prep.errors import ImgnetError
from imagenet_prep.labels import build_label_map
from trainer.labelsets import (blacklisted, figure_table, ilsvrc2012_val, image_values, label_sets, load_blacklist, load_real,
                               rates, real_lists, sorted_wnids)

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "imagenet_prep" / "data"


def val(n: int) -> str:
    return f"ILSVRC2012_val_{n:08d}.JPEG"


@pytest.fixture(scope="module")
def sorted_labels():
    return build_label_map(sorted_wnids(), order="sorted").to_json()


@pytest.fixture(scope="module")
def devkit_labels():
    return build_label_map(sorted_wnids(), order="devkit").to_json()


def sums_of(values):
    return {k: v.sum() for k, v in values.items()}


# ------------------------------------------------------------------------------------- scoring
def test_real_scoring_hand_made_case():
    # 5 images, 4 classes; top-2 predictions best first
    top = np.array([[0, 1], [2, 3], [1, 0], [3, 2], [0, 2]])
    y = np.array([0, 3, 2, 1, 1])       # original: image 0 right; 1 top-5 only; 2, 3 wrong; 4 wrong
    real = np.array([[0, -1],           # right at top-1
                     [3, 2],            # multi-label: top-1 (2) is in the list
                     [-1, -1],          # empty: left out of ReaL
                     [0, 1],            # neither prediction in the list
                     [2, -1]])          # second guess in the list: top-5 right, top-1 wrong
    v = image_values(top, y, {"real": real})
    assert v["n"].tolist() == [1, 1, 1, 1, 1]
    assert v["top1_err"].tolist() == [0, 1, 1, 1, 1]
    assert v["top5_err"].tolist() == [0, 0, 1, 1, 1]
    assert v["real_n"].tolist() == [1, 1, 0, 1, 1]
    assert v["real_top1_err"].tolist() == [0, 0, 0, 1, 1]
    assert v["real_top5_err"].tolist() == [0, 0, 0, 1, 0]
    r = rates(sums_of(v))
    assert r == {"n": 5, "top1_err": 4 / 5, "top5_err": 3 / 5, "real_n": 4, "real_top1_err": 2 / 4,
                 "real_top5_err": 1 / 4}


def test_keep_leaves_images_out_of_every_figure():
    top = np.array([[0, 1], [2, 3], [1, 0]])
    y = np.array([0, 3, 2])
    real = np.array([[0], [2], [1]])
    keep = np.array([True, False, True])
    r = rates(sums_of(image_values(top, y, {"real": real}, keep)))
    assert r == {"n": 2, "top1_err": 1 / 2, "top5_err": 1 / 2, "real_n": 2, "real_top1_err": 0.0,
                 "real_top5_err": 0.0}


def test_torch_and_numpy_agree_and_sums_stay_tensors():
    rng = np.random.default_rng(0)
    top = np.stack([rng.permutation(10)[:5] for _ in range(64)])
    y = rng.integers(0, 10, 64)
    real = np.where(rng.random((64, 3)) < 0.5, rng.integers(0, 10, (64, 3)), -1)
    keep = rng.random(64) < 0.8
    a = image_values(top, y, {"real": real}, keep)
    b = image_values(torch.from_numpy(top), torch.from_numpy(y), {"real": torch.from_numpy(real)},
                     torch.from_numpy(keep))
    assert a.keys() == b.keys()
    for k in a:
        assert isinstance(b[k], torch.Tensor) and b[k].dtype == torch.int64
        assert b[k].tolist() == a[k].tolist(), k
    assert rates(sums_of(a)) == rates(sums_of(b))


def test_rates_with_no_images_is_none_and_other_sums_pass():
    assert rates({"n": 0, "top1_err": 0, "real_n": 0, "real_top1_err": 0}) == {
        "n": 0, "top1_err": None, "real_n": 0, "real_top1_err": None}
    assert rates({"n": torch.tensor(4), "top5_err": torch.tensor(1), "loss_sum": torch.tensor(2.5)}) == {
        "n": 4, "top5_err": 0.25, "loss_sum": 2.5}


# ----------------------------------------------------------------------------------- shipped data
def test_shipped_files_are_the_published_ones(shared_data):
    assert (DATA / "real.json").read_bytes() == (shared_data / "real_labels" / "real.json").read_bytes()
    assert (DATA / "real_labels_LICENSE.txt").read_bytes() == (shared_data / "real_labels" / "LICENSE").read_bytes()
    blk = "ILSVRC2015_clsloc_validation_blacklist.txt"
    assert (DATA / blk).read_bytes() == (shared_data / "devkit_2015" / "data" / blk).read_bytes()


def test_blacklist_has_1762_val_numbers():
    b = load_blacklist()
    assert len(b) == 1762 and min(b) >= 1 and max(b) <= 50_000
    assert {36, 50, 56, 103, 127} <= b  # the file's first lines


def test_real_has_50000_lists():
    real = load_real()
    assert len(real) == 50_000
    assert sum(not ls for ls in real) == 3163
    assert real[0] == () and real[1] == (970, 795)


def test_real_maps_to_the_right_classes_in_any_order(sorted_labels, devkit_labels, shared_data):
    names = [val(n) for n in (2, 3, 4, 5)]
    expect = [{"alp", "ski"}, {"Shetland sheepdog, Shetland sheep dog, Shetland", "collie"}, {"soup bowl"},
              {"cradle", "teddy, teddy bear"}]
    for labels in (sorted_labels, devkit_labels):
        real, reason = real_lists(names, labels)
        assert reason is None
        words = [{labels["classes"][c]["words"] for c in row if c >= 0} for row in real.rows]
        assert words == expect
    real, _ = real_lists(names, devkit_labels)
    alp = next(c for c in devkit_labels["classes"] if c["wnid"] == "n09193705")
    assert alp["index"] == alp["ilsvrc2012_id"] - 1 and alp["index"] in real.rows[0]  # not sorted index 970

    # the original label (Caffe's val.txt, sorted order) is in the ReaL list for most labelled images
    caffe = [int(line.split()[1]) for line in (shared_data / "caffe_ilsvrc12" / "val.txt").read_text().splitlines()]
    names = [val(n) for n in range(1, 1001)]
    real, _ = real_lists(names, sorted_labels)
    labelled = (real.rows >= 0).any(1)
    agree = (real.rows == np.array(caffe[:1000])[:, None]).any(1)
    assert labelled.sum() == real.n and 900 < real.n < 1000
    assert agree[labelled].mean() > 0.85 and not agree[~labelled].any()


# ------------------------------------------------------------------------------- which split
def test_val_subset_in_any_record_order_is_the_2012_val(sorted_labels):
    names = [val(5), val(2), val(50_000)]
    numbers, reason = ilsvrc2012_val(names, sorted_labels)
    assert reason is None and numbers.tolist() == [5, 2, 50_000]
    real, _ = real_lists(names, sorted_labels)
    assert real.rows.shape[0] == 3 and sorted(real.rows[1][real.rows[1] >= 0].tolist()) == [795, 970]


@pytest.mark.parametrize("names, classes, words", [
    ([val(1)], 100, "100 classes"),                            # --classes 100
    (["n01440764_10026.JPEG"], 1000, "not an ILSVRC2012 val image"),  # train records
    ([val(1), "3f2a9c.jpeg"], 1000, "'3f2a9c.jpeg'"),          # another dataset
    ([val(50_001)], 1000, "1 to 50,000"),
    ([], 1000, "empty"),
])
def test_not_the_2012_val_gives_a_reason(names, classes, words):
    labels = build_label_map(sorted_wnids(), order="sorted", classes=classes).to_json()
    numbers, reason = ilsvrc2012_val(names, labels)
    assert numbers is None and words in reason and "\n" not in reason
    real, reason2 = real_lists(names, labels)
    assert real is None and reason2 == reason


def test_imagefolder_classes_are_not_the_2012_val():
    labels = build_label_map([f"class{i:03d}" for i in range(1000)]).to_json()
    numbers, reason = ilsvrc2012_val([val(1)], labels)
    assert numbers is None and reason == ("the label map holds classes that are not ILSVRC2012's ('class000', "
                                          "'class001', 'class002', ...): another dataset")


def test_blacklisted_marks_the_listed_images():
    names = [val(35), val(36), val(50), val(51)]
    assert blacklisted(names).tolist() == [False, True, True, False]
    all_val = blacklisted([val(n) for n in range(1, 50_001)])
    assert all_val.sum() == 1762
    with pytest.raises(ImgnetError, match="blacklist"):
        blacklisted(["v2/0/abc.jpeg"])


# ------------------------------------------------------------------------------ one split, batched
def test_label_sets_in_batches_equal_the_whole_split(sorted_labels):
    names = [val(n) for n in range(30, 70)]  # holds blacklisted 36, 50, 56
    rng = np.random.default_rng(1)
    top = np.stack([rng.permutation(1000)[:5] for _ in names])
    y = rng.integers(0, 1000, len(names))
    real, _ = real_lists(names, sorted_labels)
    top[::3, 0] = np.where(real.rows[::3, 0] >= 0, real.rows[::3, 0], top[::3, 0])  # some ReaL hits
    sets = label_sets(names, sorted_labels, exclude_blacklist=True)
    assert sets.excluded == 3 and sets.info() == {"real": True, "real_reason": None, "exclude_blacklist": True,
                                                  "excluded": 3}
    whole = rates(sums_of(image_values(top, y, {"real": real.rows}, ~blacklisted(names))))
    assert whole["n"] == 37 and whole["real_n"] == real.n - (real.rows[[6, 20, 26]] >= 0).any(1).sum()
    assert whole["real_top1_err"] < 1
    for conv in (np.asarray, torch.from_numpy):
        sums = {}
        for start in range(0, len(names), 16):  # batches of 16, the last one short
            v = sets.batch(conv(top[start:start + 16]), conv(y[start:start + 16]), start)
            sums = {k: sums.get(k, 0) + t.sum() for k, t in v.items()}
        assert rates(sums) == whole


def test_label_sets_without_real_or_blacklist(sorted_labels):
    sets = label_sets([val(1), val(2)], build_label_map(sorted_wnids(), classes=10).to_json())
    assert sets.lists == {} and "10 classes" in sets.reasons["real"] and sets.keep is None
    v = sets.batch(np.array([[1, 2]]), np.array([1]), 1)
    assert set(v) == {"n", "top1_err", "top5_err"}
    with pytest.raises(ImgnetError, match="leave out --exclude-blacklist"):
        label_sets(["0/a.jpeg"], sorted_labels, exclude_blacklist=True)
    assert label_sets([val(36)], sorted_labels).excluded == 0  # the default keeps every image


def test_figure_table_rows_and_notes(sorted_labels):
    figures = {"n": 48238, "top1_err": 0.407, "top5_err": 0.182, "real_n": 45200, "real_top1_err": 0.35,
               "real_top5_err": 0.14}
    sets = label_sets([val(36), val(37)], sorted_labels, exclude_blacklist=True)
    text = figure_table({"center": figures, "ten-crop": {"n": 10, "top1_err": 0.5, "top5_err": None}}, sets.info())
    lines = text.splitlines()
    assert lines[1].split() == ["center", "ILSVRC2012", "0.4070", "0.1820", "48,238"]
    assert lines[2].split() == ["center", "ReaL", "0.3500", "0.1400", "45,200"]
    assert lines[3].split() == ["ten-crop", "ILSVRC2012", "0.5000", "-", "10"]
    assert lines[4].startswith("blacklist: 1 image of") and len(lines) == 5
    other = label_sets([val(1)], build_label_map(sorted_wnids(), classes=100).to_json())
    assert figure_table({"center": {"n": 1, "top1_err": 0, "top5_err": 0}}, other.info()).splitlines()[-1] == (
        "ReaL: not computed: the label map has 100 classes, not the 1000 of ILSVRC2012 (a --classes subset or "
        "another dataset)")


# -------------------------------------------------------------------------------------- wheel
@pytest.mark.slow
def test_shipped_data_reaches_the_wheel(tmp_path):
    src = tmp_path / "src"  # a copy, so that the build leaves nothing in the repository
    src.mkdir()
    for f in ("pyproject.toml", "README.md", "cli.py"):
        shutil.copy(REPO / f, src / f)
    for d in ("imagenet_prep", "trainer"):
        shutil.copytree(REPO / d, src / d, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("imgnet-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("real.json", "real_labels_LICENSE.txt", "ILSVRC2015_clsloc_validation_blacklist.txt",
              "ilsvrc2012_classes.json", "SOURCES.md"):
        assert f"imagenet_prep/data/{f}" in names, f
    assert "trainer/labelsets/real.py" in names

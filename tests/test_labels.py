import json
import sys
from pathlib import Path

import numpy as np
import pytest

from imagenet_prep.errors import ImgnetError
from imagenet_prep.labels import (ROOT_WNID, build_label_map, labels_sha256, load_class_meta, load_hierarchy,
                                  load_ilsvrc_classes, load_synset_words, parse_meta_mat, read_labels_json,
                                  write_labels_json)

REPO = Path(__file__).resolve().parents[1]


def ancestors(wnid, hierarchy):
    seen, stack = set(), [wnid]
    while stack:
        w = stack.pop()
        if w not in seen:
            seen.add(w)
            stack.extend(hierarchy[w])
    return seen


# ----------------------------------------------------------------------------------- shipped data
def test_shipped_classes_are_the_1000_in_devkit_order():
    classes = load_ilsvrc_classes()
    assert len(classes) == 1000 and len({c["wnid"] for c in classes}) == 1000
    assert [c["ilsvrc2012_id"] for c in classes] == list(range(1, 1001))
    assert classes[0]["wnid"] == "n02119789" and classes[0]["words"] == "kit fox, Vulpes macrotis"
    tench = next(c for c in classes if c["wnid"] == "n01440764")
    assert tench["ilsvrc2012_id"] == 449 and tench["words"].startswith("tench") and tench["gloss"]
    assert set(classes[0]) == {"wnid", "words", "gloss", "ilsvrc2012_id"}
    classes[0]["words"] = "changed"  # callers get copies
    assert load_ilsvrc_classes()[0]["words"] == "kit fox, Vulpes macrotis"


def test_shipped_hierarchy_reaches_the_root_from_every_class():
    h = load_hierarchy()
    assert h[ROOT_WNID] == [] and [w for w, ps in h.items() if not ps] == [ROOT_WNID]
    assert all(p in h for ps in h.values() for p in ps)  # closed under parents
    for c in load_ilsvrc_classes():
        assert ROOT_WNID in ancestors(c["wnid"], h)
    assert len(h) == 1860
    assert sum(len(ps) > 1 for ps in h.values()) == 75  # WordNet is a DAG
    assert load_synset_words()[ROOT_WNID] == "entity"


def test_shipped_data_equals_the_devkit_meta_mat(shared_data):
    real = parse_meta_mat(shared_data / "devkit_t12" / "data" / "meta.mat")
    shipped = load_class_meta()
    assert list(real.synsets) == list(shipped.synsets)
    assert real.hierarchy == shipped.hierarchy


def test_shipped_hierarchy_is_wordnet_is_a(shared_data):
    edges = set()
    for line in (shared_data / "wordnet" / "wordnet.is_a.txt").read_text().splitlines():
        parent, child = line.split()
        edges.add((parent, child))
    h = load_hierarchy()
    ours = {(p, c) for c, ps in h.items() for p in ps}
    assert ours <= edges
    # every is_a edge from a node we hold is there too (no parent left out)
    assert {(p, c) for p, c in edges if c in h} == ours


def test_generator_script_reproduces_the_shipped_file(shared_data, tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import make_class_metadata
    finally:
        sys.path.remove(str(REPO / "scripts"))
    out = tmp_path / "classes.json"
    assert make_class_metadata.main(["--data", str(shared_data), "--out", str(out)]) == 0
    assert out.read_bytes() == (REPO / "imagenet_prep" / "data" / "ilsvrc2012_classes.json").read_bytes()


# ------------------------------------------------------------------------------------ label maps
def wnids():
    return [c["wnid"] for c in load_ilsvrc_classes()]


def test_sorted_order_matches_keras_and_kaggle(shared_data):
    lm = build_label_map(wnids())
    keras = json.loads((shared_data / "keras" / "imagenet_class_index.json").read_text())
    assert lm.names == [keras[str(i)][0] for i in range(1000)]
    kaggle = [ln.split(" ", 1) for ln in (shared_data / "kaggle_loc" / "LOC_synset_mapping.txt").read_text().splitlines()]
    assert lm.names == [w for w, _ in kaggle]
    assert [c["words"] for c in lm.classes] == [words for _, words in kaggle]
    assert lm.classes[0]["wnid"] == "n01440764" and lm.index_of("n01751748") == 65  # sea snake, val image 1


def test_devkit_order_is_id_minus_one():
    lm = build_label_map(wnids(), order="devkit")
    assert lm.classes[0]["wnid"] == "n02119789"
    assert all(c["index"] == c["ilsvrc2012_id"] - 1 for c in lm.classes)
    assert lm.index_of("n01440764") == 448


@pytest.mark.parametrize("order", ["sorted", "devkit"])
def test_first_n_classes_renumbered_with_source_index(order):
    full = build_label_map(wnids(), order=order)
    lm = build_label_map(wnids(), order=order, classes=5)
    assert len(lm) == 5 and lm.names == full.names[:5]
    assert [c["index"] for c in lm.classes] == list(range(5))
    assert [c["source_index"] for c in lm.classes] == [full.index_of(n) for n in lm.names]
    assert lm.index_of(full.names[7]) is None  # a class of the source, dropped
    with pytest.raises(KeyError):
        lm.index_of("n99999999")
    # hierarchy: the kept classes and exactly their ancestors
    h = load_hierarchy()
    expect = set().union(*(ancestors(w, h) for w in lm.names))
    assert set(lm.hierarchy) == expect and ROOT_WNID in lm.hierarchy
    assert all(lm.hierarchy[w] == h[w] for w in expect)
    assert "source_index" not in full.classes[0]


def test_subset_of_wnids_is_renumbered_from_zero():
    lm = build_label_map(["n03888257", "n01440764", "n02102040", "n01440764"], order="devkit")
    assert lm.names == ["n02102040", "n01440764", "n03888257"]  # IDs 5, 449, 549
    assert [c["index"] for c in lm.classes] == [0, 1, 2]


def test_imagefolder_names_and_devkit_refusal():
    lm = build_label_map(["dog", "cat", "n01440764", "bird"])
    assert lm.names == ["bird", "cat", "dog", "n01440764"]
    assert lm.classes[1] == {"index": 1, "wnid": "cat", "words": "cat", "gloss": "", "ilsvrc2012_id": None}
    assert lm.classes[3]["ilsvrc2012_id"] == 449
    assert set(lm.hierarchy) == ancestors("n01440764", load_hierarchy())
    with pytest.raises(ImgnetError, match="'bird', 'cat', 'dog'"):
        build_label_map(["dog", "cat", "n01440764", "bird"], order="devkit")


@pytest.mark.parametrize("kwargs", [{"order": "alphabetical"}, {"classes": 0}, {"classes": 1001}])
def test_bad_label_map_settings(kwargs):
    with pytest.raises(ImgnetError):
        build_label_map(wnids(), **kwargs)


# ------------------------------------------------------------------------------------ labels.json
def test_labels_json_round_trip_and_hash(tmp_path):
    lm = build_label_map(wnids(), classes=3)
    path = write_labels_json(tmp_path, lm)
    assert path == tmp_path / "labels.json" and [p.name for p in tmp_path.iterdir()] == ["labels.json"]
    d = read_labels_json(tmp_path)
    assert d["order"] == "sorted" and d == lm.to_json()
    assert d["classes"][2] == {"index": 2, "wnid": lm.names[2], "words": lm.classes[2]["words"],
                               "gloss": lm.classes[2]["gloss"], "ilsvrc2012_id": lm.classes[2]["ilsvrc2012_id"],
                               "source_index": 2}
    assert labels_sha256(d) == labels_sha256(lm) == labels_sha256(json.loads(json.dumps(d)))
    assert labels_sha256(d) == labels_sha256(dict(d, hierarchy={}))  # the class list alone
    assert labels_sha256(d) != labels_sha256(build_label_map(wnids(), classes=4))
    assert labels_sha256(d) != labels_sha256(build_label_map(wnids(), order="devkit", classes=3))


def test_read_labels_json_names_the_bad_file(tmp_path):
    with pytest.raises(ImgnetError, match=str(tmp_path / "labels.json") + ".*not found"):
        read_labels_json(tmp_path)
    (tmp_path / "labels.json").write_text("{not json")
    with pytest.raises(ImgnetError, match="labels.json is not readable JSON"):
        read_labels_json(tmp_path)
    good = build_label_map(["a", "b"]).to_json()
    bad = dict(good, classes=[dict(good["classes"][0], index=1)])
    (tmp_path / "labels.json").write_text(json.dumps(bad))
    with pytest.raises(ImgnetError, match=r"classes\[0\] has index 1"):
        read_labels_json(tmp_path)
    (tmp_path / "labels.json").write_text(json.dumps({k: v for k, v in good.items() if k != "hierarchy"}))
    with pytest.raises(ImgnetError, match="hierarchy"):
        read_labels_json(tmp_path)


# ------------------------------------------------------------------------------------- meta.mat
def test_classes_only_meta_mat_takes_the_shipped_hierarchy(tmp_path):
    import scipy.io

    classes = load_ilsvrc_classes()
    dtype = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("gloss", "O"), ("children", "O")]
    table = np.zeros((1000, 1), dtype=dtype)
    for i, c in enumerate(classes):
        table[i, 0] = (np.array([[c["ilsvrc2012_id"]]], np.uint16), np.array([c["wnid"]]),
                       np.array([c["words"] + " (custom)"]), np.array([c["gloss"]]), np.zeros((1, 0), np.uint8))
    scipy.io.savemat(tmp_path / "meta.mat", {"synsets": table})
    meta = parse_meta_mat(tmp_path / "meta.mat")
    assert meta.classes[0]["words"] == "kit fox, Vulpes macrotis (custom)"
    assert meta.hierarchy == load_hierarchy()
    assert build_label_map(wnids(), meta=meta).classes[0]["words"] == "tench, Tinca tinca (custom)"


def test_unreadable_meta_mat_is_named(tmp_path):
    (tmp_path / "meta.mat").write_bytes(b"not a mat file")
    with pytest.raises(ImgnetError, match="meta.mat: not a readable ILSVRC2012 devkit meta.mat"):
        parse_meta_mat(tmp_path / "meta.mat")


# ------------------------------------------------------------------------------- val ground truth
def test_shipped_ground_truth_is_the_devkit_file(shared_data):
    from imagenet_prep.labels import load_val_ground_truth

    shipped = REPO / "imagenet_prep" / "data" / "ILSVRC2012_validation_ground_truth.txt"
    assert shipped.read_bytes() == (shared_data / "devkit_t12" / "data" / shipped.name).read_bytes()
    truth = load_val_ground_truth()
    assert len(truth) == 50_000 and truth[0] == "n01751748"  # README: val 1 is ID 490, sea snake
    caffe = [int(ln.split()[1]) for ln in (shared_data / "caffe_ilsvrc12" / "val.txt").read_text().splitlines()]
    wnids = sorted(c["wnid"] for c in load_ilsvrc_classes())
    assert [wnids.index(w) for w in truth[:2000]] == caffe[:2000]
    assert "ImageNet" in (REPO / "imagenet_prep" / "data" / "SOURCES.md").read_text().split(shipped.name, 1)[1]


def test_read_val_labels_takes_indices_and_wnids(tmp_path):
    from imagenet_prep.labels import read_val_labels

    wnids = sorted(c["wnid"] for c in load_ilsvrc_classes())
    f = tmp_path / "val.txt"
    f.write_text("# name label\nILSVRC2012_val_00000001.JPEG 65\n\nILSVRC2012_val_00000002 n09193705\n")
    assert read_val_labels(f, wnids) == {"ILSVRC2012_val_00000001.JPEG": "n01751748",
                                         "ILSVRC2012_val_00000002": "n09193705"}


@pytest.mark.parametrize("text, message", [
    ("a.JPEG 1000\n", r"line 1 is 'a.JPEG 1000'; expected '<name> <index or wnid>' with an index from 0 to 999"),
    ("a.JPEG n99999999\n", "line 1"),
    ("a.JPEG\n", "line 1"),
    ("a.JPEG 1\nb.JPEG 2 3\n", "line 2"),
    ("a.JPEG 1\na.JPEG 2\n", "line 2 labels a.JPEG a second time"),
    ("# nothing\n", "holds no labels"),
])
def test_read_val_labels_names_the_bad_line(tmp_path, text, message):
    from imagenet_prep.labels import read_val_labels

    (tmp_path / "val.txt").write_text(text)
    with pytest.raises(ImgnetError, match=message):
        read_val_labels(tmp_path / "val.txt", sorted(c["wnid"] for c in load_ilsvrc_classes()))


@pytest.mark.slow
def test_shipped_data_files_reach_the_wheel(tmp_path):
    """package-data must carry every file of imagenet_prep/data into a built wheel, not only an editable install."""
    import shutil
    import subprocess
    import zipfile

    src = tmp_path / "src"  # a clean copy: a build/ folder left in the repository could hide a missing file
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for part in ("pyproject.toml", "README.md", "cli.py", "imagenet_prep", "trainer"):
        copy = shutil.copytree if (REPO / part).is_dir() else shutil.copy
        copy(REPO / part, src / part, **({"ignore": ignore} if (REPO / part).is_dir() else {}))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path)], check=True, capture_output=True, cwd=tmp_path)
    wheel = next(tmp_path.glob("imgnet-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    data = sorted(p.name for p in (REPO / "imagenet_prep" / "data").iterdir() if p.is_file())
    assert "ILSVRC2012_validation_ground_truth.txt" in data
    assert {f"imagenet_prep/data/{n}" for n in data} <= names
    assert {"imagenet_prep/sources/kaggle_zip.py", "imagenet_prep/sources/wds.py", "imagenet_prep/pack/run.py", "cli.py"} <= names


def _crash(task):
    """A MAT reader that dies by a signal, as scipy's does on some damaged files."""
    import faulthandler
    import os
    import signal

    faulthandler.disable()
    os.kill(os.getpid(), signal.SIGSEGV)


def test_a_meta_mat_that_crashes_the_mat_reader_is_one_line(ilsvrc, monkeypatch):
    from fixtures import generated
    from imagenet_prep import labels

    data = (ilsvrc / "devkit_t12" / "data" / "meta.mat").read_bytes()
    assert len(parse_meta_mat(data).synsets) == 1860  # whole, it reads
    flipped = bytearray(data)
    if generated(ilsvrc):  # the bit below is the real file's: here a damaged table that scipy refuses
        flipped = flipped[:len(data) // 2]
    else:
        flipped[27688] ^= 0x80  # a flipped bit that crashes the reading of the table (SIGSEGV) in the scipy tested
    with pytest.raises(ImgnetError, match="meta.mat") as e:
        parse_meta_mat(bytes(flipped), origin="devkit/data/meta.mat")
    assert "\n" not in str(e.value)
    monkeypatch.setattr(labels, "_read_meta_mat", _crash)  # whatever the scipy: a reader that crashes
    with pytest.raises(ImgnetError, match=r"devkit/data/meta.mat: not a readable .* crashed .*SIGSEGV") as e:
        parse_meta_mat(data, origin="devkit/data/meta.mat")
    assert "\n" not in str(e.value)

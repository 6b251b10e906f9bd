import io
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import pytest

from imagenet_prep.errors import ImgnetError
from imagenet_prep.sources import Item, discover, read_item

N_VAL = 100  # images/val_original holds ILSVRC2012_val_00000001-00000100


# ------------------------------------------------------------------------------------ helpers
def val_name(n: int) -> str:
    return f"ILSVRC2012_val_{n:08d}.JPEG"


def caffe_val(shared: Path) -> dict[str, str]:
    """Reference val labels as wnids: caffe val.txt (sorted-wnid index) through caffe synsets.txt."""
    synsets = (shared / "caffe_ilsvrc12" / "synsets.txt").read_text().split()
    pairs = (ln.split() for ln in (shared / "caffe_ilsvrc12" / "val.txt").read_text().splitlines()[:N_VAL])
    return {name: synsets[int(i)] for name, i in pairs}


def link_val(shared: Path, dest: Path, numbers=range(1, N_VAL + 1)) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for n in numbers:
        (dest / val_name(n)).symlink_to(shared / "images" / "val_original" / val_name(n))
    return dest


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def devkit_tgz(shared: Path, dest: Path) -> Path:
    path = dest / "ILSVRC2012_devkit_t12.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for f in ("meta.mat", "ILSVRC2012_validation_ground_truth.txt"):
            tar.add(shared / "devkit_t12" / "data" / f, arcname=f"ILSVRC2012_devkit_t12/data/{f}")
    return path


def imagenette(shared: Path, split: str = "train") -> Path:
    return shared / "images" / "imagenette2_224_subset" / split


# ------------------------------------------------------------------------------- val labels
@pytest.mark.parametrize("devkit", ["ILSVRC2012_devkit_t12", "devkit_t12", "downloads", "tar.gz"])
def test_flat_val_labels_from_the_devkit_match_caffe(ilsvrc, tmp_path, devkit):
    link_val(ilsvrc, tmp_path / "val")
    if devkit == "tar.gz":
        devkit_tgz(ilsvrc, tmp_path)
    else:
        (tmp_path / devkit).symlink_to(ilsvrc / "devkit_t12", target_is_directory=True)
    src = discover(tmp_path)
    assert src.layout == "extracted" and list(src.splits) == ["val"]
    assert len(src.label_map) == 1000  # a flat val alone: the devkit's classes
    items = src.splits["val"]
    assert [i.name for i in items] == [val_name(n) for n in range(1, N_VAL + 1)]
    assert {i.name: src.label_map.names[i.label] for i in items} == caffe_val(ilsvrc)
    assert items[0].label == 65  # README: val image 1 is n01751748, index 65 in sorted order
    caffe_index = [int(ln.split()[1]) for ln in (ilsvrc / "caffe_ilsvrc12" / "val.txt").read_text().splitlines()]
    assert [i.label for i in items] == caffe_index[:N_VAL]
    assert src.skipped == {"val": []}


def test_flat_val_labels_from_the_kaggle_csv_match_caffe(ilsvrc, tmp_path):
    link_val(ilsvrc, tmp_path / "ILSVRC" / "Data" / "CLS-LOC" / "val")
    for f in ("LOC_val_solution.csv", "LOC_synset_mapping.txt"):
        (tmp_path / f).symlink_to(ilsvrc / "kaggle_loc" / f)
    src = discover(tmp_path)
    assert src.layout == "kaggle" and "LOC_val_solution.csv" in src.origin["val"]
    assert {i.name: src.label_map.names[i.label] for i in src.splits["val"]} == caffe_val(ilsvrc)
    assert len(src.splits["val"]) == N_VAL


def test_devkit_order_labels_are_ground_truth_id_minus_one(ilsvrc, tmp_path):
    link_val(ilsvrc, tmp_path / "val")
    (tmp_path / "devkit_t12").symlink_to(ilsvrc / "devkit_t12", target_is_directory=True)
    src = discover(tmp_path, label_order="devkit")
    assert src.label_map.classes[0]["wnid"] == "n02119789"
    ids = [int(x) for x in (ilsvrc / "devkit_t12" / "data" / "ILSVRC2012_validation_ground_truth.txt").read_text().split()]
    assert [i.label for i in src.splits["val"]] == [ids[n] - 1 for n in range(N_VAL)]
    assert src.splits["val"][0].label == 489  # ID 490, sea snake


def test_classes_and_per_class_subsets(ilsvrc, tmp_path):
    link_val(ilsvrc, tmp_path / "val")
    (tmp_path / "devkit_t12").symlink_to(ilsvrc / "devkit_t12", target_is_directory=True)
    full = discover(tmp_path)
    sub = discover(tmp_path, classes=100)
    expect = [(i.name, i.label) for i in full.splits["val"] if i.label < 100]
    assert [(i.name, i.label) for i in sub.splits["val"]] == expect and 0 < len(expect) < N_VAL
    assert len(sub.label_map) == 100 and sub.label_map.classes[99]["source_index"] == 99
    one = discover(tmp_path, per_class=1)
    labels = [i.label for i in one.splits["val"]]
    assert len(labels) == len(set(labels)) == len({i.label for i in full.splits["val"]})
    # the first name of each class is kept
    first = {}
    for i in full.splits["val"]:
        first.setdefault(i.label, i.name)
    assert {i.label: i.name for i in one.splits["val"]} == first


# ----------------------------------------------------------------------------- official tars
def caffe_index(shared: Path) -> dict[str, int]:
    return {w: i for i, w in enumerate((shared / "caffe_ilsvrc12" / "synsets.txt").read_text().split())}


def test_official_archives_round_trip_exact_bytes(ilsvrc, tmp_path):
    truth = caffe_val(ilsvrc)
    train_wnids = ["n01440764", "n01751748", "n09193705"]
    pictures = sorted(imagenette(ilsvrc).glob("*/*.JPEG"))
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    originals = {}
    with tarfile.open(src_dir / "ILSVRC2012_img_train.tar", "w") as outer:
        for k, wnid in enumerate(train_wnids):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as inner:
                for j in range(3):
                    data = pictures[3 * k + j].read_bytes()
                    originals[(wnid, f"{wnid}_{j}.JPEG")] = data
                    add_bytes(inner, f"{wnid}_{j}.JPEG", data)
                add_bytes(inner, f"._{wnid}_0.JPEG", b"AppleDouble")
                long = f"{wnid}_{'9' * 120}.JPEG"  # past ustar's 100-character names: an extended header first
                originals[(wnid, long)] = pictures[-1 - k].read_bytes()
                add_bytes(inner, long, originals[(wnid, long)])
            add_bytes(outer, f"{wnid}.tar", buf.getvalue())
        add_bytes(outer, ".DS_Store", b"junk")
    with tarfile.open(src_dir / "ILSVRC2012_img_val.tar", "w") as tar:
        for n in range(1, 9):
            tar.add(ilsvrc / "images" / "val_original" / val_name(n), arcname=val_name(n))
        add_bytes(tar, "._ILSVRC2012_val_00000001.JPEG", b"AppleDouble")
    devkit_tgz(ilsvrc, src_dir)

    src = discover(src_dir)
    # a flat val labelled by the devkit: its 1000 classes, standard indices even with 3 class tars
    assert src.layout == "archives" and src.label_map.names == sorted(caffe_index(ilsvrc))
    train = src.splits["train"]
    assert [(i.label, i.name) for i in train] == sorted((i.label, i.name) for i in train) and len(train) == 12
    assert {i.label for i in train} == {caffe_index(ilsvrc)[w] for w in train_wnids}
    for item in train:
        assert item.path == str(src_dir / "ILSVRC2012_img_train.tar") and item.size > 0
        item = pickle.loads(pickle.dumps(item))  # what a worker process receives
        assert read_item(item) == originals[(src.label_map.names[item.label], item.name)]
    # skipped files are named where they are: the archive, then the member (the class tar, then its member)
    assert sorted(s["name"] for s in src.skipped["train"]) == ["ILSVRC2012_img_train.tar:.DS_Store"] + [
        f"ILSVRC2012_img_train.tar:{w}.tar:._{w}_0.JPEG" for w in train_wnids]
    val = src.splits["val"]
    assert [i.name for i in val] == [val_name(n) for n in range(1, 9)]
    for item in val:
        assert read_item(item) == (ilsvrc / "images" / "val_original" / item.name).read_bytes()
        assert src.label_map.names[item.label] == truth[item.name]
    assert src.skipped["val"] == [{"name": "ILSVRC2012_img_val.tar:._ILSVRC2012_val_00000001.JPEG",
                                   "reason": "hidden file"}]
    # without the val archive the classes are the class tars
    (src_dir / "ILSVRC2012_img_val.tar").unlink()
    assert discover(src_dir).label_map.names == train_wnids


def test_archive_beside_an_extracted_split(ilsvrc, tmp_path):
    with tarfile.open(tmp_path / "ILSVRC2012_img_val.tar", "w") as tar:
        tar.add(ilsvrc / "images" / "val_original" / val_name(1), arcname=val_name(1))
    shutil.copytree(imagenette(ilsvrc), tmp_path / "train", symlinks=True)
    devkit_tgz(ilsvrc, tmp_path)
    src = discover(tmp_path)
    assert src.layout == "archives" and len(src.splits["train"]) == 100
    assert src.origin["train"].endswith("train (labels: class folders)") and "ILSVRC2012_devkit_t12.tar.gz" in src.origin["val"]


def test_truncated_archive_is_an_error(ilsvrc, tmp_path):
    with tarfile.open(tmp_path / "ILSVRC2012_img_val.tar", "w") as tar:
        tar.add(ilsvrc / "images" / "val_original" / val_name(3), arcname=val_name(3))
    whole = (tmp_path / "ILSVRC2012_img_val.tar").read_bytes()
    (tmp_path / "ILSVRC2012_img_val.tar").write_bytes(whole[:4096])
    (tmp_path / "devkit_t12").symlink_to(ilsvrc / "devkit_t12", target_is_directory=True)
    with pytest.raises(ImgnetError, match="ILSVRC2012_img_val.tar.*complete archive"):
        discover(tmp_path)


def test_read_item_whole_file_and_short_read(tmp_path):
    (tmp_path / "a").write_bytes(b"0123456789")
    assert read_item(Item("a", 0, str(tmp_path / "a"))) == b"0123456789"
    assert read_item(Item("a", 0, str(tmp_path / "a"), offset=2, size=3)) == b"234"
    with pytest.raises(ImgnetError, match="should be 5 bytes at offset 8, read 2"):
        read_item(Item("a", 0, str(tmp_path / "a"), offset=8, size=5))


# ------------------------------------------------------------------------------- listing cache
@pytest.fixture
def tar_opens(monkeypatch) -> list:
    """Every tarfile.open call from here on: none means no tar header was read."""
    calls, real = [], tarfile.open

    def counting(*args, **kwargs):
        calls.append(args[0] if args else kwargs.get("name", kwargs.get("fileobj")))
        return real(*args, **kwargs)
    monkeypatch.setattr(tarfile, "open", counting)
    return calls


def small_archives(shared: Path, dest: Path, first: str = "n01440764_0.JPEG") -> Path:
    """Train tar of 2 class tars and a stray file, val tar of 3 images, junk in both, made-up bytes; devkit folder."""
    dest.mkdir(exist_ok=True)
    with tarfile.open(dest / "ILSVRC2012_img_train.tar", "w") as outer:
        for wnid, names in (("n01440764", [first, "n01440764_1.JPEG", "._n01440764_1.JPEG"]),
                            ("n01751748", ["n01751748_5.JPEG"])):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as inner:
                for k, name in enumerate(names):
                    add_bytes(inner, name, bytes([k]) * (100 + k))
            add_bytes(outer, f"{wnid}.tar", buf.getvalue())
        add_bytes(outer, "README.txt", b"not a class tar")
    with tarfile.open(dest / "ILSVRC2012_img_val.tar", "w") as tar:
        for n in range(1, 4):
            add_bytes(tar, val_name(n), bytes([n]) * 50)
        add_bytes(tar, ".DS_Store", b"junk")
    if not (dest / "devkit_t12").exists():
        (dest / "devkit_t12").symlink_to(shared / "devkit_t12", target_is_directory=True)
    return dest


def test_tar_listings_are_cached_and_reused(ilsvrc, tmp_path, tar_opens):
    src, cache = small_archives(ilsvrc, tmp_path / "src"), tmp_path / "data"
    cache.mkdir()
    first = discover(src, cache_dir=cache)
    assert tar_opens and len(list(cache.glob(".listing-*.npz"))) == 2 and not list(cache.glob("*.tmp"))
    assert discover(src) == first  # the cache changes nothing
    assert len(first.splits["train"]) == 3 and len(first.splits["val"]) == 3
    assert {s["name"] for s in first.skipped["train"]} == {"ILSVRC2012_img_train.tar:README.txt",
                                                           "ILSVRC2012_img_train.tar:n01440764.tar:._n01440764_1.JPEG"}
    tar_opens.clear()
    second = discover(src, cache_dir=cache)
    assert second == first and tar_opens == []  # no tar header read
    assert [read_item(i) for i in second.splits["train"]] == [read_item(i) for i in first.splits["train"]]
    only_val = discover(src, splits=["val"], cache_dir=cache)
    assert only_val.splits == {"val": first.splits["val"]} and tar_opens == []


def test_a_changed_tar_is_listed_again(ilsvrc, tmp_path, tar_opens):
    src, cache = small_archives(ilsvrc, tmp_path / "src"), tmp_path / "data"
    cache.mkdir()
    first = discover(src, cache_dir=cache)
    train_tar = src / "ILSVRC2012_img_train.tar"
    before = train_tar.stat()
    # the same size, another member name: only the modification time tells the listing is stale
    small_archives(ilsvrc, src, first="n01440764_9.JPEG")
    os.utime(train_tar, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    assert train_tar.stat().st_size == before.st_size
    tar_opens.clear()
    again = discover(src, cache_dir=cache)
    assert tar_opens and again == discover(src) != first
    assert [i.name for i in again.splits["train"]][:2] == ["n01440764_1.JPEG", "n01440764_9.JPEG"]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "folder"])
def test_a_damaged_listing_is_ignored_and_rewritten(ilsvrc, tmp_path, tar_opens, damage):
    src, cache = small_archives(ilsvrc, tmp_path / "src"), tmp_path / "data"
    cache.mkdir()
    first = discover(src, cache_dir=cache)
    for f in cache.glob(".listing-*.npz"):
        whole = f.read_bytes()
        f.unlink()
        if damage == "folder":
            f.mkdir()  # cannot be read nor replaced: listed each run, never an error
        else:
            f.write_bytes({"garbage": os.urandom(len(whole)), "truncated": whole[:len(whole) // 2], "empty": b""}[damage])
    tar_opens.clear()
    assert discover(src, cache_dir=cache) == first and tar_opens
    tar_opens.clear()
    assert discover(src, cache_dir=cache) == first and (tar_opens == []) == (damage != "folder")


def test_only_archives_are_cached(ilsvrc, tmp_path):
    src, cache = small_archives(ilsvrc, tmp_path / "src"), tmp_path / "data"
    cache.mkdir()
    (src / "ILSVRC2012_img_train.tar").unlink()
    for name in ("n01440764_0.JPEG", "n01440764_1.JPEG"):
        (src / "train" / "n01440764").mkdir(parents=True, exist_ok=True)
        (src / "train" / "n01440764" / name).write_bytes(b"x")
    src_info = discover(src, cache_dir=cache)
    assert len(src_info.splits["train"]) == 2 and len(list(cache.iterdir())) == 1  # the val tar's listing


# --------------------------------------------------------------------------- folder layouts
def test_extracted_train_with_flat_val(ilsvrc, tmp_path):
    shutil.copytree(imagenette(ilsvrc), tmp_path / "train", symlinks=True)
    (tmp_path / "train" / "n01440764" / ".DS_Store").write_bytes(b"junk")
    link_val(ilsvrc, tmp_path / "val", range(1, 11))
    (tmp_path / "ILSVRC2012_devkit_t12").symlink_to(ilsvrc / "devkit_t12", target_is_directory=True)
    src = discover(tmp_path, per_class=4)
    assert src.layout == "extracted" and len(src.label_map) == 1000
    index = caffe_index(ilsvrc)
    train = src.splits["train"]
    assert len(train) == 40 and {i.label for i in train} == {index[w] for w in os.listdir(tmp_path / "train")}
    assert [(i.label, i.name) for i in train] == sorted((i.label, i.name) for i in train)
    for i in train:
        assert Path(i.path) == tmp_path / "train" / src.label_map.names[i.label] / i.name
    assert src.skipped["train"] == [{"name": "train/n01440764/.DS_Store", "reason": "hidden file"}]
    assert {i.name: src.label_map.names[i.label] for i in src.splits["val"]} == {
        k: v for k, v in caffe_val(ilsvrc).items() if int(k[15:23]) <= 10}
    assert discover(tmp_path, per_class=4).splits == src.splits  # deterministic
    # a class folder that is not a wnid among wnid folders: an error naming it, not an extra class
    (tmp_path / "train" / "cat").mkdir()
    with pytest.raises(ImgnetError, match="class folder 'cat' is not a wnid, beside 10 wnid class folders"):
        discover(tmp_path)
    (tmp_path / "train" / "cat").rmdir()  # a wnid the ground truth does not know cannot share its label map
    (tmp_path / "train" / "n99999999").mkdir()
    with pytest.raises(ImgnetError, match="class folders 'n99999999' are not among the 1000 classes of .*ground_truth"):
        discover(tmp_path)


def test_kaggle_csv_class_missing_from_the_synset_list_is_skipped(ilsvrc, tmp_path):
    link_val(ilsvrc, tmp_path / "ILSVRC" / "Data" / "CLS-LOC" / "val", range(1, 4))
    (tmp_path / "LOC_val_solution.csv").symlink_to(ilsvrc / "kaggle_loc" / "LOC_val_solution.csv")
    truth = caffe_val(ilsvrc)
    lines = (ilsvrc / "kaggle_loc" / "LOC_synset_mapping.txt").read_text().splitlines()
    (tmp_path / "LOC_synset_mapping.txt").write_text(
        "\n".join(ln for ln in lines if not ln.startswith(truth[val_name(2)])) + "\n")
    src = discover(tmp_path)
    assert len(src.label_map) == 999
    assert [i.name for i in src.splits["val"]] == [val_name(1), val_name(3)]
    assert src.skipped["val"] == [{"name": f"ILSVRC/Data/CLS-LOC/val/{val_name(2)}", "reason": f"its class {truth[val_name(2)]} (from "
                                   f"{tmp_path / 'LOC_val_solution.csv'}) is not among the 999 classes of the source"}]


def test_imagefolder_tree_keeps_any_file_and_skips_system_junk(ilsvrc, tmp_path):
    pics = sorted(imagenette(ilsvrc).glob("*/*.JPEG"))
    for cls, names in {"dog": ["b.JPEG", "a.png", "noext"], "cat": ["z.jpg"]}.items():
        for k, name in enumerate(names):
            (tmp_path / "train" / cls).mkdir(parents=True, exist_ok=True)
            (tmp_path / "train" / cls / name).symlink_to(pics[k])
    (tmp_path / "train" / "dog" / "Thumbs.db").write_bytes(b"")
    (tmp_path / "train" / "dog" / ".hidden").mkdir()
    (tmp_path / "train" / "dog" / ".hidden" / "x.jpg").write_bytes(b"")
    (tmp_path / "train" / "dog" / "more").mkdir()
    (tmp_path / "train" / "dog" / "more" / "c.JPEG").symlink_to(pics[5])
    (tmp_path / "train" / "cat" / "broken.jpg").symlink_to(tmp_path / "nowhere")
    (tmp_path / "train" / "__MACOSX").mkdir()
    shutil.copytree(tmp_path / "train", tmp_path / "val", symlinks=True)
    src = discover(tmp_path)
    assert src.layout == "imagefolder" and src.label_map.names == ["cat", "dog"]
    assert src.label_map.classes[1] == {"index": 1, "wnid": "dog", "words": "dog", "gloss": "", "ilsvrc2012_id": None}
    assert [(i.label, i.name) for i in src.splits["train"]] == [
        (0, "z.jpg"), (1, "a.png"), (1, "b.JPEG"), (1, "more/c.JPEG"), (1, "noext")]
    assert [i.name for i in src.splits["val"]] == ["a.png", "b.JPEG", "more/c.JPEG", "noext", "z.jpg"]
    assert src.skipped["train"] == [
        {"name": "train/__MACOSX/", "reason": "system folder"},
        {"name": "train/cat/broken.jpg", "reason": "a broken symbolic link"},
        {"name": "train/dog/.hidden/", "reason": "hidden folder"},
        {"name": "train/dog/Thumbs.db", "reason": "system file"}]
    with pytest.raises(ImgnetError, match="label order 'devkit' needs ILSVRC2012 wnids.*'cat', 'dog'"):
        discover(tmp_path, label_order="devkit")
    only_val = discover(tmp_path, splits=["val"])
    assert list(only_val.splits) == ["val"] and only_val.label_map == src.label_map


# ------------------------------------------------------------------------------------ errors
def test_unknown_layout_lists_what_was_found(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(ImgnetError) as e:
        discover(tmp_path)
    msg = str(e.value)
    assert "notes.txt, photos/" in msg and "\n" not in msg
    for need in ("ILSVRC2012_img_train.tar", "ILSVRC2012_devkit_t12.tar.gz", "train/<wnid>/", "ILSVRC/Data/CLS-LOC",
                 "LOC_val_solution.csv", "train/<class>/"):
        assert need in msg


def test_flat_val_without_devkit_uses_the_shipped_ground_truth(ilsvrc, tmp_path):
    link_val(ilsvrc, tmp_path / "val")
    src = discover(tmp_path)
    assert "ILSVRC2012_validation_ground_truth.txt (shipped)" in src.origin["val"] and len(src.label_map) == 1000
    assert {i.name: src.label_map.names[i.label] for i in src.splits["val"]} == caffe_val(ilsvrc)


def test_a_devkit_that_disagrees_with_the_shipped_ground_truth(ilsvrc, tmp_path):
    link_val(ilsvrc, tmp_path / "val", range(1, 3))
    kit = tmp_path / "devkit_t12" / "data"
    kit.mkdir(parents=True)
    (kit / "meta.mat").symlink_to(ilsvrc / "devkit_t12" / "data" / "meta.mat")
    lines = (ilsvrc / "devkit_t12" / "data" / "ILSVRC2012_validation_ground_truth.txt").read_text().splitlines()
    lines[40_000] = "1" if lines[40_000] != "1" else "2"  # an image the val folder does not even hold
    (kit / "ILSVRC2012_validation_ground_truth.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(ImgnetError, match=r"ground_truth.txt \(line 40001\) labels ILSVRC2012_val_00040001.JPEG as "
                                          r"n\d{8}, but the ILSVRC2012 ground truth .*shipped.* has n\d{8}"):
        discover(tmp_path)


def test_val_class_folders_must_hold_the_official_classes(ilsvrc, tmp_path):
    val = imagenette(ilsvrc, "val")
    shutil.copytree(val, tmp_path / "val", symlinks=True)
    src = discover(tmp_path)  # the real val images in their real classes
    assert len(src.splits["val"]) == 50 and "class folders" in src.origin["val"]
    a, b = sorted(os.listdir(tmp_path / "val"))[:2]
    moved = sorted(os.listdir(tmp_path / "val" / a))[0]
    (tmp_path / "val" / a / moved).rename(tmp_path / "val" / b / moved)
    with pytest.raises(ImgnetError, match=f"labels {moved} as {b}, but the ILSVRC2012 ground truth .* has {a}"):
        discover(tmp_path)


@pytest.mark.parametrize("name, message", [
    ("ILSVRC2012_val_1.JPEG", "'ILSVRC2012_val_1.JPEG' does not match ILSVRC2012_val_%08d.JPEG"),
    ("val_00000001.jpg", "'val_00000001.jpg' does not match"),
    ("ILSVRC2012_val_00050001.JPEG", "ILSVRC2012_val_00050001.JPEG has number 50001, past the end of .*50000 lines"),
    ("ILSVRC2012_val_00000000.JPEG", "ILSVRC2012_val_00000000.JPEG has number 0"),
])
def test_val_names_the_ground_truth_cannot_label(ilsvrc, tmp_path, name, message):
    link_val(ilsvrc, tmp_path / "val", range(1, 3))
    (tmp_path / "val" / name).symlink_to(ilsvrc / "images" / "val_original" / val_name(1))
    (tmp_path / "val" / ".DS_Store").write_bytes(b"")  # junk is skipped before names are checked
    (tmp_path / "devkit_t12").symlink_to(ilsvrc / "devkit_t12", target_is_directory=True)
    with pytest.raises(ImgnetError, match=message):
        discover(tmp_path)


def test_mixed_files_and_folders_and_flat_train(ilsvrc, tmp_path):
    link_val(ilsvrc, tmp_path / "val", range(1, 3))
    (tmp_path / "val" / "n01440764").mkdir()
    with pytest.raises(ImgnetError, match="both image files .*ILSVRC2012_val_00000001.JPEG.* and folders"):
        discover(tmp_path)
    shutil.rmtree(tmp_path / "val")
    link_val(ilsvrc, tmp_path / "train", range(1, 3))
    with pytest.raises(ImgnetError, match="train holds images but no class folders"):
        discover(tmp_path)


# ------------------------------------------------------------------------------------ --val-labels
def test_val_labels_file_in_caffe_shape(ilsvrc, tmp_path):
    link_val(ilsvrc, tmp_path / "val")
    caffe = ilsvrc / "caffe_ilsvrc12" / "val.txt"
    shipped = discover(tmp_path)
    src = discover(tmp_path, val_labels=caffe)
    assert src.origin["val"].endswith(f"(labels: --val-labels {caffe})")
    assert [(i.name, i.label) for i in src.splits["val"]] == [(i.name, i.label) for i in shipped.splits["val"]]
    # an index is a sorted-wnid index whatever --label-order: the devkit order gives ID - 1 as always
    devkit = discover(tmp_path, val_labels=caffe, label_order="devkit")
    ids = [int(x) for x in (ilsvrc / "devkit_t12" / "data" / "ILSVRC2012_validation_ground_truth.txt").read_text().split()]
    assert [i.label for i in devkit.splits["val"]] == [ids[n] - 1 for n in range(N_VAL)]


def test_val_labels_override_the_devkit_and_name_missing_images(ilsvrc, tmp_path):
    link_val(ilsvrc, tmp_path / "val", range(1, 4))
    (tmp_path / "devkit_t12").symlink_to(ilsvrc / "devkit_t12", target_is_directory=True)
    f = tmp_path / "mine.txt"
    f.write_text(f"{val_name(1)} n01440764\n{val_name(2)} 1\nILSVRC2012_val_00000003 999\n")
    src = discover(tmp_path, val_labels=f)
    assert [i.label for i in src.splits["val"]] == [0, 1, 999]
    f.write_text(f"{val_name(1)} 0\n")
    with pytest.raises(ImgnetError, match=f"val image '{val_name(2)}' has no row 'ILSVRC2012_val_00000002' in --val-labels"):
        discover(tmp_path, val_labels=f)


def test_val_labels_need_a_flat_val(ilsvrc, tmp_path):
    shutil.copytree(imagenette(ilsvrc, "val"), tmp_path / "val", symlinks=True)
    (tmp_path / "v.txt").write_text(f"{val_name(1)} 0\n")
    with pytest.raises(ImgnetError, match="--val-labels .* labels a flat val, but .*val is sorted into class folders"):
        discover(tmp_path, val_labels=tmp_path / "v.txt")


def test_cli_prep_takes_val_labels(ilsvrc, tmp_path):
    from click.testing import CliRunner

    from cli import main

    link_val(ilsvrc, tmp_path / "src" / "val", range(1, 4))
    (tmp_path / "v.txt").write_text("".join(f"{val_name(n)} {n}\n" for n in range(1, 4)))
    r = CliRunner().invoke(main, ["prep", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "data"),
                                  "--workers", "1", "--val-labels", str(tmp_path / "v.txt")])
    assert r.exit_code == 0, r.output
    from imagenet_prep import open_split

    assert list(open_split(tmp_path / "data", "val").labels) == [1, 2, 3]
    (tmp_path / "bad.txt").write_text("x y z\n")
    r = CliRunner().invoke(main, ["prep", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "data2"),
                                  "--val-labels", str(tmp_path / "bad.txt")])
    assert r.exit_code == 2 and "line 1 is 'x y z'" in r.output and "Traceback" not in r.output


def test_torrent_tars_without_a_devkit_give_the_devkit_prep(ilsvrc, tmp_path):
    """The two official image tars alone (as torrents carry them): the shipped ground truth labels the val,
    and DATA equals the prep with the devkit, labels.json included."""
    import json

    import layouts
    from imagenet_prep.prep import PrepConfig, run_prep

    train, val = layouts.real_images(ilsvrc, per_class=2, n_val=12)
    for name, kit in (("with", ilsvrc), ("without", None)):
        layouts.official(tmp_path / name, train, val, kit)
        run_prep(PrepConfig(src=str(tmp_path / name), out=str(tmp_path / f"out-{name}"), workers=1))
    for split in ("train", "val"):
        assert layouts.content(tmp_path / "out-without", split) == layouts.content(tmp_path / "out-with", split)
    assert json.loads((tmp_path / "out-without" / "labels.json").read_text()) == \
        json.loads((tmp_path / "out-with" / "labels.json").read_text())

import shutil

import pytest

from imagenet_prep.errors import ImgnetError
from imagenet_prep.labels import build_label_map, load_class_meta
from imagenet_prep.pack.worker import init_worker as _init_worker, process_item
from imagenet_prep.store import decode_image, write_split
from imagenet_prep.v2 import SPLITS, VARIANTS, discover_v2, find_variant
from trainer.labelsets import real_lists

MATCHED = "imagenetv2-matched-frequency-format-val"
SORTED_WNIDS = sorted(c["wnid"] for c in load_class_meta().classes)
# folders whose string order differs from their numeric order ("10" < "2" < "999" as strings)
FILLED = (0, 2, 10, 100, 999)


@pytest.fixture(scope="module")
def images(ilsvrc):
    return sorted((ilsvrc / "images" / "val_original").glob("*.JPEG"))[:6]


def make_variant(root, images, variant=MATCHED, filled=FILLED, per_folder=2):
    """A V2 tree: folders 0..999 (all present, most empty), fixture images under opaque names in `filled`."""
    v = root / variant
    for n in range(1000):
        (v / str(n)).mkdir(parents=True)
    k = 0
    for n in filled:
        for j in range(per_folder):
            shutil.copy(images[k % len(images)], v / str(n) / f"{(n * 7919 + j):040x}.jpeg")
            k += 1
    return v


def labels(order="sorted", classes=None):
    return build_label_map(SORTED_WNIDS, order=order, classes=classes).to_json()


def test_folder_numbers_are_sorted_wnid_indices_in_numeric_order(tmp_path, images):
    v = make_variant(tmp_path, images)
    got = discover_v2(tmp_path, labels())  # the folder above the variant
    assert got.split == "v2-matched-frequency" and got.src == v and got.variant == MATCHED
    folders = [int(i.name.split("/")[0]) for i in got.items]
    assert folders == [0, 0, 2, 2, 10, 10, 100, 100, 999, 999]  # numeric, not "0 10 100 2 999"
    assert [i.label for i in got.items] == folders  # sorted order: index = folder number
    by_folder = {int(i.name.split("/")[0]): i.label for i in got.items}
    assert SORTED_WNIDS[by_folder[2]] == "n01484850" and SORTED_WNIDS[by_folder[10]] == "n01530575"
    # the ImageFolder trap: a string sort of the folder names would give folder "10" index 1
    assert sorted(map(str, FILLED)).index("10") == 1 != by_folder[10]
    assert got.missing == [] and got.outside == 0 and got.skipped == []


def test_devkit_order_maps_through_wnids(tmp_path, images):
    make_variant(tmp_path, images)
    lj = labels("devkit")
    got = discover_v2(tmp_path / MATCHED, lj)  # the variant folder itself
    meta = load_class_meta().by_wnid
    for it in got.items:
        wnid = SORTED_WNIDS[int(it.name.split("/")[0])]
        assert it.label == meta[wnid]["ilsvrc2012_id"] - 1 and lj["classes"][it.label]["wnid"] == wnid
    assert {i.label for i in got.items} != set(FILLED)


def test_classes_subset_skips_and_counts_the_others(tmp_path, images):
    make_variant(tmp_path, images)
    got = discover_v2(tmp_path, labels("sorted", classes=5))  # keeps sorted indices 0..4
    assert [i.label for i in got.items] == [0, 0, 2, 2]
    assert got.outside == 6 and got.outside_classes == 3
    with pytest.raises(ImgnetError, match="no images of DATA's 5 classes"):  # IDs 1..5: none filled
        discover_v2(tmp_path, labels("devkit", classes=5))


def test_items_pack_into_a_split_beside_train_and_val(tmp_path, images):
    make_variant(tmp_path / "src", images, filled=(2, 10), per_folder=1)
    lj = labels("devkit")
    got = discover_v2(tmp_path / "src", lj, split="v2-matched-frequency")
    _init_worker("raw", 90)
    records = []
    for it in got.items:
        data, reason, _ = process_item(it)  # prep's own per-image step: read, resize policy, encode
        assert reason is None
        records.append((decode_image(data, "raw"), it.label, it.name))
    s = write_split(tmp_path / "DATA", got.split, records, labels_json=lj)
    try:
        assert (tmp_path / "DATA" / "v2-matched-frequency.lmdb").is_dir()
        assert [s[i].name for i in range(len(s))] == [i.name for i in got.items]
        assert s.labels.tolist() == [i.label for i in got.items] and s[0].image.shape == (256, 256, 3)
        real, reason = real_lists(s.names, lj)  # never ReaL-scored: these are not the 2012 val images
        assert real is None and "not an ILSVRC2012 val image" in reason
    finally:
        s.close()


def test_missing_folders_junk_and_per_class(tmp_path, images):
    v = make_variant(tmp_path, images)
    shutil.rmtree(v / "500")
    (v / ".DS_Store").write_bytes(b"")
    (v / "2" / "Thumbs.db").write_bytes(b"")
    (v / "10" / "nested").mkdir()
    got = discover_v2(tmp_path, labels(), per_class=1)
    assert got.missing == [500]
    assert [s["name"] for s in got.skipped] == [".DS_Store", "10/nested/", "2/Thumbs.db"]
    assert len(got.items) == len(FILLED)


def test_split_choice_among_variants(tmp_path, images):
    for variant in VARIANTS:
        make_variant(tmp_path, images, variant=variant, filled=(1,), per_folder=1)
    with pytest.raises(ImgnetError, match="holds 3 ImageNetV2 variants"):
        find_variant(tmp_path)
    for variant, split in VARIANTS.items():
        assert find_variant(tmp_path, split) == (tmp_path / variant, split)
    assert SPLITS == ("v2-matched-frequency", "v2-threshold0.7", "v2-top-images")
    with pytest.raises(ImgnetError, match="not v2-top-images"):
        find_variant(tmp_path / MATCHED, "v2-top-images")


def test_renamed_variant_folder_needs_the_split_name(tmp_path, images):
    v = make_variant(tmp_path, images, filled=(3,), per_folder=1)
    renamed = v.rename(tmp_path / "my-v2")
    with pytest.raises(ImgnetError, match="holds no ImageNetV2 variant.*name its variant with --split"):
        find_variant(renamed)
    assert find_variant(renamed, "v2-threshold0.7") == (renamed, "v2-threshold0.7")


@pytest.mark.parametrize("bad, message", [
    ("007", "'007'/"), ("1000", "'1000'/"), ("cats", "'cats'/"), ("readme.txt", "'readme.txt'")])
def test_unexpected_entries_are_errors(tmp_path, images, bad, message):
    v = make_variant(tmp_path, images, filled=(1,), per_folder=1)
    (v / bad).mkdir() if not bad.endswith(".txt") else (v / bad).write_text("x")
    with pytest.raises(ImgnetError, match=message):
        discover_v2(tmp_path, labels())


def test_archive_only_and_foreign_label_maps(tmp_path, images):
    (tmp_path / "imagenetv2-matched-frequency.tar.gz").write_bytes(b"")
    with pytest.raises(ImgnetError, match="extract it first"):
        find_variant(tmp_path)
    make_variant(tmp_path, images, filled=(1,), per_folder=1)
    folder_labels = build_label_map(["cat", "dog"]).to_json()
    with pytest.raises(ImgnetError, match="not ILSVRC2012 wnids"):
        discover_v2(tmp_path, folder_labels)
    with pytest.raises(ImgnetError, match="not an ImageNetV2 split"):
        find_variant(tmp_path, "v3")

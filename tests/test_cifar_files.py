"""imagenet_prep.cifar_files: the four official CIFAR downloads read in place, on tiny downloads made here."""

import gzip
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

import cifar_downloads as cd
from imagenet_prep.cifar_files import LAYOUTS, find, find_all, open_download
from imagenet_prep.errors import ImgnetError

KEYS = [lay.key for lay in LAYOUTS]
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10"


def _check_split(d, split, expected, coarse=False):
    got = list(d.records(split, coarse=coarse))
    assert len(got) == len(expected) == d.splits()[split]
    for (name, label, image), (e_name, e_fine, e_coarse, e_image) in zip(got, expected):
        assert name == e_name
        assert label == (e_coarse if coarse else e_fine)
        assert image.dtype == np.uint8 and image.shape == (32, 32, 3) and image.flags.c_contiguous
        np.testing.assert_array_equal(image, e_image)


@pytest.mark.parametrize("archive", [True, False], ids=["tar.gz", "extracted"])
@pytest.mark.parametrize("key", KEYS)
def test_each_download_reads_back_its_pixels_labels_and_names(tmp_path, key, archive):
    want = cd.write(tmp_path, key, archive=archive)
    d = find(tmp_path)
    assert d is not None and d.key == key and d.path == want["path"] and d.is_archive == archive
    assert find(want["path"]).key == key  # the archive or folder itself
    assert d.classes() == want["classes"]
    assert d.splits() == {"train": 15, "test": 3} and not d.official_counts()
    for split in ("train", "test"):
        _check_split(d, split, want[split])
    if key.startswith("cifar-100"):
        assert d.classes(coarse=True) == want["coarse"]
        _check_split(d, "train", want["train"], coarse=True)
    else:
        with pytest.raises(ImgnetError, match="no coarse labels"):
            d.classes(coarse=True)


def test_binary_names_are_file_and_index_and_python_names_the_filenames(tmp_path):
    cd.write(tmp_path / "b", "cifar-10-binary")
    names = [n for n, _, _ in find(tmp_path / "b").records("train")]
    assert names[:4] == ["data_batch_1.bin:00000", "data_batch_1.bin:00001", "data_batch_1.bin:00002",
                         "data_batch_2.bin:00000"]
    want = cd.write(tmp_path / "p", "cifar-10-python")
    assert [n for n, _, _ in find(tmp_path / "p").records("test")] == [r[0] for r in want["test"]]


def test_python_3_pickles_at_protocol_2_read_the_same(tmp_path):
    want = cd.write(tmp_path, "cifar-100-python", py3=True)
    d = find(tmp_path)
    assert d.classes() == want["classes"]
    _check_split(d, "test", want["test"])


@pytest.mark.parametrize("key", ["cifar-10-python", "cifar-100-binary"])
def test_records_resume_from_any_index(tmp_path, key):
    want = cd.write(tmp_path, key)
    d = find(tmp_path)
    full = [(n, lab) for n, lab, _ in d.records("train")]
    for start in (0, 1, 3, 7, 14, 15):
        assert [(n, lab) for n, lab, _ in d.records("train", start=start)] == full[start:]


def test_detection_prefers_python_and_refuses_two_datasets(tmp_path):
    assert find(tmp_path) is None
    with pytest.raises(ImgnetError, match="no CIFAR download found"):
        open_download(tmp_path)
    cd.write(tmp_path, "cifar-10-binary")
    cd.write(tmp_path, "cifar-10-python")  # as make_official.py writes them, side by side
    assert [d.key for d in find_all(tmp_path)] == ["cifar-10-python", "cifar-10-binary"]
    assert find(tmp_path).key == "cifar-10-python"
    cd.write(tmp_path, "cifar-100-binary", archive=False)
    assert find(tmp_path / "cifar-100-binary").key == "cifar-100-binary"
    with pytest.raises(ImgnetError, match="both CIFAR-10 and CIFAR-100"):
        find(tmp_path)
    with pytest.raises(ImgnetError, match="expected one of train, test"):
        find(tmp_path / "cifar-100-binary").splits() and list(find(tmp_path / "cifar-100-binary").records("val"))


def _one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_truncated_archive_is_one_line(tmp_path):
    want = cd.write(tmp_path, "cifar-10-python")
    data = want["path"].read_bytes()
    want["path"].write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ImgnetError) as e:
        d = find(tmp_path)
        list(d.records("train"))
    msg = _one_line(e)
    assert "cifar-10-python.tar.gz" in msg and "damaged" in msg and "download it again" in msg


def test_not_gzip_is_one_line(tmp_path):
    (tmp_path / "cifar-10-binary.tar.gz").write_bytes(b"not a gzip file at all" * 10)
    with pytest.raises(ImgnetError) as e:
        find(tmp_path).splits()
    assert "cifar-10-binary.tar.gz is damaged or not a gzip tar archive" in _one_line(e)


@pytest.mark.parametrize("archive", [True, False], ids=["tar.gz", "extracted"])
def test_binary_batch_of_the_wrong_size_is_refused(tmp_path, archive):
    rec = np.zeros(3073 * 3 + 100, np.uint8).tobytes()  # three records and a torn one
    cd.write(tmp_path, "cifar-10-binary", archive=archive, override={"data_batch_3.bin": rec})
    with pytest.raises(ImgnetError) as e:
        find(tmp_path).splits()
    msg = _one_line(e)
    assert "data_batch_3.bin is 9,319 bytes; expected a multiple of the 3,073-byte record" in msg


def test_binary_label_out_of_range_is_refused(tmp_path):
    bad = np.zeros((2, 3074), np.uint8)
    bad[1, 1] = 100  # fine label 100 of 0..99
    cd.write(tmp_path, "cifar-100-binary", override={"test.bin": bad.tobytes()})
    with pytest.raises(ImgnetError) as e:
        list(find(tmp_path).records("test"))
    assert "test.bin: record 1 has label 100; expected 0..99" in _one_line(e)
    assert len(list(find(tmp_path).records("test", coarse=True))) == 2  # its coarse labels are fine


def test_binary_batch_over_the_official_size_is_refused_before_reading(tmp_path):
    big = np.zeros((10001, 3073), np.uint8).tobytes()
    cd.write(tmp_path, "cifar-10-binary", archive=False, override={"test_batch.bin": big})
    with pytest.raises(ImgnetError, match=r"test_batch.bin is 30,733,073 bytes; .* at most 30,730,000"):
        find(tmp_path).splits()


def test_python_batch_whose_parts_disagree_is_refused(tmp_path):
    batch = cd.py2_pickle({"batch_label": "x", "data": np.zeros((3, 3072), np.uint8), "labels": [1, 2],
                           "filenames": ["a.png", "b.png", "c.png"]})
    cd.write(tmp_path, "cifar-10-python", override={"data_batch_2": batch})
    with pytest.raises(ImgnetError) as e:
        list(find(tmp_path).records("train"))
    assert "data_batch_2 has 3 images, 2 labels and 3 file names; expected the same number" in _one_line(e)


def test_python_batch_of_another_size_than_meta_claims_is_refused(tmp_path):
    cd.write(tmp_path, "cifar-10-python", per_batch=3, override={
        "data_batch_5": cd.py2_pickle({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1],
                                       "filenames": ["a.png", "b.png"]})})
    d = find(tmp_path)
    assert d.splits() == {"train": 15, "test": 3}  # what batches.meta claims ...
    with pytest.raises(ImgnetError) as e:
        list(d.records("train"))  # ... checked against each batch as it is read
    assert "data_batch_5 has 2 images; expected the 3 that batches.meta's num_cases_per_batch says" in _one_line(e)


def test_python_batch_of_wrong_width_or_labels_is_refused(tmp_path):
    wide = cd.py2_pickle({"data": np.zeros((3, 3000), np.uint8), "labels": [0, 1, 2], "filenames": ["a", "b", "c"]})
    cd.write(tmp_path / "a", "cifar-10-python", override={"test_batch": wide})
    with pytest.raises(ImgnetError, match=r"test_batch: data is uint8 \(3, 3000\); expected uint8 \(n, 3072\)"):
        list(find(tmp_path / "a").records("test"))
    labels = cd.py2_pickle({"data": np.zeros((2, 3072), np.uint8), "fine_labels": [0, 100], "coarse_labels": [0, 1],
                            "filenames": ["a", "b"]})
    cd.write(tmp_path / "b", "cifar-100-python", override={"test": labels})
    with pytest.raises(ImgnetError, match=r"test: fine_labels holds 100; expected integers 0..99"):
        list(find(tmp_path / "b").records("test"))


def test_missing_member_and_wrong_class_count_are_named(tmp_path):
    cd.write(tmp_path / "a", "cifar-10-binary", override={"data_batch_4.bin": None})
    with pytest.raises(ImgnetError, match=r"cifar-10-batches-bin/data_batch_4.bin is missing"):
        find(tmp_path / "a").splits()
    cd.write(tmp_path / "b", "cifar-100-binary", archive=False, override={"coarse_label_names.txt": b"a\nb\n"})
    with pytest.raises(ImgnetError, match=r"coarse_label_names.txt names 2 classes \(2 distinct\); expected 20"):
        find(tmp_path / "b").classes(coarse=True)


def test_a_batch_that_would_run_a_command_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    evil = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    cd.write(tmp_path / "src", "cifar-10-python", override={"data_batch_1": evil})
    with pytest.raises(ImgnetError) as e:
        list(find(tmp_path / "src").records("train"))
    msg = _one_line(e)
    assert "cifar-10-batches-py/data_batch_1 is refused" in msg and "os.system" in msg
    assert not marker.exists()


@pytest.mark.slow
def test_make_official_downloads_agree_with_each_other_and_the_jpegs(tmp_path):
    """The real CIFAR-10 (JPEG copy): both official downloads that make_official.py writes give the same first
    records, and the test split follows the JPEG folder's class order (test/<class>/NNNN.jpg, sorted)."""
    if not (SHARED / "cifar10_jpg.tar.gz").is_file():
        pytest.skip(f"{SHARED}/cifar10_jpg.tar.gz not found")
    subprocess.run([sys.executable, str(SHARED / "make_official.py"), str(tmp_path)], check=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    py = find(tmp_path)
    binary = find_all(tmp_path)[1]
    assert (py.key, binary.key) == ("cifar-10-python", "cifar-10-binary")
    assert py.splits() == binary.splits() == {"train": 50000, "test": 10000} and py.official_counts()
    assert py.classes() == binary.classes() == cd.NAMES10
    for split in ("train", "test"):
        a = [r for _, r in zip(range(200), py.records(split))]
        b = [r for _, r in zip(range(200), binary.records(split))]
        assert [x[1] for x in a] == [x[1] for x in b]
        assert all(np.array_equal(x[2], y[2]) for x, y in zip(a, b))
    test = [(n, lab) for n, lab, _ in py.records("test")]
    assert [lab for _, lab in test] == sorted(lab for _, lab in test)  # class folders in NAMES order
    assert test[0][0] == "airplane_test_0000.png"


def test_a_renamed_archive_is_known_by_its_folder(tmp_path):
    want = cd.write(tmp_path, "cifar-100-binary")
    renamed = want["path"].rename(tmp_path / "c100.tgz")
    d = find(renamed)
    assert d.key == "cifar-100-binary"
    _check_split(d, "test", want["test"])
    (tmp_path / "other.tar.gz").write_bytes(gzip.compress(b"\0" * 1024))  # not a CIFAR archive: not ours
    assert find(tmp_path / "other.tar.gz") is None


def test_an_official_folder_with_a_missing_or_odd_file_names_it(tmp_path):
    want = cd.write(tmp_path, "cifar-10-python", archive=False, override={"batches.meta": None})
    d = find(want["path"])
    assert d.key == "cifar-10-python"
    with pytest.raises(ImgnetError, match=r"cifar-10-batches-py/batches.meta is missing; expected the "
                                          r"cifar-10-batches-py/ folder complete"):
        d.classes()
    want = cd.write(tmp_path / "b", "cifar-10-binary", archive=False)
    batch = want["path"] / "test_batch.bin"
    batch.unlink()
    os.mkfifo(batch)
    with pytest.raises(ImgnetError, match="test_batch.bin is not a regular file"):
        list(find(want["path"]).records("test"))


def test_a_download_closes_and_reopens(tmp_path):
    want = cd.write(tmp_path, "cifar-10-binary")
    with find(tmp_path) as d:
        first = next(d.records("test"))[0]
    assert next(d.records("test"))[0] == first == want["test"][0][0]  # read again after close


def test_members_outside_the_download_folder_are_not_taken(tmp_path):
    want = cd.write(tmp_path, "cifar-10-binary", override={"test_batch.bin": None})
    # the archive again, with a test batch under another folder: still missing from the download
    with tarfile.open(want["path"]) as t:
        entries = [(m, t.extractfile(m).read() if m.isfile() else None) for m in t.getmembers()]
    stray = tarfile.TarInfo("elsewhere/test_batch.bin")
    stray.size = 3073
    with tarfile.open(want["path"], "w:gz") as t:
        for m, data in entries:
            t.addfile(m, io.BytesIO(data) if data is not None else None)
        t.addfile(stray, io.BytesIO(bytes(3073)))
    with pytest.raises(ImgnetError, match=r"cifar-10-batches-bin/test_batch.bin is missing"):
        find(tmp_path).splits()

import json

import numpy as np
import pytest

from imagenet_prep import ImgnetError, open_split
from imagenet_prep.store import RAW_BYTES, decode_image, encode_image, write_split


def _records(n, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8), i % 3, f"img_{i:03d}.JPEG") for i in range(n)]


@pytest.mark.parametrize("fmt", ["lmdb", "hdf5"])
def test_raw_round_trip_is_exact(tmp_path, fmt):
    recs = _records(7)
    split = write_split(tmp_path, "train", recs, format=fmt)
    assert len(split) == 7 and split.meta["format"] == fmt and split.meta["count"] == 7
    for i, (img, label, name) in enumerate(recs):
        rec = split[i]
        assert rec.image.dtype == np.uint8 and rec.image.shape == (256, 256, 3)
        np.testing.assert_array_equal(rec.image, img)
        assert (rec.label, rec.name) == (label, name)
    out = np.empty((256, 256, 3), np.uint8)
    assert split.read_image(3, out=out) is out
    np.testing.assert_array_equal(out, recs[3][0])
    np.testing.assert_array_equal(split.labels, [r[1] for r in recs])


@pytest.mark.parametrize("fmt", ["lmdb", "hdf5"])
def test_jpeg_encoding_is_close_and_small(tmp_path, fmt):
    yy, xx = np.mgrid[0:256, 0:256]
    smooth = np.stack([xx, yy, (xx + yy) // 2], -1).astype(np.uint8)
    split = write_split(tmp_path, "val", [(smooth, 0, "a.JPEG")], format=fmt, encoding="jpeg", quality=95)
    assert split.meta["encoding"] == "jpeg"
    assert np.abs(split[0].image.astype(int) - smooth).mean() < 1.5
    assert len(split.read_bytes(0)) < RAW_BYTES / 5


def test_split_pickles_into_other_processes(tmp_path):
    import multiprocessing as mp

    recs = _records(4)
    split = write_split(tmp_path, "train", recs)
    split[0]  # opens the environment in this process
    with mp.get_context("spawn").Pool(1) as pool:
        sums = pool.map(_image_sum, [(split, i) for i in range(4)])
    assert sums == [int(r[0].sum()) for r in recs]


def _image_sum(args):
    split, i = args
    return int(split[i].image.sum())


def test_reader_refuses_missing_incomplete_and_mismatched(tmp_path):
    with pytest.raises(ImgnetError, match="no train split"):
        open_split(tmp_path, "train")
    write_split(tmp_path, "train", _records(3))
    lj = json.loads((tmp_path / "labels.json").read_text())
    lj["classes"] = lj["classes"][:2]
    (tmp_path / "labels.json").write_text(json.dumps(lj))
    with pytest.raises(ImgnetError, match="classes"):
        open_split(tmp_path, "train")


def test_codec_rejects_unknown_encoding():
    img = np.zeros((256, 256, 3), np.uint8)
    with pytest.raises(ImgnetError, match="encoding"):
        encode_image(img, "png")
    np.testing.assert_array_equal(decode_image(encode_image(img, "raw"), "raw"), img)


def test_lmdb_map_grows_as_needed(tmp_path):
    from imagenet_prep.store import LmdbWriter

    w = LmdbWriter(tmp_path / "grow.lmdb", {"t": 1}, expected_images=1, bytes_per_image=1)  # a 64 MB map
    start = w.env.info()["map_size"]
    img = encode_image(np.full((256, 256, 3), 7, np.uint8))
    for k in range(4):  # 4 x 100 raw images: about 79 MB
        w.commit([(img, 0, f"{k}_{j}") for j in range(100)], consumed=100 * (k + 1))
    assert w.env.info()["map_size"] > start and w.written == 400
    w.close()


def _out_of_order_writer(path, n=40, holes=(0, 3, 4, 17, 39)):
    """Records at their final index 0..n-1 committed in a shuffled order, with rejected `holes`."""
    from imagenet_prep.store import LmdbWriter

    w = LmdbWriter(path, {"test": "out of order"}, n)
    order = [i for i in np.random.default_rng(1).permutation(n).tolist() if i not in holes]
    for lo in range(0, len(order), 7):
        part = order[lo:lo + 7]
        w.commit_at([(i, bytes([i]) * 16, i % 5, f"r{i:03d}") for i in part], len(part), {f"unit{lo}": 1})
    return w, [i for i in range(n) if i not in holes]


def _read_back(w):
    return [(data, label, name) for data, label, name in w.read_all()]


def test_out_of_order_commits_end_in_index_order_without_holes(tmp_path):
    w, kept = _out_of_order_writer(tmp_path / "a.lmdb")
    assert w.progress["units"] == {f"unit{lo}": 1 for lo in range(0, len(kept), 7)}
    meta = w.finish({"split": "train"})
    assert meta["count"] == len(kept)
    assert _read_back(w) == [(bytes([i]) * 16, i % 5, f"r{i:03d}") for i in kept]
    w.close()


def test_compaction_killed_midway_is_completed_by_the_next_finish(tmp_path):
    from imagenet_prep.store import LmdbWriter

    w, kept = _out_of_order_writer(tmp_path / "a.lmdb")
    calls = []
    real = w._write_txn

    def dies_on_third(fill, nbytes=0):  # a kill after two compaction transactions committed
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real(fill, nbytes)

    w._write_txn = dies_on_third
    with pytest.raises(KeyboardInterrupt):
        w._compact(batch=4)
    w.close()
    w = LmdbWriter(tmp_path / "a.lmdb", {"test": "out of order"}, 40)
    w.finish({"split": "train"})
    assert _read_back(w) == [(bytes([i]) * 16, i % 5, f"r{i:03d}") for i in kept]
    w.close()

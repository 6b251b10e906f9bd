"""The store-format registry: a format defined and registered in this file alone packs a split through the
staging writer and `finalize`, and reads back through `open_split` and `imgnet verify`; the built-in formats'
paths are the ones prep has always used."""

import io
import json

import numpy as np
import pytest

from imagenet_prep import ImgnetError, open_split
from imagenet_prep.store import (Split, check_index, check_meta, decode_image, encode_image, formats, join_names,
                                 split_meta, split_names, write_split)
from imagenet_prep.verify import verify_data


# ------------------------------------------------------------------- a format of one .npz file per split
class NpzSplit(Split):
    """Each process loads the whole file once (it is small): images as one byte array cut at `offsets`."""

    def connect(self):
        with np.load(self.path) as z:
            return {k: z[k] for k in ("data", "offsets", "crc32")}

    def read_bytes(self, i):
        h = self._open()
        return h["data"][h["offsets"][i]:h["offsets"][i + 1]].tobytes()

    def load_image(self, i, out):
        return decode_image(self.read_bytes(i), self.encoding, out)

    def crc(self, i):
        return int(self._open()["crc32"][i])


class NpzFormat(formats.StoreFormat):
    name, title, suffix = "npz", "NPZ", ".npz"

    def read_meta(self, path):
        with np.load(path) as z:
            return json.loads(z["meta"].tobytes())

    def open(self, path, readahead=False):
        with np.load(path) as z:
            meta = json.loads(z["meta"].tobytes())
            n = check_meta(path, meta)
            labels, blob = z["labels"].astype(np.int64), z["name_bytes"].tobytes()
        names = split_names(blob, n)
        check_index(path, meta, n, labels, blob, len(names))
        return NpzSplit(path, self.name, meta, labels, names, readahead)

    def convert(self, staging, tmp, meta, progress):
        data, labels, names, crcs = [], [], [], []
        for d, label, name, crc in staging.scan():  # each staged record checked against its crc32
            data.append(d), labels.append(label), names.append(name), crcs.append(crc)
        offsets = np.cumsum([0] + [len(d) for d in data], dtype=np.int64)
        with open(tmp, "wb") as f:  # a file object: np.savez would add .npz to the name
            np.savez(f, data=np.frombuffer(b"".join(data), np.uint8), offsets=offsets,
                     labels=np.array(labels, np.int64), crc32=np.array(crcs, np.uint32),
                     name_bytes=np.frombuffer(join_names(names), np.uint8),
                     meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))


@pytest.fixture
def npz():
    fmt = formats.register(NpzFormat())  # the one line that adds a format
    yield fmt
    formats.unregister(fmt.name)


def _records(n, seed=0):
    rng = np.random.default_rng(seed)
    names = ["n01440764_1.JPEG", "line\nbreak.JPEG", "caf\udce9.JPEG", "\U0001f600.JPEG", "x"]
    return [(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8), i % 3, names[i % 5] + str(i)) for i in range(n)]


@pytest.mark.parametrize("encoding", ["raw", "jpeg"])
def test_a_format_registered_in_a_test_packs_reads_and_verifies(tmp_path, npz, encoding):
    recs = _records(7)
    write_split(tmp_path, "train", recs, format="npz", encoding=encoding, quality=85).close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.json", "train.npz"]  # staging removed
    split = open_split(tmp_path, "train")
    assert isinstance(split, NpzSplit) and split.format == "npz" and len(split) == 7
    assert split.meta["format"] == "npz" and split.meta["checksum"] == "crc32"
    for i, (img, label, name) in enumerate(recs):
        rec = split[i]
        want = img if encoding == "raw" else decode_image(encode_image(img, "jpeg", 85), "jpeg")
        np.testing.assert_array_equal(rec.image, want)
        assert (rec.label, rec.name) == (label, name)
        assert split.read_bytes(i) == encode_image(img, encoding, 85)
    assert split_meta(tmp_path, "train")["count"] == 7
    r = verify_data(tmp_path, progress=False)
    assert r["ok"] and r["splits"]["train"] == {"records": 7, "checked": "crc32", "bad": [], "error": None}


def test_verify_finds_a_changed_record_of_a_registered_format(tmp_path, npz):
    write_split(tmp_path, "val", _records(4)).close()
    write_split(tmp_path, "train", _records(4), format="npz").close()
    path = tmp_path / "train.npz"
    with np.load(path) as z:
        arrays = {k: z[k].copy() for k in z.files}
    arrays["data"][arrays["offsets"][2] + 100] ^= 0x10  # bit rot in record 2; its stored crc32 is kept
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())
    r = verify_data(tmp_path, progress=False)
    (bad,) = r["splits"]["train"]["bad"]
    assert not r["ok"] and bad["index"] == 2 and "checksum mismatch" in bad["reason"]
    assert r["splits"]["val"]["bad"] == []  # an LMDB split beside it, verified the same way


def test_registered_format_appears_in_names_and_messages(tmp_path, npz):
    assert formats.names() == ("lmdb", "hdf5", "npz") and formats.get("npz") is npz
    with pytest.raises(ImgnetError, match=r"train\.lmdb/ or train\.h5 or train\.npz"):
        open_split(tmp_path, "train")
    with pytest.raises(ValueError, match="registered already"):
        formats.register(NpzFormat())


def test_unknown_format_names_the_registered_ones(tmp_path):
    with pytest.raises(ImgnetError, match="unknown store format 'zarr'; expected one of lmdb, hdf5"):
        write_split(tmp_path, "train", _records(1), format="zarr")


# ----------------------------------------------------------------------- the built-ins, as prep uses them
def test_builtin_formats_keep_the_paths_prep_writes(tmp_path):
    lmdb, hdf5 = formats.get("lmdb"), formats.get("hdf5")
    assert formats.default() == "lmdb" and formats.names()[:2] == ("lmdb", "hdf5")
    assert (lmdb.path(tmp_path, "val"), lmdb.staging_path(tmp_path, "val")) == (tmp_path / "val.lmdb",) * 2
    assert hdf5.path(tmp_path, "val") == tmp_path / "val.h5"
    assert hdf5.staging_path(tmp_path, "val") == tmp_path / ".val.h5.staging.lmdb"
    assert lmdb.leftovers(tmp_path, "val") == [tmp_path / "val.lmdb"]
    assert hdf5.leftovers(tmp_path, "val") == [tmp_path / n for n in ("val.h5", ".val.h5.staging.lmdb", "val.h5.tmp")]
    assert formats.paths_of(tmp_path, "val") == [tmp_path / n for n in (
        "val.lmdb", "val.h5", ".val.h5.staging.lmdb", "val.h5.tmp")]
    assert (lmdb.disk_bytes(3, 10, 100), hdf5.disk_bytes(3, 10, 100)) == (300, 1300)
    assert (lmdb.disk_note(), hdf5.disk_note()) == ("", " (staged, then HDF5)")


def test_a_complete_split_wins_over_an_unfinished_one_of_another_format(tmp_path):
    from imagenet_prep.store import LmdbWriter, split_path

    write_split(tmp_path, "train", _records(2), format="hdf5").close()
    w = LmdbWriter(tmp_path / "train.lmdb", {"t": 1})  # an interrupted --format lmdb run beside it
    w.commit([(encode_image(_records(1)[0][0]), 0, "a")], consumed=1)
    w.close()
    assert split_path(tmp_path, "train") == (tmp_path / "train.h5", "hdf5")
    assert open_split(tmp_path, "train").format == "hdf5"


def test_in_order_and_indexed_commits_write_the_same_records(tmp_path):
    from imagenet_prep.store import LmdbWriter

    recs = [(encode_image(img), label, name) for img, label, name in _records(6)]
    a = LmdbWriter(tmp_path / "a.lmdb", {"t": 1})
    a.commit(recs[:4], consumed=5, rejected=[{"name": "bad", "reason": "r"}])
    a.commit(recs[4:], consumed=7)
    b = LmdbWriter(tmp_path / "b.lmdb", {"t": 1})
    b.commit_at([(i, *r) for i, r in enumerate(recs[:4])], 5, {"u0": 1}, rejected=[{"name": "bad", "reason": "r"}])
    b.commit_at([(i + 4, *r) for i, r in enumerate(recs[4:])], 2, {"u1": 1})
    assert {k: v for k, v in b.progress.items() if k != "units"} == a.progress and b.progress["units"] == {
        "u0": 1, "u1": 1}
    assert a.finish({"split": "train"}) == b.finish({"split": "train"})
    assert list(a.scan()) == list(b.scan())
    a.close(), b.close()

"""`imgnet verify`: every record checked against its prep-time CRC-32, damaged ones named, exit code 1."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from imagenet_prep import ImgnetError
from imagenet_prep.store import write_split
from imagenet_prep.verify import verify_data


def _records(n, seed=0):
    rng = np.random.default_rng(seed)  # noise: every image's bytes occur once in the file
    return [(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8), i % 2, f"n0144_{i}.JPEG") for i in range(n)]


@pytest.fixture(params=["lmdb", "hdf5"])
def data(tmp_path, request):
    recs = _records(6)
    write_split(tmp_path / "data", "train", recs, format=request.param).close()
    write_split(tmp_path / "data", "val", _records(3, seed=1), format=request.param).close()
    return tmp_path / "data", recs, request.param


def _packed_file(d: Path, fmt: str, split="train") -> Path:
    return d / f"{split}.lmdb" / "data.mdb" if fmt == "lmdb" else d / f"{split}.h5"


def _flip(path: Path, needle: bytes, at: int = 1000) -> None:
    """Flip one bit inside the stored copy of `needle` (a record's image bytes), as bit rot would."""
    blob = bytearray(path.read_bytes())
    pos = blob.index(needle) + at
    blob[pos] ^= 0x10
    path.write_bytes(bytes(blob))


def test_intact_data_verifies(data):
    d, recs, _ = data
    r = verify_data(d, progress=False)
    assert r["ok"] and r["splits"]["train"] == {"records": 6, "checked": "crc32", "bad": [], "error": None}
    assert r["splits"]["val"]["records"] == 3
    result = CliRunner().invoke(main, ["verify", str(d)])
    assert result.exit_code == 0 and "all records intact" in result.output


def test_flipped_bit_in_a_copy_is_found_by_name(data, tmp_path):
    d, recs, fmt = data
    copy = tmp_path / "copy"
    shutil.copytree(d, copy)
    _flip(_packed_file(copy, fmt), recs[4][0].tobytes())
    r = verify_data(copy, progress=False)
    assert not r["ok"]
    (bad,) = r["splits"]["train"]["bad"]
    assert bad["index"] == 4 and bad["name"] == "n0144_4.JPEG" and "checksum mismatch" in bad["reason"]
    assert r["splits"]["val"]["bad"] == []
    result = CliRunner().invoke(main, ["verify", str(copy)])
    assert result.exit_code == 1
    assert "damaged: train record 4 n0144_4.JPEG: checksum mismatch" in result.output
    assert verify_data(d, progress=False)["ok"]  # the original is untouched


def test_short_copy_is_reported_in_one_line(tmp_path):
    d = tmp_path / "data"
    write_split(d, "train", _records(4)).close()
    mdb = d / "train.lmdb" / "data.mdb"
    os.truncate(mdb, mdb.stat().st_size - 3 * 4096)
    r = verify_data(d, progress=False)
    assert not r["ok"] and "truncated" in r["splits"]["train"]["error"]
    result = CliRunner().invoke(main, ["verify", str(d), "--split", "train"])
    assert result.exit_code == 1 and "damaged: train:" in result.output and "truncated" in result.output


def test_damaged_label_index_is_reported(tmp_path):
    import h5py

    d = tmp_path / "data"
    write_split(d, "train", _records(3), format="hdf5").close()
    with h5py.File(d / "train.h5", "a") as f:
        f["labels"][1] = 0  # one label changed: the index checksum no longer matches
    r = verify_data(d, progress=False)
    assert not r["ok"] and "fails its checksum" in r["splits"]["train"]["error"]


def test_odd_names_verify_and_print_safely(tmp_path):
    d = tmp_path / "data"
    names = ["a\nb.JPEG", os.fsdecode(b"\xff.JPEG")]
    write_split(d, "train", [(img, 0, n) for (img, _, _), n in zip(_records(2), names)]).close()
    assert verify_data(d, progress=False)["ok"]
    _flip(d / "train.lmdb" / "data.mdb", _records(2)[0][0].tobytes())
    result = CliRunner().invoke(main, ["verify", str(d)])
    assert result.exit_code == 1 and "damaged: train record 0 'a\\nb.JPEG'" in result.output


def test_format_version_1_is_checked_by_decoding(tmp_path):
    data = tmp_path / "v1"
    shutil.copytree(Path(__file__).parent / "data" / "store_v1", data)
    r = verify_data(data, progress=False)
    assert r["ok"] and {s["checked"] for s in r["splits"].values()} == {"decode"}


def test_no_packed_data_is_a_clean_error(tmp_path):
    with pytest.raises(ImgnetError, match="no packed split"):
        verify_data(tmp_path, progress=False)
    result = CliRunner().invoke(main, ["verify", str(tmp_path)])
    assert result.exit_code == 2 and "error: no packed split" in result.output


def test_verify_scans_with_readahead_and_a_progress_bar_over_every_record(data, monkeypatch):
    """The scan reads the way a disk likes (LMDB readahead on; HDF5 advised sequential), training stays
    random access, and the bar counts every record of every split."""
    import imagenet_prep.verify as V
    from imagenet_prep.store import open_split

    d, _, fmt = data
    advice, bars = [], []
    real_fadvise = os.posix_fadvise
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, off, n, how: advice.append(how) or real_fadvise(fd, off, n, how))
    real_tqdm = V.tqdm

    class Bar(real_tqdm):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.counted = 0  # what it was told, shown or not (tqdm hides itself off a terminal)
            bars.append(self)

        def update(self, n=1):
            self.counted += n
            return super().update(n)

    monkeypatch.setattr(V, "tqdm", Bar)
    opened = []
    monkeypatch.setattr(V, "open_split", lambda *a, **kw: opened.append(kw) or open_split(*a, **kw))
    assert V.verify_data(d, progress=True)["ok"]
    assert opened == [{"readahead": True}] * 2
    assert len(bars) == 1 and bars[0].total == bars[0].counted == 9  # 6 train + 3 val records
    if fmt == "hdf5":
        assert set(advice) == {os.POSIX_FADV_SEQUENTIAL}
        advice.clear()
        s = open_split(d, "train")  # training's reader
        s.read_image(0)
        s.close()
        assert advice == [os.POSIX_FADV_RANDOM]

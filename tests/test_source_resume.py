"""kill -9 in the middle of `imgnet prep` on the timm shards and on the Kaggle zip, then the same command again:
the content of an uninterrupted run."""

import sys
from pathlib import Path

import pytest

import layouts
from imagenet_prep import ImgnetError, open_split, store
from imagenet_prep.prep import PrepConfig, run_prep

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["timm-wds", "kaggle-zip"])
def test_kill_9_then_rerun_gives_identical_content(ilsvrc_once, tmp_path, layout):
    originals = sorted((ilsvrc_once / "images" / "val_original").glob("*.JPEG"))  # the real ones: photographs up to 900x1000
    wnids = ["n01440764", "n01443537", "n01484850"]
    train = [(wnids[k % 3], f"{wnids[k % 3]}_{k}.JPEG", f.read_bytes()) for k, f in enumerate(originals * 2)]
    _, val = layouts.real_images(ilsvrc_once, per_class=0, n_val=4)
    src = tmp_path / "src"
    if layout == "timm-wds":
        layouts.timm_wds(src, train, val, shards=(4, 1))
    else:
        layouts.kaggle(src, train, val, ilsvrc_once)
    clean = tmp_path / "clean"
    run_prep(PrepConfig(src=str(src), out=str(clean), workers=1, split="train"))
    out = tmp_path / "killed"
    cmd = [sys.executable, str(ROOT / "cli.py"), "prep", "--src", str(src), "--out", str(out), "--workers", "1",
           "--split", "train"]
    layouts.kill_when_written(cmd, out / "train.lmdb" / "data.mdb", 12 * 196_608, commit_every=4)
    with pytest.raises(ImgnetError):
        open_split(out, "train")  # stopped part way: the reader refuses the incomplete split
    assert 0 < store.progress_of(out / "train.lmdb") < 200  # some records were committed before the kill
    run_prep(PrepConfig(src=str(src), out=str(out), workers=1, split="train"))
    assert layouts.content(out, "train") == layouts.content(clean, "train") and len(layouts.content(clean, "train")) == 200

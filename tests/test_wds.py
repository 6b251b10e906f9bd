"""timm's imagenet-1k-wds shards: the same DATA as the official tars of the same images, and bad shards."""

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

import layouts
from imagenet_prep import ImgnetError, open_split
from imagenet_prep.prep import PrepConfig, run_prep
from imagenet_prep.sources import discover


@pytest.fixture(scope="module")
def images(ilsvrc):
    return layouts.real_images(ilsvrc, per_class=3, n_val=20)


def _prep(src, out, **kw):
    return run_prep(PrepConfig(src=str(src), out=str(out), workers=1, **kw))


OPTIONS = [{}, {"classes": 500, "per_class": 2, "label_order": "devkit"},
           {"split": "val", "format": "hdf5", "encoding": "jpeg"}]


@pytest.mark.parametrize("opts", OPTIONS, ids=["default", "subset-devkit-order", "val-hdf5-jpeg"])
def test_shards_give_the_official_records(ilsvrc, images, tmp_path, opts):
    train, val = images
    ref = tmp_path / "ref"
    _prep(layouts.official(tmp_path / "official", train, val, ilsvrc), ref, **opts)
    src = layouts.timm_wds(tmp_path / "wds", train, val, shards=(3, 2))
    out = tmp_path / "out"
    report = _prep(src, out, **opts)
    assert report["layout"] == "timm-wds"
    for split in (["val"] if opts.get("split") == "val" else ["train", "val"]):
        got, want = layouts.content(out, split), layouts.content(ref, split)
        assert len(want) > 0 and got == want  # bytes, labels, names and order, record by record
        assert report["splits"][split]["bytes_differ"] == []
    assert json.loads((out / "labels.json").read_text()) == json.loads((ref / "labels.json").read_text())


def test_shard_order_and_cache_do_not_matter(ilsvrc, images, tmp_path):
    train, val = images
    a = discover(layouts.timm_wds(tmp_path / "a", train, val, shards=(3, 2), seed=1), cache_dir=tmp_path)
    b = discover(layouts.timm_wds(tmp_path / "b", train, val, shards=(2, 3), seed=2))
    strip = lambda s: {k: [(i.name, i.label, i.size) for i in v] for k, v in s.splits.items()}  # noqa: E731
    assert strip(a) == strip(b) and len(a.splits["train"]) == 30
    assert len(list(tmp_path.glob(".listing-*.npz"))) == 2  # one per split, over all its shards
    again = discover(tmp_path / "a", cache_dir=tmp_path)
    assert again.splits == a.splits
    assert "the shards' .cls" in a.origin["train"] and "imagenet1k-validation-*.tar (2 shards)" in a.origin["val"]


def test_reencoded_copy_is_listed_and_within_tolerance(ilsvrc, images, tmp_path):
    train, val = images
    # the official file is a CMYK JPEG; the shards hold an RGB re-encoding of it, as timm's do
    wnid, name = "n01739381", "n01739381_1309.JPEG"
    rgb = Image.open(io.BytesIO(train[0][2])).convert("RGB")
    cmyk, reenc = io.BytesIO(), io.BytesIO()
    rgb.convert("CMYK").save(cmyk, "JPEG", quality=95)
    Image.open(io.BytesIO(cmyk.getvalue())).convert("RGB").save(reenc, "JPEG", quality=95)
    _prep(layouts.official(tmp_path / "official", [*train, (wnid, name, cmyk.getvalue())], val, ilsvrc),
          tmp_path / "ref", split="train")
    report = _prep(layouts.timm_wds(tmp_path / "wds", [*train, (wnid, name, reenc.getvalue())], val),
                   tmp_path / "out", split="train")
    r = report["splits"]["train"]
    # named by the shard and the sample key
    assert [d["name"] for d in r["bytes_differ"]] == ["imagenet1k-train-0001.tar:n01739381_1309"] and "re-encoded" in r["bytes_differ"][0]["reason"]
    a, b = open_split(tmp_path / "out", "train"), open_split(tmp_path / "ref", "train")
    assert a.names == b.names and list(a.labels) == list(b.labels)
    for i in range(len(a)):
        diff = np.abs(a[i].image.astype(int) - b[i].image.astype(int)).mean()
        assert (diff == 0) == (a.names[i] != name) and diff <= 2  # only the re-encoded one differs, within policy


def _rewrite(shard, change):
    """Rewrite a shard, passing each (name, bytes) through `change` (None drops the member)."""
    with tarfile.open(shard) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar]
    with tarfile.open(shard, "w") as tar:
        for name, data in members:
            kept = change(name, data)
            if kept is not None:
                layouts.add_bytes(tar, name, kept)


@pytest.mark.parametrize("damage, message", [
    ("cls", r"imagenet1k-train-0000.tar: sample \S+: .cls says 999 but .json says label \d+"),
    ("json-class", r"filename 'n01440764/.*' is not in class"),
    ("no-image", r"sample \S+ has no image"),
    ("truncated", r"imagenet1k-train-0000.tar: (member .* ends at byte|not a readable tar)"),
    ("missing-shard", r"1 of the 3 train shards listed in _info.json are missing .*imagenet1k-train-0002.tar"),
    ("short-shard", r"imagenet1k-train-0001.tar \(per _info.json\) holds \d+ samples but declares \d+"),
    ("info", r"_info.json is not readable"),
])
def test_bad_shards_are_one_line_errors(ilsvrc, images, tmp_path, damage, message):
    train, val = images
    src = layouts.timm_wds(tmp_path / "wds", train, val, shards=(3, 2))
    first, second = src / "imagenet1k-train-0000.tar", src / "imagenet1k-train-0001.tar"
    if damage == "cls":
        done = []
        _rewrite(first, lambda n, d: b"999" if n.endswith(".cls") and not done and not done.append(n) else d)
    elif damage == "json-class":
        def other_folder(n, d):
            if not n.endswith(".json"):
                return d
            meta = json.loads(d)
            if meta["filename"].startswith("n01440764/"):
                return d
            return json.dumps({**meta, "filename": "n01440764/" + meta["filename"].split("/")[1]}).encode()
        _rewrite(first, other_folder)
    elif damage == "no-image":
        _rewrite(first, lambda n, d: None if n.endswith(".jpg") and n.startswith("n") and "0" in n[-6:] else d)
    elif damage == "truncated":
        first.write_bytes(first.read_bytes()[:3000])
    elif damage == "missing-shard":
        (src / "imagenet1k-train-0002.tar").unlink()
    elif damage == "short-shard":
        with tarfile.open(second) as tar:
            key = tar.getnames()[0].split(".")[0]
        _rewrite(second, lambda n, d: None if n.split(".")[0] == key else d)  # one sample fewer
    else:
        (src / "_info.json").write_text("{not json")
    with pytest.raises(ImgnetError, match=message) as e:
        discover(src)
    assert "\n" not in str(e.value)


def test_val_shards_must_carry_the_official_labels(ilsvrc, images, tmp_path):
    train, val = images
    name, wnid, data = val[0]
    wrong = layouts.sorted_wnids()[(layouts.sorted_wnids().index(wnid) + 1) % 1000]
    src = layouts.timm_wds(tmp_path / "wds", train, [(name, wrong, data), *val[1:]])
    with pytest.raises(ImgnetError, match=f"labels {name} as {wrong}, but the ILSVRC2012 ground truth .* has {wnid}"):
        discover(src)
    # a --val-labels file labels the val shards on purpose
    (tmp_path / "val.txt").write_text("".join(f"{n} {w}\n" for n, w, _ in [(name, wrong, data), *val[1:]]))
    s = discover(src, val_labels=tmp_path / "val.txt")
    assert s.label_map.names[s.splits["val"][0].label] == wrong and "--val-labels" in s.origin["val"]


def test_shards_without_info_json(ilsvrc, images, tmp_path):
    train, val = images
    s = discover(layouts.timm_wds(tmp_path / "wds", train, val, info=False))
    assert s.layout == "timm-wds" and len(s.splits["train"]) == 30 and len(s.splits["val"]) == 20

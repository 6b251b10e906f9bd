"""SHA-256 digests of what the toolkit writes, for showing that a change of structure changes no output.

    cd OLD && python NEW/scripts/output_digests.py --out before.json   # the code of the folder it runs in
    cd NEW && python scripts/output_digests.py --out after.json
    diff before.json after.json

Builds every source layout from the same images (generated ones always; the real fixtures of
../shared/data as well where present), runs `imgnet prep` on each (LMDB and HDF5, raw and jpeg), and
digests every record (stored bytes, label, name) of every split, `labels.json`, and `prep-report.json`
without its timings. Then digests the loader's batches over a grid of settings (store format and
encoding; training views with and without lighting, mean image and mean RGB, channels_last, a shard;
center and ten-crop evaluation; a subset of indices; the uint8 form; 0 and 2 workers; two epochs and a
resume inside an epoch). It uses only the public commands and names, so the same script runs on both
sides of a change.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path.cwd()  # the checkout whose code is digested: run the script from its root
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TIMINGS = {"seconds", "images_per_s", "pillow"}
TMP = [""]  # the temporary folder of this run, replaced by "TMP" in what is digested


def sha(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else repr(p).encode())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------ images
def generated_images(n_classes: int = 3, per_class: int = 4, n_val: int = 12):
    """(train [(name, wnid, bytes)], val [(name, wnid, bytes)]) of generated JPEGs with real val numbers."""
    from PIL import Image

    from imagenet_prep.labels import load_val_ground_truth

    truth = load_val_ground_truth()
    wnids = sorted(set(truth[:200]))[:n_classes]
    rng = np.random.default_rng(0)

    def jpeg(w, h):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(buf, "JPEG", quality=85)
        return buf.getvalue()

    train = [(f"{w}_{100 + j}.JPEG", w, jpeg(64 + 16 * j, 48 + 8 * k)) for k, w in enumerate(wnids)
             for j in range(per_class)]
    train.append((f"{wnids[0]}_999.JPEG", wnids[0], train[0][2][:300]))  # truncated: rejected everywhere
    val = [(f"ILSVRC2012_val_{n + 1:08d}.JPEG", truth[n], jpeg(80, 60 + n % 5)) for n in range(400)
           if truth[n] in wnids][:n_val]
    return train, val


def real_images():
    root = SHARED / "images" / "imagenette2_224_subset" / "train"
    train = [(f.name, d.name, f.read_bytes()) for d in sorted(root.iterdir())[:3] for f in sorted(d.iterdir())[:4]]
    from imagenet_prep.labels import load_val_ground_truth

    truth = load_val_ground_truth()
    val = [(f"ILSVRC2012_val_{n:08d}.JPEG", truth[n - 1],
            (SHARED / "images" / "val_original" / f"ILSVRC2012_val_{n:08d}.JPEG").read_bytes()) for n in range(1, 25)]
    return train, val


# ----------------------------------------------------------------------------------------- layouts
def tar_bytes(members, mode="w") -> bytes:
    """A tar (mode "w:gz": gzipped) of (name, bytes) members, all dated 0 so that the bytes are reproducible."""
    def info(name: str, size: int) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.size, ti.mtime = size, 0
        return ti

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in members:
            tar.addfile(info(name, len(data)), io.BytesIO(data))
    return buf.getvalue()


def official(src: Path, train, val) -> None:
    by_class: dict[str, list] = {}
    for name, wnid, data in train:
        by_class.setdefault(wnid, []).append((name, data))
    (src / "ILSVRC2012_img_train.tar").write_bytes(tar_bytes([(f"{w}.tar", tar_bytes(m)) for w, m in sorted(by_class.items())]))
    (src / "ILSVRC2012_img_val.tar").write_bytes(tar_bytes([(n, d) for n, _, d in val]))


def extracted(src: Path, train, val, flat_val=True, root: Path | None = None) -> None:
    root = root or src
    for name, wnid, data in train:
        (root / "train" / wnid).mkdir(parents=True, exist_ok=True)
        (root / "train" / wnid / name).write_bytes(data)
    for name, wnid, data in val:
        d = root / "val" if flat_val else root / "val" / wnid
        d.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(data)


def wnid_words() -> str:
    from imagenet_prep.labels import load_class_meta

    return "".join(f"{c['wnid']} {c['words']}\n" for c in sorted(load_class_meta().classes, key=lambda c: c["wnid"]))


def val_csv(val) -> str:
    return "ImageId,PredictionString\n" + "".join(f"{n.rsplit('.', 1)[0]},{w} 1 2 3 4\n" for n, w, _ in val)


def kaggle_folders(src: Path, train, val) -> None:
    extracted(src, train, val, root=src / "ILSVRC" / "Data" / "CLS-LOC")
    (src / "LOC_synset_mapping.txt").write_text(wnid_words())
    (src / "LOC_val_solution.csv").write_text(val_csv(val))


def kaggle_zip(src: Path, train, val) -> None:
    root = "ILSVRC/Data/CLS-LOC/"
    with zipfile.ZipFile(src / "imagenet-object-localization-challenge.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("LOC_synset_mapping.txt", wnid_words())
        z.writestr("LOC_val_solution.csv", val_csv(val))
        for i, (name, wnid, data) in enumerate(train):
            z.writestr(f"{root}train/{wnid}/{name}", data, zipfile.ZIP_STORED if i % 3 == 0 else zipfile.ZIP_DEFLATED)
        for name, _, data in val:
            z.writestr(f"{root}val/{name}", data)


def timm_wds(src: Path, train, val) -> None:
    from imagenet_prep.labels import load_class_meta

    wnids = sorted(c["wnid"] for c in load_class_meta().classes)
    rng = random.Random(0)
    info = {}
    for split, n_shards, samples in (("train", 2, list(train)), ("validation", 1, list(val))):
        rng.shuffle(samples)
        names, lengths = [], []
        for k in range(n_shards):
            name = f"imagenet1k-{split}-{k:04d}.tar" if split == "train" else f"imagenet1k-{split}-{k:02d}.tar"
            part = samples[k::n_shards]
            members = []
            for fname, wnid, data in part:
                key = fname.rsplit(".", 1)[0]
                meta = {"filename": f"{wnid}/{fname}", "label": wnids.index(wnid), "width": 1, "height": 1}
                members += [(f"{key}.jpg", data), (f"{key}.cls", str(wnids.index(wnid)).encode()),
                            (f"{key}.json", json.dumps(meta).encode())]
            (src / name).write_bytes(tar_bytes(members))
            names.append(name)
            lengths.append(len(part))
        info[split] = {"name": split, "num_samples": len(samples), "filenames": names, "shard_lengths": lengths}
    (src / "_info.json").write_text(json.dumps({"name": "imagenet-1k", "splits": info}))


def hf_path(name: str, wnid: str) -> str:
    stem, ext = name.rsplit(".", 1)
    return f"{stem}_{wnid}.{ext}"


def hf_parquet(src: Path, train, val) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from imagenet_prep.labels import load_class_meta

    wnids = sorted(c["wnid"] for c in load_class_meta().classes)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    (src / "data").mkdir()
    for split, n, images in (("train", 2, train), ("validation", 1, val)):
        rows = list(images)
        random.Random(1).shuffle(rows)
        rows = [((f"{split}/" if i % 3 == 0 else "") + hf_path(nm, w), d, wnids.index(w)) for i, (nm, w, d) in enumerate(rows)]
        for k in range(n):
            part = rows[k::n]
            table = pa.table({"image": pa.array([{"bytes": d, "path": p} for p, d, _ in part], image_type),
                              "label": pa.array([lbl for _, _, lbl in part], pa.int64())})
            pq.write_table(table, src / "data" / f"{split}-{k:05d}-of-{n:05d}.parquet", row_group_size=3)


def hf_targz(src: Path, train, val) -> None:
    rows = list(train)
    random.Random(2).shuffle(rows)
    rows = [(hf_path(n, w), d) for n, w, d in rows]
    for k in range(5):
        (src / f"train_images_{k}.tar.gz").write_bytes(tar_bytes(rows[k::5], "w:gz"))
    (src / "val_images.tar.gz").write_bytes(tar_bytes([(hf_path(n, w), d) for n, w, d in val], "w:gz"))


def imagefolder(src: Path, train, val) -> None:
    names = {w: f"class_{chr(97 + i)}" for i, w in enumerate(sorted({w for _, w, _ in train}))}
    for split, images in (("train", train), ("val", [v for v in val if v[1] in names])):
        for name, wnid, data in images:
            (src / split / names[wnid]).mkdir(parents=True, exist_ok=True)
            (src / split / names[wnid] / name).write_bytes(data)


LAYOUTS = {"official": official, "extracted": extracted, "kaggle-folders": kaggle_folders, "kaggle-zip": kaggle_zip,
           "timm-wds": timm_wds, "hf-parquet": hf_parquet, "hf-targz": hf_targz, "imagefolder": imagefolder,
           "extracted-val-folders": lambda s, t, v: extracted(s, t, v, flat_val=False)}


def v2_tree(root: Path, val) -> Path:
    """A matched-frequency V2 tree: class folders 0..999, a few filled with the val images under hex names."""
    from imagenet_prep.labels import load_class_meta

    wnids = sorted(c["wnid"] for c in load_class_meta().classes)
    v = root / "imagenetv2-matched-frequency-format-val"
    for n in range(1000):
        (v / str(n)).mkdir(parents=True)
    for j, (name, wnid, data) in enumerate(val[:6]):
        (v / str(wnids.index(wnid)) / f"{(j * 7919 + 1) * 2654435761:032x}.jpeg").write_bytes(data)
    return root


# -------------------------------------------------------------------------------------------- prep
def imgnet(*args) -> subprocess.CompletedProcess:
    code = "import sys, cli; sys.argv[0] = 'imgnet'; sys.exit(cli.main())"
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=str(ROOT))
    if r.returncode != 0:
        raise SystemExit(f"imgnet {' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def untimed(obj):
    if isinstance(obj, str):
        return obj.replace(TMP[0], "TMP")
    if isinstance(obj, dict):
        return {k: untimed(v) for k, v in sorted(obj.items()) if k not in TIMINGS}
    if isinstance(obj, list):
        return [untimed(v) for v in obj]
    return obj


def digest_data(data: Path) -> dict:
    from imagenet_prep import open_split

    out = {"labels.json": sha((data / "labels.json").read_bytes())}
    report = json.loads((data / "prep-report.json").read_text())
    out["prep-report"] = sha(json.dumps(untimed(report), sort_keys=True).encode())
    for split in ("train", "val", "v2-matched-frequency"):
        try:
            s = open_split(data, split)
        except Exception:  # noqa: BLE001 - not packed
            continue
        try:
            recs = [sha(s.read_bytes(i), int(s.labels[i]), s.names[i]) for i in range(len(s))]
            out[split] = {"n": len(s), "records": sha(*recs), "meta": sha(json.dumps(untimed(s.meta), sort_keys=True,
                                                                                   default=str).encode())}
        finally:
            s.close()
    return out


def prep_digests(tmp: Path, sets: dict) -> dict:
    results = {}
    for set_name, (train, val) in sets.items():
        for layout, build in LAYOUTS.items():
            src = tmp / f"src-{set_name}-{layout}"
            src.mkdir()
            build(src, train, val)
            for fmt, enc in (("lmdb", "raw"), ("hdf5", "jpeg"), ("lmdb", "jpeg")):
                if layout not in ("official", "hf-parquet") and (fmt, enc) != ("lmdb", "raw"):
                    continue
                data = tmp / f"data-{set_name}-{layout}-{fmt}-{enc}"
                imgnet("prep", "--src", src, "--out", data, "--workers", "2", "--format", fmt, "--encoding", enc)
                results[f"{set_name}/{layout}/{fmt}-{enc}"] = digest_data(data)
                if layout == "extracted-val-folders":
                    for order in ("sorted", "devkit"):
                        sub = tmp / f"data-{set_name}-subset-{order}"
                        imgnet("prep", "--src", src, "--out", sub, "--workers", "1", "--classes", "2", "--per-class",
                               "2", "--label-order", order)
                        results[f"{set_name}/{layout}/subset-{order}"] = digest_data(sub)
                if layout == "official" and fmt == "lmdb" and enc == "raw":
                    v2 = v2_tree(tmp / f"v2-{set_name}", val)
                    imgnet("prep", "--src", v2 / "imagenetv2-matched-frequency-format-val", "--out", data,
                           "--split", "v2", "--workers", "1")
                    results[f"{set_name}/v2"] = digest_data(data)
            shutil.rmtree(src)
            print(f"prep {set_name}/{layout}: done", file=sys.stderr, flush=True)
    return results


# ------------------------------------------------------------------------------------------ loader
def loader_digests(tmp: Path) -> dict:
    import torch

    from imagenet_prep import open_split
    from imagenet_prep.stats import load_stats
    from imagenet_prep.synthetic import make_sample
    from trainer.data import InputTransform
    from trainer.loader import Loader

    torch.set_num_threads(1)
    src = make_sample(tmp / "sample", classes=3, train_per_class=12, val_per_class=4)
    out = {}
    for fmt, enc in (("lmdb", "raw"), ("lmdb", "jpeg"), ("hdf5", "raw"), ("hdf5", "jpeg")):
        data = tmp / f"loader-{fmt}-{enc}"
        imgnet("prep", "--src", src, "--out", data, "--workers", "1", "--format", fmt, "--encoding", enc)
        imgnet("pca-stats", "--data", data, "--workers", "1")
        stats = load_stats(data)
        settings = [  # (name, split, transform kwargs, loader kwargs, raw)
            ("train", "train", {}, {}, False),
            ("train-no-lighting", "train", {"lighting_std": 0.0}, {}, False),
            ("train-rgb", "train", {"mean": "rgb"}, {}, False),
            ("train-channels-last", "train", {"channels_last": True}, {}, False),
            ("train-shard", "train", {}, {"shard": (1, 2)}, False),
            ("train-uint8", "train", {}, {}, True),
            ("center", "val", {"lighting_std": 0.0}, {"train": False, "views": "center"}, False),
            ("ten", "val", {"lighting_std": 0.0}, {"train": False, "views": "ten"}, False),
            ("subset", "train", {}, {"indices": [0, 3, 5, 7, 11, 13, 17, 19, 23, 29]}, False),
        ]
        for name, split_name, tkw, lkw, raw in settings:
            for workers in (0, 2):
                split = open_split(data, split_name)
                loader = Loader(split, InputTransform(stats, **tkw), 4, seed=3, workers=workers, **lkw)
                h = hashlib.sha256()
                try:
                    epochs = [(0, 0), (1, 0), (1, 2)] if lkw.get("train", True) else [(0, 0)]
                    for epoch, start in epochs:  # two epochs, then epoch 1 again resumed at batch 2
                        loader.set_epoch(epoch, start)
                        for batch in (loader.raw_batches() if raw else loader):
                            tensors = [batch.images, batch.labels] if raw else list(batch)
                            for t in tensors:
                                t = t.contiguous() if not t.is_contiguous() else t
                                h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
                                h.update(t.cpu().numpy().tobytes())
                            if raw:
                                for a in (batch.tops, batch.lefts, batch.flips, batch.alphas, batch.offsets, batch.indices):
                                    h.update(b"-" if a is None else np.ascontiguousarray(a).tobytes())
                finally:
                    loader.close()
                    split.close()
                out[f"{fmt}-{enc}/{name}/w{workers}"] = h.hexdigest()[:16]
        print(f"loader {fmt}-{enc}: done", file=sys.stderr, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--loader-only", action="store_true")
    ap.add_argument("--prep-only", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        TMP[0] = str(tmp)
        result = {}
        if not args.loader_only:
            sets = {"generated": generated_images()}
            if (SHARED / "images" / "val_original").is_dir():
                sets["real"] = real_images()
            result["prep"] = prep_digests(tmp, sets)
        if not args.prep_only:
            result["loader"] = loader_digests(tmp)
    Path(args.out).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    everything = json.dumps(result, sort_keys=True).encode()
    print(json.dumps({"digest": hashlib.sha256(everything).hexdigest()[:16],
                      "prep_outputs": len(result.get("prep", {})), "loader_settings": len(result.get("loader", {}))}))


if __name__ == "__main__":
    main()

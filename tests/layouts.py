"""Build the download layouts of ILSVRC2012 (official tars, timm shards, Kaggle zip) from the same images,
so that tests can compare what `imgnet prep` makes of each, record by record."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import tarfile
import time
import zipfile
from pathlib import Path

from PIL import Image

from imagenet_prep import open_split
from imagenet_prep.labels import load_val_ground_truth

WNIDS = None  # the 1000 sorted wnids, loaded on first use


def sorted_wnids() -> list[str]:
    global WNIDS
    if WNIDS is None:
        from imagenet_prep.labels import load_class_meta

        WNIDS = sorted(c["wnid"] for c in load_class_meta().classes)
    return WNIDS


def real_images(shared: Path, per_class: int = 3, n_val: int = 20):
    """train: [(wnid, name, bytes)] from imagenette (real names), val: [(name, wnid, bytes)] from val_original,
    of `shared`: ../shared/data or its generated counterpart (the `ilsvrc` fixture)."""
    root = shared / "images" / "imagenette2_224_subset" / "train"
    train = [(d.name, f.name, f.read_bytes()) for d in sorted(root.iterdir()) for f in sorted(d.iterdir())[:per_class]]
    truth = load_val_ground_truth()
    val = []
    for n in range(1, n_val + 1):
        name = f"ILSVRC2012_val_{n:08d}.JPEG"
        val.append((name, truth[n - 1], (shared / "images" / "val_original" / name).read_bytes()))
    return train, val


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def official(dest: Path, train, val, shared: Path | None = None) -> Path:
    """ILSVRC2012_img_train.tar (a tar of <wnid>.tar), ILSVRC2012_img_val.tar, and the devkit tar.gz when `shared`."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest / "ILSVRC2012_img_train.tar", "w") as outer:
        for wnid in sorted({w for w, _, _ in train}):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as inner:
                for w, name, data in train:
                    if w == wnid:
                        add_bytes(inner, name, data)
            add_bytes(outer, f"{wnid}.tar", buf.getvalue())
    with tarfile.open(dest / "ILSVRC2012_img_val.tar", "w") as tar:
        for name, _, data in val:
            add_bytes(tar, name, data)
    if shared is not None:
        with tarfile.open(dest / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
            for f in ("meta.mat", "ILSVRC2012_validation_ground_truth.txt"):
                tar.add(shared / "devkit_t12" / "data" / f, arcname=f"ILSVRC2012_devkit_t12/data/{f}")
    return dest


def _sample(wnid: str, name: str, data: bytes, index: int | None = None) -> dict[str, bytes]:
    w, h = Image.open(io.BytesIO(data)).size
    label = sorted_wnids().index(wnid) if index is None else index
    meta = {"filename": f"{wnid}/{name}", "label": label, "width": w, "height": h}
    return {"jpg": data, "cls": str(label).encode(), "json": json.dumps(meta).encode()}


def timm_wds(dest: Path, train, val, shards=(3, 2), seed: int = 0, info: bool = True) -> Path:
    """imagenet1k-train-NNNN.tar / imagenet1k-validation-NN.tar, samples shuffled over the shards as timm's are,
    and _info.json."""
    dest.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    splits = {}
    for split, n_shards, samples in (("train", shards[0], [(w, n, d) for w, n, d in train]),
                                      ("validation", shards[1], [(w, n, d) for n, w, d in val])):
        samples = samples[:]
        rng.shuffle(samples)
        names, lengths = [], []
        for k in range(n_shards):
            name = f"imagenet1k-{split}-{k:04d}.tar" if split == "train" else f"imagenet1k-{split}-{k:02d}.tar"
            part = samples[k::n_shards]
            with tarfile.open(dest / name, "w") as tar:
                for wnid, fname, data in part:
                    key = fname.rsplit(".", 1)[0]
                    for ext, payload in _sample(wnid, fname, data).items():
                        add_bytes(tar, f"{key}.{ext}", payload)
            names.append(name)
            lengths.append(len(part))
        splits[split] = {"name": split, "num_samples": len(samples), "filenames": names, "shard_lengths": lengths}
    if info:
        (dest / "_info.json").write_text(json.dumps({"name": "imagenet-1k", "splits": splits}))
    return dest


def kaggle(dest: Path, train, val, shared: Path, stored=()) -> Path:
    """imagenet-object-localization-challenge.zip as Kaggle ships it (deflate; names in `stored` are stored)."""
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / "imagenet-object-localization-challenge.zip"
    root = "ILSVRC/Data/CLS-LOC/"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(shared / "kaggle_loc" / "LOC_synset_mapping.txt", "LOC_synset_mapping.txt")
        z.write(shared / "kaggle_loc" / "LOC_val_solution.csv", "LOC_val_solution.csv")
        z.writestr("ILSVRC/Annotations/CLS-LOC/val/ILSVRC2012_val_00000001.xml", "<annotation/>")
        for wnid, name, data in train:
            z.writestr(f"{root}train/{wnid}/{name}", data,
                       zipfile.ZIP_STORED if name in stored else zipfile.ZIP_DEFLATED)
        for name, _, data in val:
            z.writestr(f"{root}val/{name}", data, zipfile.ZIP_STORED if name in stored else zipfile.ZIP_DEFLATED)
        z.writestr(f"{root}test/ILSVRC2012_test_00000001.JPEG", b"unlabelled")
    return path


def content(data_dir: Path, split: str) -> list[tuple]:
    """Every record of a packed split: (stored bytes, label, name)."""
    s = open_split(data_dir, split)
    try:
        return [(s.read_bytes(i), int(s.labels[i]), s.names[i]) for i in range(len(s))]
    finally:
        s.close()


def kill_when_written(cmd: list[str], work: Path, min_bytes: int, commit_every: int) -> None:
    """Run `cmd` (an `imgnet prep`), committing every `commit_every` images, and kill -9 it once `work`
    (its data.mdb) holds more than `min_bytes`, or after 60 s."""
    proc = subprocess.Popen(cmd, env=dict(os.environ, IMGNET_COMMIT_EVERY=str(commit_every)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not (work.exists() and work.stat().st_size > min_bytes):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

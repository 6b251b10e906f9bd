"""Prep throughput: `imgnet prep` against the loop a user would write with stock Pillow, side by side.

Both process the same real-sized JPEGs (ImageNet's typical 500x375, 500x333, 375x500 ... photos, made
on the fly). The baseline runs in a virtual environment of its own with stock Pillow (created once under
bench/.cache): open, convert("RGB"), resize the shorter side to 256 (LANCZOS), center crop, save as JPEG.
Ours is the real `run_prep` on the same files as an ImageFolder tree, at 1 and 2 workers, with
`--encoding jpeg` (the same work: decode, resize, encode) and the default `--encoding raw`. The same run
times `pca-stats` over the packed raw split with one worker.

    python bench/prep_throughput.py [--images 2000] [--repeat 2]

The same images are also packed from the official train tar and from Hugging Face parquet shards (one
worker each, jpeg output): the sources should cost the same per core. Synthetic pictures decode about
twice as fast as photographs, so ours and the baseline are also timed on the real originals of
../shared/data/images/val_original, repeated to --real-images files (skipped with a note where absent).

Last line: JSON with ours_img_s, baseline_img_s (one worker each, jpeg output), ratio,
scaling_2_workers, raw_img_s, stats_img_s, official_tar_img_s, parquet_img_s, parquet_vs_tar, timm_wds_img_s,
timm_wds_ratio (the same images as the official train tar, Hugging Face parquet and timm imagenet-1k-wds shards,
one worker each, timed in turn; goal: each ratio >= 0.9), real_ours_img_s, real_baseline_img_s, real_ratio
(or real_note).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "bench" / ".cache"
sys.path.insert(0, str(ROOT))

BASELINE = r'''
import sys, time
from pathlib import Path
from PIL import Image
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
files = sorted(src.rglob("*.JPEG"))
t0 = time.perf_counter()
for f in files:
    im = Image.open(f).convert("RGB")
    w, h = im.size
    s = 256 / min(w, h)
    im = im.resize((round(w * s), round(h * s)), Image.LANCZOS)
    w, h = im.size
    left, top = (w - 256) // 2, (h - 256) // 2
    im.crop((left, top, left + 256, top + 256)).save(dst / f.name, quality=90)
dt = time.perf_counter() - t0
import PIL
print(len(files) / dt, PIL.__version__)
'''


def baseline_python() -> Path:
    """A venv with stock Pillow, made once."""
    venv = CACHE / "pillow-venv"
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "pillow"], check=True)
    return py


def make_images(dest: Path, n: int, seed: int = 0) -> None:
    from PIL import Image

    from imagenet_prep.synthetic import SIZES, class_image

    rng = np.random.default_rng(seed)
    for i in range(n):
        cls = i % 10
        d = dest / "train" / f"class{cls}"
        d.mkdir(parents=True, exist_ok=True)
        img = class_image(rng, cls, 10, SIZES[i % len(SIZES)])
        Image.fromarray(img).save(d / f"class{cls}_{i:05d}.JPEG", quality=90)


def time_prep(src: Path, workers: int, encoding: str, repeat: int) -> float:
    from imagenet_prep.prep import PrepConfig, run_prep

    best = 0.0
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(dir=CACHE) as out:
            t0 = time.perf_counter()
            r = run_prep(PrepConfig(src=str(src), out=out, split="train", workers=workers, encoding=encoding))
            dt = time.perf_counter() - t0
            best = max(best, r["splits"]["train"]["written"] / dt)
    return best


# ------------------------------------------------------------------ one function per source layout
def wnid_sources(src: Path, dest: Path) -> dict[str, Path]:
    """The bench images as the official train tar and as Hugging Face parquet (class k -> the k-th sorted wnid,
    file n -> <wnid>_n.JPEG): the same bytes for every source layout."""
    import io
    import tarfile

    from imagenet_prep.labels import load_class_meta

    wnids = sorted(c["wnid"] for c in load_class_meta().classes)
    files = sorted((src / "train").rglob("*.JPEG"))
    rows = [(wnids[int(f.parent.name.removeprefix("class"))], f"{f.stem.rsplit('_', 1)[1]}", f.read_bytes())
            for f in files]
    out = {"official": dest / "official", "parquet": dest / "parquet", "wds": dest / "wds"}
    if not dest.exists():
        part = dest.with_suffix(".part")
        (part / "official").mkdir(parents=True)
        with tarfile.open(part / "official" / "ILSVRC2012_img_train.tar", "w") as outer:
            for wnid in sorted({w for w, _, _ in rows}):
                buf = io.BytesIO()
                with tarfile.open(fileobj=buf, mode="w") as inner:
                    for w, n, data in rows:
                        if w == wnid:
                            info = tarfile.TarInfo(f"{w}_{n}.JPEG")
                            info.size = len(data)
                            inner.addfile(info, io.BytesIO(data))
                info = tarfile.TarInfo(f"{wnid}.tar")
                info.size = buf.tell()
                buf.seek(0)
                outer.addfile(info, buf)
        write_parquet(part / "parquet" / "data", rows)
        write_wds(part / "wds", rows)
        part.rename(dest)
    return out


def write_parquet(folder: Path, rows, shards: int = 2, row_group: int = 100) -> None:
    """rows (wnid, number, bytes) as train-NNNNN-of-NNNNN.parquet, shuffled as the published shards are;
    100 rows per row group, as the `datasets` library writes image datasets."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from imagenet_prep.labels import load_class_meta

    wnids = sorted(c["wnid"] for c in load_class_meta().classes)
    folder.mkdir(parents=True)
    rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]
    kind = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    for k in range(shards):
        part = rows[k::shards]
        table = pa.table({"image": pa.array([{"bytes": d, "path": f"{w}_{n}_{w}.JPEG"} for w, n, d in part], kind),
                          "label": pa.array([wnids.index(w) for w, _, _ in part], pa.int64())})
        pq.write_table(table, folder / f"train-{k:05d}-of-{shards:05d}.parquet", row_group_size=row_group)


def write_wds(folder: Path, rows, shards: int = 4) -> None:
    """rows (wnid, number, bytes) as timm imagenet-1k-wds shards: pre-shuffled <key>.jpg/.cls/.json samples."""
    import io
    import tarfile

    from imagenet_prep.labels import load_class_meta

    wnids = sorted(c["wnid"] for c in load_class_meta().classes)
    folder.mkdir(parents=True)
    rows = [rows[i] for i in np.random.default_rng(1).permutation(len(rows))]

    def add(tar, name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    for k in range(shards):
        with tarfile.open(folder / f"imagenet1k-train-{k:04d}.tar", "w") as tar:
            for w, n, data in rows[k::shards]:
                key, c = f"{w}_{n}", wnids.index(w)
                add(tar, f"{key}.jpg", data)
                add(tar, f"{key}.cls", str(c).encode())
                add(tar, f"{key}.json", json.dumps({"filename": f"{w}/{key}.JPEG", "label": c}).encode())


def time_sources(sources: dict, repeat: int) -> dict:
    """The same images from each source layout, one worker, jpeg output; interleaved, best of each, so that a
    load change on a shared machine hits every layout alike."""
    best = {k: 0.0 for k in sources}
    for _ in range(repeat):
        for k, src in sources.items():
            best[k] = max(best[k], time_prep(src, 1, "jpeg", 1))
    tar = best["official"]
    return {"official_tar_img_s": round(tar, 1), "parquet_img_s": round(best["parquet"], 1),
            "parquet_vs_tar": round(best["parquet"] / tar, 3), "timm_wds_img_s": round(best["wds"], 1),
            "timm_wds_ratio": round(best["wds"] / tar, 3)}


def time_baseline(py: Path, folder: Path, repeat: int) -> tuple[float, str]:
    """The stock-Pillow loop over the JPEGs under `folder`: (best img/s, Pillow version)."""
    best, version = 0.0, "?"
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(dir=CACHE) as dst:
            out = subprocess.run([str(py), "-c", BASELINE, str(folder), dst], check=True,
                                 capture_output=True, text=True).stdout.split()
            best, version = max(best, float(out[0])), out[1]
    return best, version


def real_originals(n: int) -> Path | None:
    """An ImageFolder tree of the real val originals in ../shared/data, repeated to n files; None where absent."""
    originals = sorted((ROOT.parent / "shared" / "data" / "images" / "val_original").glob("*.JPEG"))
    if not originals:
        return None
    dest = CACHE / f"real-originals-{n}"
    if not dest.exists():
        part = dest.with_suffix(".part")
        d = part / "train" / "n01440764"
        d.mkdir(parents=True)
        for i in range(n):
            (d / f"n01440764_{i:05d}.JPEG").write_bytes(originals[i % len(originals)].read_bytes())
        part.rename(dest)
    return dest


def time_real(py: Path, n: int, repeat: int) -> dict:
    """Ours and the baseline on real photographs (they decode about half as fast as the synthetic ones)."""
    src = real_originals(n)
    if src is None:
        return {"real_note": "skipped: ../shared/data/images/val_original not found"}
    ours = time_prep(src, 1, "jpeg", repeat)
    base, _ = time_baseline(py, src / "train", repeat)
    return {"real_ours_img_s": round(ours, 1), "real_baseline_img_s": round(base, 1),
            "real_ratio": round(ours / base, 3), "real_images": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=2, help="best of N runs for each configuration")
    ap.add_argument("--real-images", type=int, default=400, help="real val originals, repeated to this count")
    args = ap.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    CACHE.mkdir(parents=True, exist_ok=True)

    from imagenet_prep.resize import pillow_flavour
    from imagenet_prep.stats import compute_stats

    src = CACHE / f"prep-images-{args.images}"
    if not src.exists():
        make_images(src.with_suffix(".part"), args.images)
        src.with_suffix(".part").rename(src)

    py = baseline_python()
    base, base_pil = time_baseline(py, src / "train", args.repeat)
    ours1 = time_prep(src, 1, "jpeg", args.repeat)
    ours2 = time_prep(src, 2, "jpeg", args.repeat)
    raw1 = time_prep(src, 1, "raw", args.repeat)

    with tempfile.TemporaryDirectory(dir=CACHE) as out:
        from imagenet_prep.prep import PrepConfig, run_prep

        run_prep(PrepConfig(src=str(src), out=out, split="train", workers=2))
        t0 = time.perf_counter()
        s = compute_stats(out, workers=1, progress=False)
        stats = s["n_images"] / (time.perf_counter() - t0)

    sources = wnid_sources(src, CACHE / f"prep-sources-{args.images}")
    per = time_sources(sources, args.repeat)
    real = time_real(py, args.real_images, args.repeat)

    print(f"{args.images} JPEGs, {os.cpu_count()} cores")
    print(f"  baseline (stock Pillow {base_pil}, 1 process):   {base:8.1f} img/s")
    print(f"  ours ({pillow_flavour()}, jpeg, 1 worker):       {ours1:8.1f} img/s   x{ours1 / base:.2f}")
    print(f"  ours (jpeg, 2 workers):                       {ours2:8.1f} img/s   scaling x{ours2 / ours1:.2f}")
    print(f"  ours (raw, 1 worker):                         {raw1:8.1f} img/s")
    print(f"  pca-stats (raw split, 1 worker):              {stats:8.1f} img/s")
    print(f"  official train tar (jpeg, 1 worker):          {per['official_tar_img_s']:8.1f} img/s")
    print(f"  Hugging Face parquet (jpeg, 1 worker):        {per['parquet_img_s']:8.1f} img/s   "
          f"x{per['parquet_vs_tar']:.2f} of the tar")
    print(f"  timm imagenet-1k-wds shards (jpeg, 1 worker): {per['timm_wds_img_s']:8.1f} img/s   "
          f"x{per['timm_wds_ratio']:.2f} of the tar")
    if "real_ratio" in real:
        print(f"  real originals: ours {real['real_ours_img_s']:.1f} img/s, baseline {real['real_baseline_img_s']:.1f} "
              f"img/s (x{real['real_ratio']:.2f}, {real['real_images']} files)")
    print(json.dumps({"ours_img_s": round(ours1, 1), "baseline_img_s": round(base, 1),
                      "ratio": round(ours1 / base, 3), "scaling_2_workers": round(ours2 / ours1, 3),
                      "raw_img_s": round(raw1, 1), "stats_img_s": round(stats, 1), **per, **real,
                      "images": args.images, "cpu_count": os.cpu_count()}))


if __name__ == "__main__":
    main()

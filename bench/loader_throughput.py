"""Loader throughput: `trainer.loader.Loader` against the per-sample PIL Dataset a PyTorch user writes.

Both deliver ready training batches of 128 (random 224 crop, flip, minus the mean image cropped and
flipped with it, plus the PCA lighting offset) from the same photo-like 256x256 images (smooth random
fields plus noise, so JPEG sizes are realistic), made on the fly:
  ours      Loader over the packed train split, raw and jpeg encodings: workers copy the crops into
            shared-memory batches. On a GPU host it yields the float input on the GPU; without one it
            yields the device-ready uint8 batch plus the per-image lighting offsets (output="uint8"), the
            form in which it reaches the GPU; the float path on the CPU is reported too (raw_float_cpu_img_s).
  baseline  a torch.utils.data.Dataset that opens each image from a JPEG file (the same 4:4:4 quality-90
            bytes as the packed jpeg split) with PIL and applies the same crop, flip and normalization in
            float, fed through torch.utils.data.DataLoader (shuffle, drop_last, persistent workers) with
            the same worker count.
Each configuration runs one warm-up epoch (starts its workers, fills the page cache), then is timed over
--batches batches.

    python bench/loader_throughput.py [--images 1024] [--batches 40] [--workers 1,2] [--cache DIR]

Goals: raw >= 5x and jpeg >= 1.3x the baseline at 2 workers; the raw loader at about 19,000 images/s
on a 16-core GPU host (one H100 trains the paper's AlexNet at about that rate).
Last line: JSON with raw_img_s, jpeg_img_s, baseline_img_s (2 workers), workers, raw_ratio, jpeg_ratio,
plus the 1-worker figures, the device, the output form and the load average seen during the run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from imagenet_prep.stats import compute_stats, load_stats  # noqa: E402
from imagenet_prep.store import encode_image, open_split, write_split  # noqa: E402
from trainer.data import CROP, PAD, lighting_offset  # noqa: E402
from trainer.loader import Loader  # noqa: E402

QUALITY = 90
DATA_VERSION = 1  # bump when the generator below changes: the cache folder name carries it


# ------------------------------------------------------------------------------------ the data
def photo_like(rng: np.random.Generator) -> np.ndarray:
    """uint8 (256, 256, 3): a smooth colour field at two scales plus sensor-like noise."""
    from PIL import Image

    def field(cells: int, amp: float) -> np.ndarray:
        small = rng.normal(0, 1, (cells, cells, 3))
        small = ((small - small.min()) / (np.ptp(small) + 1e-9) * 255).astype(np.uint8)
        big = np.asarray(Image.fromarray(small).resize((256, 256), Image.BICUBIC), np.float32)
        return (big - 127.5) / 127.5 * amp

    base = rng.uniform(40, 200, 3)
    img = base + field(int(rng.integers(3, 8)), 70) + field(int(rng.integers(16, 40)), 25)
    img += rng.normal(0, 5, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_data(root: Path, n: int) -> dict:
    """root/raw, root/jpeg (packed train splits with stats) and root/files (JPEG files); reused when present."""
    done = root / "done.json"
    if done.is_file():
        return json.loads(done.read_text())
    if root.exists():
        shutil.rmtree(root)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    recs = [(photo_like(rng), i % 10, f"img_{i:05d}.JPEG") for i in range(n)]
    files = root / "files"
    files.mkdir(parents=True)
    jpeg_bytes = 0
    for img, _, name in recs:
        data = encode_image(img, "jpeg", QUALITY)
        jpeg_bytes += len(data)
        (files / name).write_bytes(data)
    write_split(root / "raw", "train", recs, encoding="raw")
    write_split(root / "jpeg", "train", recs, encoding="jpeg", quality=QUALITY)
    compute_stats(root / "raw", workers=1, progress=False)
    for f in ("stats.json", "stats.h5"):
        shutil.copy(root / "raw" / f, root / "jpeg" / f)
    info = {"images": n, "mean_jpeg_kb": round(jpeg_bytes / n / 1024, 1), "seconds": round(time.perf_counter() - t0, 1)}
    done.write_text(json.dumps(info))
    return info


# ------------------------------------------------------------------------------------ baseline
class JpegFolder(torch.utils.data.Dataset):
    """What a PyTorch user writes: one JPEG file per sample, PIL decode, crop, flip, normalize in float."""

    def __init__(self, folder: Path, stats: dict, lighting_std: float = 0.1):
        self.files = sorted(folder.glob("*.JPEG"))
        self.labels = [int(f.stem.split("_")[1]) % 10 for f in self.files]
        self.mean = np.asarray(stats["mean_image"], np.float32)  # (256, 256, 3)
        self.eigval, self.eigvec = np.asarray(stats["eigval"]), np.asarray(stats["eigvec"])
        self.lighting_std = lighting_std

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.files[i]) as im:
            img = np.asarray(im.convert("RGB"))
        t, l = random.randint(0, PAD), random.randint(0, PAD)
        crop, m = img[t:t + CROP, l:l + CROP], self.mean[t:t + CROP, l:l + CROP]
        if random.random() < 0.5:
            crop, m = crop[:, ::-1], m[:, ::-1]
        off = lighting_offset(np.random.normal(0, self.lighting_std, 3), self.eigval, self.eigvec)
        x = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).float()
        x -= torch.from_numpy(np.ascontiguousarray(m)).permute(2, 0, 1)
        x += torch.from_numpy(off.astype(np.float32)).view(3, 1, 1)
        return x, self.labels[i]


def _worker_seed(wid):
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def time_batches(iterable_factory, batches: int, device) -> float:
    """Images per second over `batches` batches after one warm-up epoch."""
    it_src = iterable_factory()
    n_img = 0
    for _ in it_src:  # warm-up epoch
        pass
    done = 0
    t0 = time.perf_counter()
    while done < batches:
        for b in it_src:
            x = b[0] if isinstance(b, (tuple, list)) else b.images
            if device.type == "cuda":
                x = x.to(device, non_blocking=True)
            n_img += b[1].shape[0] if isinstance(b, (tuple, list)) else b.labels.shape[0]
            done += 1
            if done == batches:
                break
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dt = time.perf_counter() - t0
    close = getattr(it_src, "close", None)
    if close:
        close()
    return n_img / dt


def run_baseline(folder, stats, workers, bs, batches, device) -> float:
    ds = JpegFolder(folder, stats)
    dl = torch.utils.data.DataLoader(ds, batch_size=bs, shuffle=True, drop_last=True, num_workers=workers,
                                     pin_memory=device.type == "cuda", persistent_workers=True,
                                     worker_init_fn=_worker_seed)
    r = time_batches(lambda: dl, batches, device)
    del dl
    return r


def run_ours(data_dir, stats, workers, bs, batches, device, output) -> float:
    split = open_split(data_dir, "train")
    ld = Loader(split, stats, batch_size=bs, workers=workers, seed=0, device=device, output=output)
    try:
        return time_batches(lambda: ld, batches, device)
    finally:
        ld.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=1024, help="photo-like 256x256 images to generate")
    ap.add_argument("--batches", type=int, default=40, help="timed batches per configuration (after a warm-up epoch)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts; the JSON reports 2 (or the last)")
    ap.add_argument("--cache", default=None, help="keep the generated data here and reuse it [default: a temp folder]")
    ap.add_argument("--device", default="auto", help="cuda, cpu or auto")
    args = ap.parse_args()

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    output = "float" if device.type == "cuda" else "uint8"
    worker_counts = [int(w) for w in args.workers.split(",")]
    load0 = os.getloadavg()[0]
    tmp = None
    if args.cache:
        root = Path(args.cache) / f"loader-v{DATA_VERSION}-{args.images}"
    else:
        tmp = tempfile.mkdtemp(prefix="imgnet-loader-bench-")
        root = Path(tmp)
    try:
        info = make_data(root, args.images)
        stats = load_stats(root / "raw")
        print(f"data: {info['images']} images, JPEG {info['mean_jpeg_kb']} KB each; device {device}, "
              f"ours delivers {'float on the GPU' if output == 'float' else 'device-ready uint8 + offsets'}; "
              f"{os.cpu_count()} cores, load average {load0:.1f}", flush=True)
        res = {}
        for w in worker_counts:
            res[("baseline", w)] = run_baseline(root / "files", stats, w, args.batch_size, args.batches, device)
            res[("raw", w)] = run_ours(root / "raw", stats, w, args.batch_size, args.batches, device, output)
            res[("jpeg", w)] = run_ours(root / "jpeg", stats, w, args.batch_size, args.batches, device, output)
            print(f"{w} worker(s): baseline {res[('baseline', w)]:8.0f} img/s | ours raw {res[('raw', w)]:8.0f} "
                  f"({res[('raw', w)] / res[('baseline', w)]:.1f}x) | ours jpeg {res[('jpeg', w)]:8.0f} "
                  f"({res[('jpeg', w)] / res[('baseline', w)]:.1f}x)", flush=True)
        w = 2 if 2 in worker_counts else worker_counts[-1]
        float_cpu = None
        if device.type == "cpu":
            float_cpu = run_ours(root / "raw", stats, w, args.batch_size, args.batches, device, "float")
            print(f"{w} worker(s): ours raw, float input made on the CPU by the main process: {float_cpu:.0f} img/s")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    base = res[("baseline", w)]
    out = {"raw_img_s": round(res[("raw", w)], 1), "jpeg_img_s": round(res[("jpeg", w)], 1),
           "baseline_img_s": round(base, 1), "workers": w,
           "raw_ratio": round(res[("raw", w)] / base, 2), "jpeg_ratio": round(res[("jpeg", w)] / base, 2)}
    if 1 in worker_counts and w != 1:
        out.update({"raw_img_s_1w": round(res[("raw", 1)], 1), "jpeg_img_s_1w": round(res[("jpeg", 1)], 1),
                    "baseline_img_s_1w": round(res[("baseline", 1)], 1)})
    if float_cpu is not None:
        out["raw_float_cpu_img_s"] = round(float_cpu, 1)
    out.update({"device": str(device), "output": "float" if output == "float" else "uint8+offsets",
                "batch": args.batch_size, "images": args.images, "cores": os.cpu_count(),
                "load_avg": [round(load0, 2), round(os.getloadavg()[0], 2)]})
    print(json.dumps(out))


if __name__ == "__main__":
    main()

"""Loader throughput: `trainer.loader.Loader` against the per-sample PIL Dataset a PyTorch user writes.

Both deliver ready training batches of 128 (random 224 crop, flip, minus the mean image cropped and
flipped with it, plus the PCA lighting offset) from the same photo-like 256x256 images (smooth random
fields plus noise, so JPEG sizes are realistic), made on the fly:
  ours      Loader over the packed train split, raw and jpeg encodings: workers copy the crops into
            shared-memory batches. On a GPU host it yields the float input on the GPU; without one it
            yields the device-ready uint8 batch plus the per-image lighting offsets (raw_batches()), the
            form in which it reaches the GPU; the float path on the CPU is reported too (raw_float_cpu_img_s).
  baseline  a torch.utils.data.Dataset that opens each image from a JPEG file (the same 4:4:4 quality-90
            bytes as the packed jpeg split) with PIL and applies the same crop, flip and normalization in
            float, fed through torch.utils.data.DataLoader (shuffle, drop_last, persistent workers) with
            the same worker count.
Each configuration runs one warm-up epoch (starts its workers, fills the page cache), then is timed over
--batches batches.

    python bench/loader_throughput.py [--images 1024] [--batches 40] [--workers 1,2] [--cache DIR]

The main process's ceiling: whatever the workers deliver, the training process spends CPU time per
batch (handing out tasks, collecting results, taking and releasing the slot, the labels and lighting
offsets; on a GPU host also launching the copy and the transform). `main_process_cost` measures it
with the float transform stubbed out (raw_batches()) at --ceiling-workers (15: a 16-core GPU host):
main_us_per_batch and ceiling_img_s = batch / that time (goal: >= 40,000 img/s, twice what one H100
trains at, so that the main process never limits the rate), with the stages it is spent in.

Goals: raw >= 5x and jpeg >= 1.3x the baseline at 2 workers; the raw loader at about 19,000 images/s
on a 16-core GPU host (one H100 trains the paper's AlexNet at about that rate).
Last line: JSON with raw_img_s, jpeg_img_s, baseline_img_s (2 workers), workers, raw_ratio, jpeg_ratio,
plus the 1-worker figures, main_us_per_batch, ceiling_img_s (and each configuration's stages), the
device, the output form and the load average seen during the run.
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
from trainer.data import CROP, PAD, InputTransform, lighting_offset  # noqa: E402
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


def lmdb_bytes_per_image(data_dir: Path, n: int) -> int:
    """Disk blocks really used by a packed train.lmdb (its file is sparse) per image: LMDB stores a
    large value in whole 4096-byte pages (a 196,608-byte raw image takes 49)."""
    return round(sum(f.stat().st_blocks * 512 for f in (data_dir / "train.lmdb").iterdir()) / n)


def make_real_data(src: Path, root: Path) -> dict:
    """root/real_raw, root/real_jpeg: real photos (e.g. ../shared/data/images/val_original) resized as
    `imgnet prep` does (256x256) and packed; the JPEG size per image at the default quality."""
    from imagenet_prep.resize import prepare_image

    files = sorted(src.glob("*.JPEG"))
    recs = [(prepare_image(f.read_bytes())[0], i % 10, f.name) for i, f in enumerate(files)]
    kb = np.array([len(encode_image(img, "jpeg", QUALITY)) for img, _, _ in recs]) / 1024
    for enc in ("raw", "jpeg"):
        write_split(root / f"real_{enc}", "train", recs, encoding=enc, quality=QUALITY)
    compute_stats(root / "real_raw", workers=1, progress=False)
    for f in ("stats.json", "stats.h5"):
        shutil.copy(root / "real_raw" / f, root / "real_jpeg" / f)
    return {"real_images": len(recs), "real_jpeg_kb": round(float(kb.mean()), 1),
            "real_jpeg_lmdb_bytes_per_image": lmdb_bytes_per_image(root / "real_jpeg", len(recs)),
            "real_jpeg_kb_p10_p90": [round(float(q), 1) for q in np.percentile(kb, [10, 90])]}


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


def time_batches(epoch, batches: int, device) -> float:
    """Images per second over `batches` batches after one warm-up epoch; epoch() iterates one epoch."""
    n_img, it = 0, None
    for _ in epoch():  # warm-up epoch
        pass
    done = 0
    t0 = time.perf_counter()
    while done < batches:
        it = epoch()
        for b in it:
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
    close = getattr(it, "close", None)
    if close:  # an epoch left mid-way: let its work land before the loader is closed
        close()
    return n_img / dt


def run_baseline(folder, stats, workers, bs, batches, device) -> float:
    ds = JpegFolder(folder, stats)
    dl = torch.utils.data.DataLoader(ds, batch_size=bs, shuffle=True, drop_last=True, num_workers=workers,
                                     pin_memory=device.type == "cuda", persistent_workers=True,
                                     worker_init_fn=_worker_seed)
    r = time_batches(lambda: iter(dl), batches, device)
    del dl
    return r


def make_loader(split, stats, output: str = "float", **kw):
    """The one place this script builds a Loader: (the loader, epoch() iterating one epoch of its float
    input, or of its RawBatch for output="uint8")."""
    ld = Loader(split, InputTransform(stats), **kw)
    return ld, (ld.raw_batches if output == "uint8" else ld.__iter__)


def run_ours(data_dir, stats, workers, bs, batches, device, output) -> float:
    split = open_split(data_dir, "train")
    ld, epoch = make_loader(split, stats, output, batch_size=bs, workers=workers, seed=0, device=device)
    try:
        return time_batches(epoch, batches, device)
    finally:
        ld.close()


def per_core_rate(data_dir, stats, bs, batches) -> float:
    """Images per CPU-second of one worker: its user + system time (counted once it has exited and been
    joined), so the figure holds whatever else loads the machine. Whole epochs only, so the worker reads
    no batch that is not delivered."""
    import resource

    def children_cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    cpu0 = children_cpu()
    ld, epoch = make_loader(open_split(data_dir, "train"), stats, "uint8", batch_size=bs, workers=1, seed=0,
                            device="cpu")
    n = 0
    try:
        for _ in range(-(-batches // len(ld))):
            for _b in epoch():
                n += 1
    finally:
        ld.close()
    return n * bs / (children_cpu() - cpu0)


# ------------------------------------------------------------------------ the main process's ceiling
STAGES = ("_submit", "_collect", "_deliver", "_release_copied")  # the main process's work per batch


def main_process_cost(data_dir, stats, workers, bs, batches) -> dict:
    """CPU time the training process itself spends per batch, the float transform stubbed out.

    The loader's raw_batches() run (the device-ready crops and lighting offsets, no float
    transform: on a GPU host that runs on the GPU, its cost is the GPU suite's to measure) while the
    workers fill the slots. time.process_time() counts the main process (all its threads: the queue
    feeder thread pickles the tasks), never the workers, and not the time it waits for them; the
    _EpochRun stages are timed on the main thread (thread_time) to show where the time goes. On a CPU
    host the CUDA calls of a GPU host (copy launch, event record and query) are absent."""
    from trainer import loader as loader_mod

    spent = dict.fromkeys(STAGES, 0.0)
    originals = {name: getattr(loader_mod._EpochRun, name) for name in STAGES}

    def timed(name, fn):
        def wrapper(*a, **kw):
            t = time.thread_time()
            try:
                return fn(*a, **kw)
            finally:
                spent[name] += time.thread_time() - t
        return wrapper

    ld, epoch = make_loader(open_split(data_dir, "train"), stats, "uint8", batch_size=bs, workers=workers, seed=0,
                            device="cpu")
    try:
        for _ in epoch():  # warm-up epoch: workers started, page cache filled
            pass
        for name, fn in originals.items():
            setattr(loader_mod._EpochRun, name, timed(name, fn))
        done, cpu0, thr0 = 0, time.process_time(), time.thread_time()
        while done < batches:
            for _ in epoch():
                done += 1
                if done == batches:
                    break
        cpu, thr = time.process_time() - cpu0, time.thread_time() - thr0
    finally:
        for name, fn in originals.items():
            setattr(loader_mod._EpochRun, name, fn)
        ld.close()
    us = lambda t: round(t / batches * 1e6, 1)  # noqa: E731
    stages = {name.strip("_"): us(t) for name, t in spent.items()}
    stages["other_main_thread"] = us(thr - sum(spent.values()))
    stages["other_threads"] = us(cpu - thr)  # the queues' feeder thread
    return {"workers": workers, "main_us_per_batch": us(cpu), "ceiling_img_s": round(bs / (cpu / batches), 1),
            "tasks_per_batch": -(-bs // max(1, min(-(-bs // workers), 32))), "stages_us": stages}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=1024, help="photo-like 256x256 images to generate")
    ap.add_argument("--batches", type=int, default=40, help="timed batches per configuration (after a warm-up epoch)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts; the JSON reports 2 (or the last)")
    ap.add_argument("--cache", default=None, help="keep the generated data here and reuse it [default: a temp folder]")
    ap.add_argument("--device", default="auto", help="cuda, cpu or auto")
    ap.add_argument("--ceiling-workers", default="2,15",
                    help="worker counts for the main-process ceiling (15: a 16-core GPU host) [none: skip]")
    ap.add_argument("--ceiling-batches", type=int, default=200, help="batches timed for the ceiling")
    ap.add_argument("--real", default=str(ROOT.parent / "shared" / "data" / "images" / "val_original"),
                    help="folder of real JPEGs: their packed size and 1-worker rates [skipped when absent]")
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
        raw_bytes = lmdb_bytes_per_image(root / "raw", info["images"])
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
        real = {}
        if Path(args.real).is_dir() and any(Path(args.real).glob("*.JPEG")):
            real = make_real_data(Path(args.real), root / "real")
            rbs = min(32, real["real_images"] // 2)
            real_stats = load_stats(root / "real" / "real_raw")
            for enc in ("raw", "jpeg"):
                real[f"real_{enc}_img_per_core_s"] = round(per_core_rate(
                    root / "real" / f"real_{enc}", real_stats, rbs, max(args.batches, 60)), 1)
            print(f"{real['real_images']} real photos at 256x256: JPEG q{QUALITY} {real['real_jpeg_kb']} KB each; "
                  f"per worker CPU-second: raw {real['real_raw_img_per_core_s']:.0f}, "
                  f"jpeg {real['real_jpeg_img_per_core_s']:.0f} images", flush=True)
        per_core = {f"{enc}_img_per_core_s": round(per_core_rate(root / enc, stats, args.batch_size,
                                                                 args.batches), 1) for enc in ("raw", "jpeg")}
        print(f"per worker CPU-second, photo-like images: raw {per_core['raw_img_per_core_s']:.0f}, "
              f"jpeg {per_core['jpeg_img_per_core_s']:.0f} images", flush=True)
        ceilings = []
        for cw in [int(c) for c in args.ceiling_workers.split(",") if c.strip().isdigit()]:
            ceilings.append(main_process_cost(root / "raw", stats, cw, args.batch_size, args.ceiling_batches))
            c = ceilings[-1]
            print(f"main process, {cw} workers ({c['tasks_per_batch']} tasks per batch): {c['main_us_per_batch']:.0f} "
                  f"us per batch -> ceiling {c['ceiling_img_s']:.0f} img/s; stages (us): {c['stages_us']}", flush=True)
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
    out.update(real)
    out.update(per_core)
    out["raw_lmdb_bytes_per_image"] = raw_bytes
    if ceilings:  # the costliest configuration is the ceiling
        worst = max(ceilings, key=lambda c: c["main_us_per_batch"])
        out.update({"main_us_per_batch": worst["main_us_per_batch"], "ceiling_img_s": worst["ceiling_img_s"],
                    "ceiling_workers": worst["workers"], "ceiling_goal_met": worst["ceiling_img_s"] >= 40000,
                    "ceilings": ceilings})
    out.update({"device": str(device), "output": "float" if output == "float" else "uint8+offsets",
                "batch": args.batch_size, "images": args.images, "cores": os.cpu_count(),
                "load_avg": [round(load0, 2), round(os.getloadavg()[0], 2)]})
    print(json.dumps(out))


if __name__ == "__main__":
    main()

"""Evaluation throughput: `imgnet test`'s path against the loop a user would write, side by side.

Both evaluate the same random-weight AlexNet (the real one: 60,965,224 parameters, 1000 classes) on the
same packed val split (synthetic 256x256 images, raw LMDB, made on the fly), center crop and ten-crop.
Ours is trainer.evaluate.evaluate over trainer.loader.Loader, exactly as `imgnet test` builds them (loader
workers cut the crops into shared memory, the mean is subtracted on the device, bf16 autocast on CUDA,
inference_mode). The baseline reads each image with `split.read_image`, crops and subtracts the mean in
numpy, and runs the model in float32 under no_grad, one batch after another in one process. Each side
gets one warm-up batch before the clock starts; images/s counts images, not views (a ten-crop image is
ten forward passes).

    python bench/eval_throughput.py [--images N] [--batch-size 64] [--device cpu|cuda] [--workers W]

Last line: JSON with center_img_s, ten_crop_img_s, device, baseline_center_img_s,
baseline_ten_crop_img_s, images, batch_size, top1_agreement.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_split(data_dir: Path, n: int, classes: int = 1000, seed: int = 0):
    """n synthetic 256x256 images with labels 0..classes-1, packed raw into DATA/val.lmdb."""
    from imagenet_prep.store import write_split
    from imagenet_prep.synthetic import class_image

    rng = np.random.default_rng(seed)
    records = [(class_image(rng, i % 10, 10, (256, 256)), int(rng.integers(classes)), f"val_{i:06d}.JPEG")
               for i in range(n)]
    return write_split(data_dir, "val", records, num_classes=classes)


def fake_stats(split) -> dict:
    mean_image = np.mean([split.read_image(i).astype(np.float32) for i in range(min(len(split), 64))], axis=0)
    return {"mean_rgb": (mean_image.reshape(-1, 3).mean(0) / 255).tolist(), "eigval": [0.2175, 0.0188, 0.0045],
            "eigvec": [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]],
            "mean_image": mean_image}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ours(model, split, stats, ten: bool, batch_size: int, workers: int | None, device: torch.device):
    """(images/s, top-1 predictions) of evaluate() over the Loader that run_test builds."""
    from trainer.data import InputTransform
    from trainer.evaluate import evaluate, loader_workers
    from trainer.loader import Loader

    kw = dict(batch_size=batch_size, train=False, views="ten" if ten else "center",
              workers=loader_workers(workers, device), device=str(device))
    transform = InputTransform(stats, lighting_std=0.0)
    with Loader(split, transform, indices=np.arange(min(batch_size, len(split))), **kw) as warm:
        evaluate(model, warm, device=device)
    with Loader(split, transform, **kw) as loader:
        sync(device)
        t0 = time.perf_counter()
        r = evaluate(model, loader, ten_crop=ten, device=device, return_predictions=True)
        sync(device)
        dt = time.perf_counter() - t0
    return r["n"] / dt, r["top5"][:, 0]


def baseline(model, split, stats, ten: bool, batch_size: int, device: torch.device):
    """(images/s, top-1 predictions) of the plain loop: numpy crops and mean, float32 forward."""
    from trainer.evaluate import ten_crop

    mean = stats["mean_image"]
    mean_views = ten_crop(mean) if ten else mean[None, 16:240, 16:240]

    def run(indices):
        preds = []
        for lo in range(0, len(indices), batch_size):
            imgs = [split.read_image(int(i)).astype(np.float32) for i in indices[lo:lo + batch_size]]
            views = np.stack([(ten_crop(im) if ten else im[None, 16:240, 16:240]) - mean_views for im in imgs])
            x = torch.from_numpy(views.reshape(-1, 224, 224, 3).transpose(0, 3, 1, 2).copy()).to(device)
            with torch.no_grad():
                p = torch.softmax(model(x).float(), dim=1)
            preds.append(p.view(len(imgs), -1, p.shape[1]).mean(1).argmax(1).cpu())
        return torch.cat(preds).numpy()

    model.eval()
    run(np.arange(min(batch_size, len(split))))
    sync(device)
    t0 = time.perf_counter()
    pred = run(np.arange(len(split)))
    sync(device)
    return len(split) / (time.perf_counter() - t0), pred


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=None, help="val images [default: 48 on the CPU, 2048 on CUDA]")
    ap.add_argument("--batch-size", type=int, default=None, help="images per batch [default: 16 on the CPU, 128 on CUDA]")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--workers", type=int, default=None,
                    help="loader processes [default: as imgnet test: none on the CPU, all cores but one on CUDA]")
    args = ap.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    n = args.images or (2048 if cuda else 48)
    bs = args.batch_size or (128 if cuda else 16)

    from trainer.model import AlexNet

    torch.manual_seed(0)
    model = AlexNet(num_classes=1000).to(device).eval()
    with tempfile.TemporaryDirectory() as tmp:
        split = make_split(Path(tmp), n)
        stats = fake_stats(split)
        res = {}
        for ten in (False, True):
            res[ten] = (ours(model, split, stats, ten, bs, args.workers, device),
                        baseline(model, split, stats, ten, bs, device))
        split.close()

    name = torch.cuda.get_device_name(device) if cuda else f"cpu ({torch.get_num_threads()} threads)"
    print(f"{n} images, batch {bs}, {name}, {os.cpu_count()} cores, AlexNet 1000 classes, random weights")
    agree = []
    for ten, label in ((False, "center  "), (True, "ten-crop")):
        (o, po), (b, pb) = res[ten]
        agree.append(float(np.mean(po == pb)))
        print(f"  {label}  ours {o:8.1f} img/s   baseline {b:8.1f} img/s   x{o / b:.2f}   "
              f"top-1 agreement {agree[-1]:.3f}")
    print(json.dumps({"center_img_s": round(res[False][0][0], 1), "ten_crop_img_s": round(res[True][0][0], 1),
                      "device": name, "baseline_center_img_s": round(res[False][1][0], 1),
                      "baseline_ten_crop_img_s": round(res[True][1][0], 1), "images": n, "batch_size": bs,
                      "top1_agreement": round(min(agree), 4)}))


if __name__ == "__main__":
    main()

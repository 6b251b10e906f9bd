"""`imgnet demo`: the whole pipeline on a small ILSVRC2012-shaped source that it makes itself.

Stages, each through the same library call the CLI command uses:
    make_sample  official archive layout: train tar of per-class tars, flat val tar, devkit tar.gz
    prep         --classes K (the first K classes in sorted-wnid order, ImageNet-100 style)
    pca-stats    mean image and RGB eigendecomposition
    train        full AlexNet, paper architecture, demo-sized settings (below)
    test         --ten-crop on the packed val split

The full AlexNet trains at about 20 images/s on a 2-core CPU, so the demo trains few, easy classes
with small batches, a short step schedule and Caffe's 0.1 biases (with the paper's 1, these runs blow
up within a few steps); every setting is an ordinary `imgnet train` option, recorded in config.json.
Without batch normalisation, AlexNet on a few easy classes reaches a near-zero loss within two
epochs and then turns unstable at a constant rate (one confident mistake, a huge gradient): hence the
early learning-rate drops.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import click


@dataclass
class DemoConfig:
    out: str = "demo"            # folder for the source, DATA and RUN
    classes: int = 4             # easy synthetic classes (real wnids, synthetic pictures)
    train_per_class: int = 60    # training images per class
    val_per_class: int = 15      # validation images per class
    epochs: int = 6              # passes over the 4 x 60 training images
    batch_size: int = 16         # images per SGD step
    lr: float = 0.003            # batch 16 instead of 128: a smaller step than the paper's 0.01
    lr_schedule: str = "step:2,4"  # divide by 10 after epochs 2 and 4, once the easy classes are fitted
    bias_init: str = "caffe"     # 0.1 biases (Caffe's bvlc_alexnet)
    workers: int | None = None   # prep / loader processes
    seed: int = 0


def run_demo(cfg: DemoConfig) -> dict:
    """Run every stage; returns {"source", "data", "run", "prep", "stats", "train", "test", "seconds"}."""
    from imagenet_prep.prep import PrepConfig, run_prep
    from imagenet_prep.stats import compute_stats
    from trainer.eval.report import run_test
    from trainer.train import TrainConfig, train

    out = Path(cfg.out)
    src, data, run = out / "ILSVRC2012", out / "data", out / "run"
    say = lambda msg: click.echo(click.style("==> ", fg="green", bold=True) + msg, err=True)  # noqa: E731
    times = {}
    t0 = time.perf_counter()

    make_source(cfg, src, say)
    times["source"] = time.perf_counter() - t0

    say(f"imgnet prep --src {src} --out {data} --classes {cfg.classes}")
    t = time.perf_counter()
    prep = run_prep(PrepConfig(src=str(src), out=str(data), classes=cfg.classes, workers=cfg.workers))
    for name, r in prep["splits"].items():
        say(f"  {name}: {r['written']} images in {data / (name + '.lmdb')}, {len(r['converted'])} converted to RGB")
    times["prep"] = time.perf_counter() - t

    say(f"imgnet pca-stats --data {data}")
    t = time.perf_counter()
    stats = compute_stats(data, workers=cfg.workers)
    say("  eigval " + ", ".join(f"{v:.4f}" for v in stats["eigval"]) + f"; wrote {data / 'stats.json'}")
    times["pca-stats"] = time.perf_counter() - t

    tcfg = TrainConfig(data=str(data), out=str(run), epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                       lr_schedule=cfg.lr_schedule, bias_init=cfg.bias_init, workers=cfg.workers, seed=cfg.seed, device="auto",
                       resume=(run / "checkpoints" / "last.pt").is_file())
    say(f"imgnet train --data {data} --out {run} --epochs {cfg.epochs} --batch-size {cfg.batch_size} "
        f"--lr {cfg.lr} --lr-schedule {cfg.lr_schedule} --bias-init {cfg.bias_init}" + (" --resume" if tcfg.resume else ""))
    t = time.perf_counter()
    summary = train(tcfg)
    times["train"] = time.perf_counter() - t

    ckpt = run / "checkpoints" / "best.pt"
    say(f"imgnet test --data {data} --ckpt {ckpt} --ten-crop")
    t = time.perf_counter()
    test = run_test(data, ckpt, ten_crop=True, workers=cfg.workers)
    times["test"] = time.perf_counter() - t
    seconds = time.perf_counter() - t0

    chance = 1 - 1 / cfg.classes
    say(f"ten-crop top-1 error {test['top1_err']:.3f} on {test['n']} val images (chance: {chance:.3f}); "
        f"the run is in {run} (log.jsonl, curves.png, checkpoints/)")
    say("stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()) + f"; total {seconds:.0f}")
    result = {"source": str(src), "data": str(data), "run": str(run), "prep": prep,
              "stats": {k: v for k, v in stats.items() if k != "mean_image"}, "train": summary,
              "test": {k: test[k] for k in ("n", "top1_err", "top5_err", "mistake_severity")},
              "stage_seconds": times, "seconds": seconds}
    (out / "demo.json").write_text(json.dumps(result, indent=1, default=str))
    return result


def make_source(cfg: DemoConfig, src: Path, say) -> None:
    """The ILSVRC2012-shaped source in the official archive layout (kept when a previous demo made it)."""
    from imagenet_prep.synthetic import make_sample

    say(f"making an ILSVRC2012-shaped source in {src} ({cfg.classes} classes, "
        f"{cfg.train_per_class} train + {cfg.val_per_class} val images each)")
    if not (src / "ILSVRC2012_devkit_t12.tar.gz").is_file():
        make_sample(src, classes=cfg.classes, train_per_class=cfg.train_per_class,
                    val_per_class=cfg.val_per_class, seed=cfg.seed)

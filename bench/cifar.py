"""The paper's CIFAR-10 experiments on the real CIFAR-10 (../shared/data/cifar10): prep, the trainer's epoch
against a plain PyTorch loop, and optionally the whole quick recipe and Figure 1.

    python bench/cifar.py                     # official download (make_official.py, ~50 s), prep, one epoch each
    python bench/cifar.py --official DIR      # DIR holds cifar-10-python.tar.gz already
    python bench/cifar.py --full              # + the quick recipe (10 epochs) and `imgnet test` -> test error
    python bench/cifar.py --figure1           # + `imgnet figure1` (about an hour or more on 2 cores)

Measured, side by side in one run with the same torch threads (--threads, default 1):
- prep: `imgnet prep --size 32` of the 60,000 images (images/s), then `imgnet pca-stats`;
- trainer: `imgnet train --arch cifar-quick --epochs 1` (Caffe's quick recipe: batch 100, lr 0.001 with bias
  x2, momentum 0.9, weight decay 0.004), its epoch's images_per_s from log.jsonl (training only, no
  validation), in a subprocess with OMP_NUM_THREADS=threads;
- plain: the loop a user would write: the packed train split read once into a uint8 tensor, the mean image
  subtracted, SGD over shuffled batches of 100 of the same net (trainer.cuda_convnet.CifarQuick) with the same
  per-layer groups, in a process of its own with OMP_NUM_THREADS=threads, as the trainer's.
The plain loop's input ends up NHWC in memory (the permute of HWC images), which oneDNN's CPU convolutions run
about 1.7x faster than NCHW here, and the trainer's CPU default is the same layout (--channels-last). The two
alternate for --rounds rounds (default 3) and each side's best round counts; "ratio" is trainer / plain: the
cost of the toolkit's loader and loop (goal >= 0.9). One more trainer epoch with --no-channels-last (NCHW) is
reported beside it.
The last line printed is one JSON object of all figures; where the CIFAR-10 copy is absent it says so and that
line has "skipped". --work DIR keeps the outputs (DATA, runs) in a new folder under DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "data" / "cifar10"  # cifar10_jpg.tar.gz + make_official.py
ARCHIVE = "cifar-10-python.tar.gz"
BATCH = 100  # Caffe's cifar10_quick batch_size


# ------------------------------------------------------------------------------ the plain loop
def load_split(data, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """A packed split read once into memory: uint8 (N, H, W, 3) images and int64 (N,) labels."""
    from imagenet_prep import open_split

    s = open_split(str(data), split)
    try:
        images = np.stack([s[i].image for i in range(len(s))])
        labels = np.asarray(s.labels, np.int64)
    finally:
        s.close()
    return torch.from_numpy(images), torch.from_numpy(labels)


def plain_model(num_classes: int, side: int, seed: int = 0):
    """cifar-quick and its recipe's optimizer (per-layer lr and decay multipliers), as a user would build them."""
    from trainer.cuda_convnet import RECIPES, CifarQuick, param_groups

    recipe = RECIPES["cifar-quick"]
    torch.manual_seed(seed)
    model = CifarQuick(num_classes=num_classes, side=side)
    opt = torch.optim.SGD(param_groups(model, recipe), lr=recipe["lr"], momentum=recipe["momentum"])
    return model, opt


def plain_epoch(model, opt, images: torch.Tensor, labels: torch.Tensor, mean_image: torch.Tensor,
                batch_size: int = BATCH, seed: int = 0) -> dict:
    """One epoch of SGD over shuffled full batches: x = image - mean image (0-255 scale, NCHW float).
    `mean_image`: float (H, W, 3). Returns {"images", "seconds", "images_per_s", "train_top1_err", "loss"}."""
    mean = mean_image.permute(2, 0, 1).contiguous().float()  # (3, H, W)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    n = len(order) // batch_size * batch_size  # drop_last, as the trainer
    model.train()
    wrong, loss_sum = 0, 0.0
    t0 = time.perf_counter()
    for i in range(0, n, batch_size):
        idx = order[i:i + batch_size]
        x = images[idx].permute(0, 3, 1, 2).float() - mean  # (B, 3, H, W)
        y = labels[idx]
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        wrong += int((logits.argmax(1) != y).sum())
        loss_sum += loss.item() * len(y)
    seconds = time.perf_counter() - t0
    return {"images": n, "seconds": seconds, "images_per_s": n / seconds, "train_top1_err": wrong / max(n, 1),
            "loss": loss_sum / max(n, 1)}


def plain_run(data, threads: int) -> dict:
    """The plain loop's first epoch on DATA's train split, with `threads` torch threads. Its input ends up NHWC
    in memory (the permute of the HWC images), which oneDNN's CPU convolutions run faster."""
    from imagenet_prep.stats import load_stats

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    images, labels = load_split(data)
    load_s = time.perf_counter() - t0
    mean = torch.as_tensor(np.asarray(load_stats(str(data))["mean_image"], np.float32))
    model, opt = plain_model(int(labels.max()) + 1, images.shape[1])
    return {**plain_epoch(model, opt, images, labels, mean), "load_seconds": load_s, "threads": threads}


# ------------------------------------------------------------------------------------ commands
def imgnet(*args, threads: int | None = None, capture: bool = False) -> tuple[float, str]:
    """Run `imgnet ARGS` (python -m cli) from the repository; (seconds, stdout). Exits on failure."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    print("$ imgnet " + " ".join(map(str, args)), file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "cli", *map(str, args)], cwd=ROOT, env=env, text=True,
                       stdout=subprocess.PIPE)
    seconds = time.perf_counter() - t0
    sys.stderr.write(r.stdout)
    if r.returncode:
        sys.exit(f"imgnet {args[0]} failed (exit {r.returncode})")
    return seconds, r.stdout


def official(work: Path, given: Path | None, cifar: Path = CIFAR) -> tuple[Path, float | None]:
    """(a folder holding only cifar-10-python.tar.gz, seconds make_official.py took or None when given)."""
    src = work / "src"
    src.mkdir(parents=True, exist_ok=True)
    seconds = None
    if given is None:
        t0 = time.perf_counter()
        built = work / "official"
        subprocess.run([sys.executable, str(cifar / "make_official.py"), str(built)], check=True)
        seconds, given = time.perf_counter() - t0, built
    if not (given / ARCHIVE).is_file():
        sys.exit(f"--official {given}: no {ARCHIVE} there; expected the folder make_official.py writes")
    link = src / ARCHIVE
    if not link.exists():
        link.symlink_to((given / ARCHIVE).resolve())  # the binary download beside it would be a second layout
    return src, seconds


def prep(src: Path, data: Path) -> dict:
    seconds, _ = imgnet("prep", "--src", src, "--out", data, "--size", 32)
    stats_s, _ = imgnet("pca-stats", "--data", data)
    report = json.loads((data / "prep-report.json").read_text())
    n = sum(s.get("written", 0) for s in report.get("splits", {}).values())
    return {"images": n, "seconds": seconds, "images_per_s": n / seconds, "pca_stats_seconds": stats_s}


def trainer_epoch(data: Path, run: Path, threads: int, workers: int | None, *more) -> dict:
    """`imgnet train --arch cifar-quick --epochs 1` (plus `more` options): its epoch's training images/s
    (log.jsonl)."""
    extra = ([] if workers is None else ["--workers", workers]) + list(more)
    seconds, _ = imgnet("train", "--data", data, "--out", run, "--arch", "cifar-quick", "--epochs", 1,
                        "--device", "cpu", *extra, threads=threads)
    row = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()][-1]
    return {"images": row["n_train"], "seconds": row["train_seconds"], "images_per_s": row["images_per_s"],
            "train_top1_err": row["train_top1_err"], "command_seconds": seconds, "workers": workers,
            "options": list(map(str, more))}


def full_recipe(data: Path, run: Path, threads: int) -> dict:
    """The quick recipe (10 epochs, lr / 10 after 8) and `imgnet test` of its last checkpoint on the test batch
    (last.pt: best.pt would be picked on the very images it is scored on)."""
    train_s, _ = imgnet("train", "--data", data, "--out", run, "--arch", "cifar-quick", "--device", "cpu",
                        threads=threads)
    test_s, out = imgnet("test", "--data", data, "--ckpt", run / "checkpoints" / "last.pt", "--device", "cpu",
                         threads=threads)
    line = json.loads(out.strip().splitlines()[-1])
    rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    return {"epochs": len(rows), "test_top1_err": line["top1_err"], "test_split": line["split"], "n": line["n"],
            "val_top1_err_by_epoch": [r["val_top1_err"] for r in rows], "train_seconds": train_s,
            "test_seconds": test_s, "goal_test_top1_err": 0.255, "caffe_test_top1_err": 0.247}


def figure1(data: Path, out: Path, jobs: int, max_epochs: int | None) -> dict:
    args = ["--jobs", jobs] + ([] if max_epochs is None else ["--max-epochs", max_epochs])
    seconds, _ = imgnet("figure1", "--data", data, "--out", out, "--device", "cpu", *args)
    rec = json.loads((out / "figure1.json").read_text())
    for net in rec["nets"].values():
        net.pop("curve", None)  # figure1.json keeps the curves; the summary line stays one screen
    return {**rec, "command_seconds": seconds}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cifar", type=Path, default=CIFAR, help="folder of cifar10_jpg.tar.gz and make_official.py")
    p.add_argument("--official", type=Path, default=None, help="folder holding cifar-10-python.tar.gz already")
    p.add_argument("--work", type=Path, default=None,
                   help="keep the outputs in a new folder under DIR [default: a temporary folder, removed]")
    p.add_argument("--threads", type=int, default=1, help="torch threads of both loops (the reference: 1)")
    p.add_argument("--trainer-workers", type=int, default=None, help="imgnet train --workers [default: its own]")
    p.add_argument("--rounds", type=int, default=3, help="alternating epochs of each loop; the best counts")
    p.add_argument("--plain-data", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--full", action="store_true", help="also the quick recipe's 10 epochs and its test error")
    p.add_argument("--figure1", action="store_true", help="also the whole `imgnet figure1` run")
    p.add_argument("--figure1-jobs", type=int, default=1, choices=(1, 2))
    p.add_argument("--figure1-max-epochs", type=int, default=None)
    return p.parse_args(argv)


def plain_process(data: Path, threads: int) -> dict:
    """`plain_run` in a fresh process of its own, as the trainer's epoch runs (`imgnet train` in a subprocess):
    both sides start alike, with OMP_NUM_THREADS=threads, and nothing of one stays in the other's memory."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, __file__, "--plain-data", str(data), "--threads", str(threads)], env=env,
                       text=True, stdout=subprocess.PIPE, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    a = parse_args(argv)
    if a.plain_data is not None:  # one side of the comparison, in its own process (plain_process)
        r = plain_run(a.plain_data, a.threads)
        print(json.dumps(r))
        return r
    res = {"bench": "cifar", "load_average_start": list(os.getloadavg()), "threads": a.threads,
           "cpus": os.cpu_count(), "torch": torch.__version__}
    if a.official is None and not (a.cifar / "cifar10_jpg.tar.gz").is_file():
        print(f"note: no CIFAR-10 copy at {a.cifar} (cifar10_jpg.tar.gz) and no --official: skipped", file=sys.stderr)
        res["skipped"] = f"no CIFAR-10 at {a.cifar}"
        print(json.dumps(res))
        return res
    print(f"load average at start: {res['load_average_start']}", file=sys.stderr)
    if a.work is not None:
        a.work.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-cifar-", dir=a.work))  # fresh: every stage starts from nothing
    res["work"] = str(work) if a.work is not None else None
    try:
        res.update(_measure(a, work))
    finally:
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)
    res["load_average_end"] = list(os.getloadavg())
    print(f"load average at end: {res['load_average_end']}", file=sys.stderr)
    print(json.dumps(res))
    return res


def _measure(a, work: Path) -> dict:
    res = {}
    t0 = time.perf_counter()
    src, res["make_official_seconds"] = official(work, a.official, a.cifar)
    data = work / "DATA"
    res["prep"] = prep(src, data)
    # the plain loop's input, (u8.permute(0, 3, 1, 2).float() - mean), is NHWC in memory, as the trainer's CPU
    # default (--channels-last); rounds alternate the two so that a load that comes and goes hits both alike,
    # and each side's best round counts (the one least slowed by anything else on the machine)
    rounds = {"trainer": [], "plain": []}
    for r in range(a.rounds):
        rounds["trainer"].append(trainer_epoch(data, work / f"run-epoch-{r}", a.threads, a.trainer_workers))
        rounds["plain"].append(plain_process(data, a.threads))
    for key, runs in rounds.items():
        res[key] = max(runs, key=lambda m: m["images_per_s"])
        res[key]["rounds_images_per_s"] = [m["images_per_s"] for m in runs]
    res["trainer_nchw"] = trainer_epoch(data, work / "run-epoch-nchw", a.threads, a.trainer_workers,
                                        "--no-channels-last")
    for key in ("trainer", "trainer_nchw"):
        res[key]["ratio"] = res[key]["images_per_s"] / res["plain"]["images_per_s"]
        print(f"{key}: {res[key]['images_per_s']:.0f} img/s, plain loop {res['plain']['images_per_s']:.0f} img/s: "
              f"ratio {res[key]['ratio']:.2f} (goal >= 0.9)", file=sys.stderr)
    res["ratio"], res["ratio_goal"] = res["trainer"]["ratio"], 0.9
    if a.full:
        res["full"] = full_recipe(data, work / "run-quick", a.threads)
        res["full"]["recipe_seconds"] = (res["prep"]["seconds"] + res["prep"]["pca_stats_seconds"]
                                         + res["full"]["train_seconds"] + res["full"]["test_seconds"])
    if a.figure1:
        res["figure1"] = figure1(data, work / "figure1", a.figure1_jobs, a.figure1_max_epochs)
    res["seconds"] = time.perf_counter() - t0
    return res


if __name__ == "__main__":
    main()

"""`imgnet train`: AlexNet with the paper's recipe (Krizhevsky et al. 2012, section 5) from packed splits.

    from trainer.train import TrainConfig, train
    summary = train(TrainConfig(data="DATA", out="RUN"))

RUN/config.json (settings, versions, device), RUN/log.jsonl (one line per epoch), RUN/checkpoints/last.pt
and best.pt (self-contained, see trainer/checkpoint.py), RUN/curves.png.

Devices: one GPU or the CPU; two GPUs as in the paper with `model_parallel` (one tower per GPU); many
GPUs or machines data parallel, one process per GPU:
    torchrun --nproc_per_node 8 -m cli train --data DATA --out RUN
(NCCL on CUDA, gloo on CPU). `batch_size` is the SGD batch of all processes together (128 in the
paper), split evenly between them, so the recipe does not change with the process count. Only rank 0
writes files; RUN must be on a filesystem every node sees for --resume.

Exact resume works at epoch boundaries: the loader's order and augmentation are a function of
(seed, epoch), and the checkpoint holds the optimizer, schedule and every RNG state. A Ctrl-C inside an
epoch saves the weights of that moment; resuming then restarts that epoch from its first batch with
them (not bit-exact; the next log line says so).
"""

from __future__ import annotations

import json
import math
import os
import platform
import signal
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from imagenet_prep.atomic import write_json
from imagenet_prep.errors import ImgnetError
from trainer import checkpoint as ck
from trainer.evaluate import autocast
from trainer import model as model_lib

HOLDOUT_SEED = 0  # --val-from-train picks the same images whatever --seed, so runs compare on one set


@dataclass
class TrainConfig:
    data: str = ""                   # DATA folder: `imgnet prep` splits + `imgnet pca-stats` statistics
    out: str = ""                    # RUN folder: config.json, log.jsonl, checkpoints/, curves.png
    # recipe, section 5
    epochs: int = 90                 # "roughly 90 cycles through the training set"
    batch_size: int = 128            # images per SGD step, all processes together
    lr: float = 0.01                 # initial learning rate, equal for all layers
    momentum: float = 0.9
    weight_decay: float = 5e-4       # L2 on every weight and bias, as the paper's update rule
    lr_schedule: str = "plateau"     # plateau | step:E1,E2,... (divide after epochs E1, E2, ...)
    lr_factor: float = 0.1           # multiplier per drop: "divide the learning rate by 10"
    patience: int = 3                # plateau: epochs without a new best val top-1 error before a drop
    max_lr_drops: int = 3            # plateau: "reduced three times prior to termination"
    val_from_train: int = 0          # images per class held out of train to steer the schedule and pick
                                     # best.pt (0: use the val split)
    # model, section 3, and the paper's ablations (trainer.model.AlexNet keywords)
    towers: int = 2                  # 2: the two-GPU net (groups=2); 1: the paper's one-GPU net
    lrn: str = "paper"               # paper (alpha on the plain sum) | caffe (alpha / n) | none
    pool: str = "overlap"            # overlap (3/2) | nonoverlap (2/2), section 3.4
    activation: str = "relu"         # relu | tanh, section 3.1
    dropout: float = 0.5             # fc6, fc7, section 4.2
    bias_init: str = "paper"         # paper (1 in conv2, conv4, conv5, fc6, fc7) | caffe (0.1 there)
    # input, section 4.1
    mean: str = "image"              # subtract the mean image | the mean RGB
    lighting_std: float = 0.1        # sigma of the PCA lighting alphas; 0 turns it off
    # machinery
    workers: int | None = None       # loader processes; None: the loader's default
    device: str = "auto"             # auto (cuda if available) | cpu | cuda | cuda:N
    amp: str = "off"                 # off (float32) | bf16 (autocast) | fp16 (autocast + GradScaler, CUDA)
    channels_last: bool = False      # NHWC memory format for the convolutions
    compile: bool = False            # torch.compile the model
    model_parallel: bool = False     # one tower per GPU on cuda:0 and cuda:1, as in the paper
    seed: int = 0                    # weights, loader order, augmentation, dropout
    resume: bool = False             # continue RUN from RUN/checkpoints/last.pt
    progress: bool = True            # progress bar and per-epoch lines on stderr


# settings that may differ between a run and its --resume; the others define the run
RUNTIME_FIELDS = {"data", "out", "epochs", "workers", "device", "amp", "channels_last", "compile", "resume", "progress"}
SYNC_EVERY = 16  # CUDA: steps between host syncs (NaN check, stop request, progress bar)
CHOICES = {"lrn": model_lib.LRNS, "pool": tuple(model_lib.POOLS), "activation": model_lib.ACTIVATIONS,
           "bias_init": tuple(model_lib.BIAS_INITS), "mean": ("image", "rgb"), "amp": ("off", "bf16", "fp16"),
           "towers": (1, 2)}  # the model's own lists, so that a new switch value needs one edit


def check_config(cfg: TrainConfig) -> None:
    """ImgnetError for a setting no run can use (device-dependent checks come later)."""
    if not cfg.data or not cfg.out:
        raise ImgnetError("TrainConfig needs data (the DATA folder) and out (the RUN folder)")
    for name, allowed in CHOICES.items():
        if getattr(cfg, name) not in allowed:
            raise ImgnetError(f"{name}={getattr(cfg, name)!r}; expected one of {', '.join(map(str, allowed))}")
    positive = {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr, "patience": cfg.patience}
    for name, v in positive.items():
        if not v > 0:
            raise ImgnetError(f"{name}={v}; expected a positive number")
    if not 0 <= cfg.dropout < 1:
        raise ImgnetError(f"dropout={cfg.dropout}; expected a probability in [0, 1)")
    for name in ("lighting_std", "val_from_train", "weight_decay", "max_lr_drops"):
        if getattr(cfg, name) < 0:
            raise ImgnetError(f"{name}={getattr(cfg, name)}; expected a number >= 0")
    if not 0 < cfg.lr_factor < 1:
        raise ImgnetError(f"lr_factor={cfg.lr_factor}; expected a factor in (0, 1) such as 0.1")
    parse_schedule(cfg.lr_schedule)


# ------------------------------------------------------------------------------- lr schedule
def parse_schedule(spec: str) -> tuple[str, list[int]]:
    """'plateau' -> ('plateau', []); 'step:30,60,80' -> ('step', [30, 60, 80])."""
    if spec == "plateau":
        return "plateau", []
    if spec.startswith("step:"):
        try:
            ms = [int(s) for s in spec[5:].split(",") if s.strip()]
        except ValueError:
            ms = []
        if ms and all(m > 0 for m in ms) and ms == sorted(set(ms)):
            return "step", ms
    raise ImgnetError(f"--lr-schedule {spec!r}; expected 'plateau' or 'step:E1,E2,...' "
                      "(increasing epochs after which the lr is divided by 10, e.g. step:30,60,80)")


class LrSchedule:
    """The learning rate of each epoch. plateau: multiply by `factor` when the val top-1 error has not
    improved for `patience` epochs, at most `max_drops` times (section 5 did this by hand "when the
    validation error rate stopped improving"); step: multiply after each listed epoch."""

    def __init__(self, spec: str, base_lr: float, factor: float = 0.1, patience: int = 3, max_drops: int = 3):
        self.kind, self.milestones = parse_schedule(spec)
        self.base_lr, self.factor, self.patience, self.max_drops = base_lr, factor, patience, max_drops
        self.drops = 0
        self.best = math.inf  # lowest val top-1 error seen
        self.bad_epochs = 0  # epochs since `best` improved

    @property
    def lr(self) -> float:
        return self.base_lr * self.factor ** self.drops

    def step(self, epoch: int, val_top1_err: float) -> bool:
        """Record the finished `epoch` (1-based); True when the next epoch runs at a lower lr."""
        before = self.drops
        if val_top1_err < self.best:
            self.best, self.bad_epochs = val_top1_err, 0
        else:
            self.bad_epochs += 1
        if self.kind == "step":
            self.drops = sum(m <= epoch for m in self.milestones)
        elif self.bad_epochs >= self.patience and self.drops < self.max_drops:
            self.drops += 1
            self.bad_epochs = 0
        return self.drops != before

    def state_dict(self) -> dict:
        return {"kind": self.kind, "milestones": list(self.milestones), "base_lr": self.base_lr,
                "factor": self.factor, "patience": self.patience, "max_drops": self.max_drops,
                "drops": self.drops, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, s: dict) -> None:
        self.drops, self.best, self.bad_epochs = s["drops"], s["best"], s["bad_epochs"]


# ------------------------------------------------------------------------ processes, devices
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this train() call created the process group and destroys it

    @property
    def main(self) -> bool:
        return self.rank == 0


def resolve_device(spec: str, local_rank: int = 0, world: int = 1) -> torch.device:
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError as e:
        raise ImgnetError(f"--device {spec!r}; expected auto, cpu, cuda or cuda:N") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ImgnetError(f"--device {spec}: no CUDA device is available here; use --device cpu")
        if world > 1:  # torchrun: one GPU per process
            device = torch.device("cuda", local_rank)
        if (device.index or 0) >= torch.cuda.device_count():
            raise ImgnetError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ImgnetError(f"--device {spec!r}; expected auto, cpu, cuda or cuda:N")
    return device


def init_distributed(device_spec: str) -> tuple[Dist, torch.device]:
    """Dist from torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK) and this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), resolve_device(device_spec)
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_spec, local, world)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        owns = True
    return Dist(rank, world, local, owns), device


def _all_sum(values: list[float], d: Dist, device: torch.device) -> list[float]:
    if d.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


# -------------------------------------------------------------------------------------- data
def holdout(labels: np.ndarray, per_class: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices): `per_class` images of every class, chosen with a fixed seed."""
    rng = np.random.default_rng(HOLDOUT_SEED)
    held = []
    counts = np.bincount(labels, minlength=num_classes)
    for c in range(num_classes):
        if counts[c] <= per_class:
            raise ImgnetError(f"--val-from-train {per_class}: class {c} has only {counts[c]} train images; "
                              f"expected more than {per_class} so that some remain for training")
        held.append(rng.permutation(np.flatnonzero(labels == c))[:per_class])
    held = np.sort(np.concatenate(held))
    keep = np.ones(len(labels), bool)
    keep[held] = False
    return np.flatnonzero(keep), held


def open_data(cfg: TrainConfig) -> dict:
    """Splits, statistics and label map of DATA, checked against each other."""
    from imagenet_prep import open_split
    from imagenet_prep.labels import read_labels_json
    from imagenet_prep.stats import load_stats

    labels = read_labels_json(cfg.data)
    train_split = open_split(cfg.data, "train")
    stats = load_stats(cfg.data)
    made_from = (stats.get("source") or {}).get("labels_sha256")
    if made_from and train_split.meta.get("labels_sha256") and made_from != train_split.meta["labels_sha256"]:
        raise ImgnetError(f"the statistics in {cfg.data} were computed on another train split (another label map); "
                          f"rerun `imgnet pca-stats --data {cfg.data}`")
    n = len(labels["classes"])
    if cfg.val_from_train:
        train_idx, val_idx = holdout(train_split.labels, cfg.val_from_train, n)
        val_split, source = train_split, f"train-holdout-{cfg.val_from_train}-per-class"
    else:
        train_idx = val_idx = None
        try:
            val_split = open_split(cfg.data, "val")
        except ImgnetError as e:
            raise ImgnetError(f"{e} (validation steers the lr schedule and picks best.pt; "
                              "or hold out train images with --val-from-train N)") from e
        source = "val"
    return {"labels": labels, "stats": stats, "train": train_split, "val": val_split, "train_idx": train_idx,
            "val_idx": val_idx, "val_source": source, "num_classes": n}


def make_loaders(cfg: TrainConfig, data: dict, d: Dist, device: torch.device):
    from trainer.loader import Loader

    if cfg.batch_size % d.world:
        raise ImgnetError(f"--batch-size {cfg.batch_size} does not split over {d.world} processes; "
                          f"expected a multiple of {d.world}")
    per_rank = cfg.batch_size // d.world
    common = dict(workers=cfg.workers, seed=cfg.seed, device=str(device), rank=d.rank, world_size=d.world,
                  mean=cfg.mean, channels_last=cfg.channels_last, num_classes=data["num_classes"],
                  labels=data["labels"])
    train_loader = Loader(data["train"], data["stats"], batch_size=per_rank, train=True, views="random",
                          lighting_std=cfg.lighting_std, indices=data["train_idx"], **common)
    val_loader = Loader(data["val"], data["stats"], batch_size=per_rank, train=False, views="center",
                        drop_last=False, lighting_std=0.0, indices=data["val_idx"], **common)
    if len(train_loader) == 0:
        n = len(data["train"]) if data["train_idx"] is None else len(data["train_idx"])
        raise ImgnetError(f"{n} train images make no full batch of {cfg.batch_size}; expected a smaller --batch-size")
    return train_loader, val_loader


# --------------------------------------------------------------------------------- run folder
def _append_line(path: Path, obj: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(obj) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _read_log(path: Path) -> list[dict]:
    from trainer.plot import read_log

    return read_log(path) if path.is_file() else []


def environment(device: torch.device, d: Dist) -> dict:
    import importlib.metadata as md

    try:
        version = md.version("imgnet")
    except md.PackageNotFoundError:
        version = None
    env = {"imgnet": version, "torch": torch.__version__, "numpy": np.__version__,
           "python": platform.python_version(), "platform": platform.platform(), "hostname": socket.gethostname(),
           "device": str(device), "world_size": d.world, "argv": sys.argv,
           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        env.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                   gpu=torch.cuda.get_device_name(device), gpus=torch.cuda.device_count())
    if d.world > 1:
        env["backend"] = dist.get_backend()
    return env


def _describe_run(run: Path) -> str:
    rows = _read_log(run / "log.jsonl")
    try:
        epochs = json.loads((run / "config.json").read_text()).get("epochs")
    except (OSError, ValueError):
        epochs = None
    done = rows[-1]["epoch"] if rows else 0
    state = "finished" if epochs and done >= epochs else "unfinished"
    return f"{state}: {done} of {epochs if epochs else '?'} epochs"


def prepare_run(cfg: TrainConfig, run: Path) -> dict | None:
    """Refuse to overwrite a run; with resume, the checkpoint to continue from (checked)."""
    if run.exists() and not run.is_dir():
        raise ImgnetError(f"--out {run} is a file; expected a folder for the run")
    last = run / "checkpoints" / "last.pt"
    if not cfg.resume:
        if last.exists() or _read_log(run / "log.jsonl"):  # a run that stopped before its first epoch is no loss
            raise ImgnetError(f"{run} already holds a run ({_describe_run(run)}); pass --resume to continue it "
                              "or choose another --out")
        return None
    if not last.is_file():
        raise ImgnetError(f"--resume: {last} not found; nothing to continue (start without --resume)")
    ckpt = ck.load_checkpoint(last)
    saved = ckpt.get("config") or {}
    now = asdict(cfg)
    diff = [f"{k} {saved.get(k)!r} -> {now[k]!r}" for k in now if k not in RUNTIME_FIELDS and saved.get(k) != now[k]]
    if diff:
        raise ImgnetError(f"--resume with other settings than {run} was started with ({'; '.join(diff)}); "
                          "repeat the run's options (only --epochs, --workers, --device, --amp, --compile and "
                          "--channels-last may change) or choose another --out")
    return ckpt


# ---------------------------------------------------------------------------------- training
def build_model(cfg: TrainConfig, num_classes: int, device: torch.device, state: dict | None = None):
    """(AlexNet on `device`, or split over cuda:0 and cuda:1 with model_parallel; its kwargs).
    `state`: grouped (one-device) weights to start from, as checkpoints hold them."""
    from trainer.model import AlexNet

    kwargs = dict(num_classes=num_classes, towers=cfg.towers, lrn=cfg.lrn, pool=cfg.pool,
                  activation=cfg.activation, dropout=cfg.dropout, bias_init=cfg.bias_init)
    torch.manual_seed(cfg.seed)  # the same initial weights in every process (DDP also broadcasts rank 0's)
    model = AlexNet(**kwargs)
    if state is not None:
        model.load_state_dict(state)
    if cfg.model_parallel:
        model = model.to_model_parallel(("cuda:0", "cuda:1"))  # section 3.2: one tower per GPU
    else:
        model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, kwargs


def check_model_parallel(cfg: TrainConfig, device: torch.device, d: Dist) -> None:
    if not cfg.model_parallel:
        return
    if d.world > 1:
        raise ImgnetError("--model-parallel under torchrun is not supported; use one or the other")
    if cfg.towers != 2:
        raise ImgnetError(f"--model-parallel needs --towers 2 (one tower per GPU); got --towers {cfg.towers}")
    if device.type != "cuda" or torch.cuda.device_count() < 2:
        raise ImgnetError(f"--model-parallel needs two CUDA devices; found {torch.cuda.device_count()} "
                          f"(device {device})")


def _wrap(model, cfg: TrainConfig, device: torch.device, d: Dist):
    """(module the loop trains: DistributedDataParallel and/or compiled around `model`, module to validate).
    Compile outside DDP, so that DDP's gradient all-reduce still overlaps the compiled backward."""
    net = model
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)
    return net, model


def _seed_process(seed: int, rank: int) -> None:
    """Distinct dropout/numpy/python streams per process, reproducible from (seed, rank)."""
    import random

    s = np.random.SeedSequence([seed, rank]).generate_state(2)
    torch.manual_seed(int(s[0]))
    np.random.seed(int(s[1]))
    random.seed(int(s[1]))


def _validate(model, loader, d: Dist, device: torch.device, amp: str = "off") -> dict:
    from trainer.evaluate import evaluate

    # a process whose share of a small val split is empty still joins the sums (or the others would wait)
    m = evaluate(model, loader, amp=amp) if len(loader) else {"top1_err": 0.0, "top5_err": 0.0, "loss": 0.0, "n": 0}
    n = m["n"]
    top1, top5, loss, n = _all_sum([m["top1_err"] * n, m["top5_err"] * n, m["loss"] * n, n], d, device)
    if n == 0:
        raise ImgnetError("the validation split yielded no images; expected a non-empty labelled split")
    return {"top1_err": top1 / n, "top5_err": top5 / n, "loss": loss / n, "n": int(n)}


class _StopRequest:
    """Ctrl-C or SIGTERM (cluster pre-emption, `kill`) asks training to stop: the loop finishes the step
    in flight, saves an exact checkpoint and stops. A second signal stops at once, without saving."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def _handler(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt(f"signal {signum} (second)")
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this step with a checkpoint "
              "(again to stop at once, without one)", file=sys.stderr)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def train(cfg: TrainConfig) -> dict:
    """Train AlexNet as `cfg` says; returns a summary {"run", "epochs", "best_val_top1_err", "best_epoch",
    "last", "checkpoint", "seconds"}. Raises ImgnetError for bad input (before any work where possible)."""
    check_config(cfg)
    d, device = init_distributed(cfg.device)
    opened: list = []  # splits and loaders (worker processes, LMDB handles), closed whatever happens
    try:
        return _train(cfg, d, device, opened)
    finally:
        for thing in reversed(opened):
            thing.close()
        if d.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, d: Dist, device: torch.device, opened: list) -> dict:
    t_start = time.perf_counter()
    if cfg.amp == "fp16" and device.type != "cuda":
        raise ImgnetError(f"--amp fp16 needs CUDA (GradScaler); on {device.type} use --amp bf16 or --amp off")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: time the convolution algorithms once
    run = Path(cfg.out)
    ckdir, log_path = run / "checkpoints", run / "log.jsonl"
    resume_from = prepare_run(cfg, run)
    data = open_data(cfg)
    opened += [data["train"], data["val"]]
    n_cls = data["num_classes"]
    if resume_from is not None:
        from trainer.evaluate import check_checkpoint_labels

        check_checkpoint_labels(resume_from, ckdir / "last.pt", data["labels"], cfg.data)
    check_model_parallel(cfg, device, d)
    train_loader, val_loader = make_loaders(cfg, data, d, device)
    opened += [train_loader, val_loader]

    model, model_kwargs = build_model(cfg, n_cls, device, resume_from["model"] if resume_from else None)
    # section 5: v <- 0.9 v - 0.0005 lr w - lr g; w <- w + v. torch keeps v in gradient units (w -= lr v):
    # the same steps at a constant lr; after a drop the carried momentum moves at the new lr at once
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = LrSchedule(cfg.lr_schedule, cfg.lr, cfg.lr_factor, cfg.patience, cfg.max_lr_drops)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp == "fp16")
    _seed_process(cfg.seed, d.rank)
    done, best_err, best_epoch, note, inside = 0, math.inf, None, None, None
    if resume_from is not None:
        c = resume_from
        optimizer.load_state_dict(c["optimizer"])
        sched.load_state_dict(c["scheduler"])
        if c.get("scaler") and cfg.amp == "fp16":
            scaler.load_state_dict(c["scaler"])
        done, best_err = c["epoch"], c["best_val_top1_err"]
        best_epoch = c.get("best_epoch")
        rngs = c.get("rng") or []
        if len(rngs) == d.world:
            ck.set_rng_state(rngs[d.rank])
        inside = c.get("interrupted")
        if inside:
            note = (f"resumed inside epoch {inside['epoch']} after batch {inside['batch']} of "
                    f"{len(train_loader)}, from the checkpoint its interrupt saved")
        if len(rngs) != d.world:
            note = f"resumed with {d.world} processes from a run with {len(rngs)}: random streams reseeded"
    net, eval_net = _wrap(model, cfg, device, d)

    if d.world > 1:  # every process has checked RUN (prepare_run) before rank 0 writes into it
        dist.barrier()
    if d.main:
        run.mkdir(parents=True, exist_ok=True)
        ckdir.mkdir(exist_ok=True)
        env = environment(device, d)
        n_params = sum(p.numel() for p in model.parameters())
        write_json(run / "config.json", {**asdict(cfg), "model_kwargs": model_kwargs, "parameters": n_params,
                                          "val_source": data["val_source"], "environment": env})
        if resume_from is not None:  # the log keeps exactly the epochs the checkpoint holds
            rows = [r for r in _read_log(log_path) if r["epoch"] <= done]
            if resume_from.get("metrics") and not any(r["epoch"] == done for r in rows):
                rows.append(resume_from["metrics"])
            tmp = log_path.with_name(".log.jsonl.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
            os.replace(tmp, log_path)
    say = _printer(cfg.progress and d.main)
    say(f"train: {len(train_loader.indices)} images, "
        f"{len(train_loader)} steps of {cfg.batch_size} per epoch; {train_loader.dropped} left out by drop_last "
        "each epoch (other ones each epoch)")
    if note:
        say(note)
    if done >= cfg.epochs:
        say(f"{run} has already trained {done} epochs (--epochs {cfg.epochs}); nothing to do")

    stats_ckpt = {k: v for k, v in data["stats"].items() if k != "mean_image"}
    stats_ckpt["mean_image"] = torch.from_numpy(np.asarray(data["stats"]["mean_image"], np.float32))

    def checkpoint(epoch_done: int, metrics: dict | None, sched_state: dict, best: tuple, rng: list,
                   interrupted: dict | None = None) -> dict:
        return {"format": ck.FORMAT, "version": ck.VERSION, "model": ck.model_state(model),
                "model_kwargs": model_kwargs, "optimizer": optimizer.state_dict(), "scheduler": sched_state,
                "scaler": scaler.state_dict() if cfg.amp == "fp16" else None, "epoch": epoch_done,
                "best_val_top1_err": best[0], "best_epoch": best[1], "config": asdict(cfg),
                "labels": data["labels"], "stats": stats_ckpt, "rng": rng, "metrics": metrics,
                "interrupted": interrupted}

    last_metrics = resume_from.get("metrics") if resume_from is not None else None
    step = inside["step"] if inside else done * len(train_loader)
    # one host sync (NaN check, stop request, bar) every `sync_every` steps: each is a GPU pipeline stall
    sync_every = SYNC_EVERY if device.type == "cuda" else 1
    with _StopRequest() as stop:
        for epoch in range(done + 1, cfg.epochs + 1):
            # the state of the run as of `done` epochs: weights, optimizer, sched, best, last_metrics
            sched_state = sched.state_dict()
            lr = sched.lr
            for g in optimizer.param_groups:
                g["lr"] = lr
            start = inside["batch"] if inside else 0  # resumed inside this epoch: the batches it had not seen
            train_loader.set_epoch(epoch, start)
            net.train()
            t0 = time.perf_counter()
            loss_sum = torch.tensor(inside["loss_sum"] if inside else 0.0, dtype=torch.float64, device=device)
            wrong = torch.tensor(inside["wrong"] if inside else 0, dtype=torch.int64, device=device)
            seen = seen0 = inside["seen"] if inside else 0
            inside = None
            bad_step = torch.full((), -1, dtype=torch.int64, device=device)  # first non-finite loss: step
            bad_val = torch.zeros((), dtype=torch.float64, device=device)  # and value
            window = torch.zeros((), dtype=torch.float64, device=device)  # loss sum since the last sync
            bar = _bar(len(train_loader), f"epoch {epoch}/{cfg.epochs}", cfg.progress and d.main, start)
            for i, (x, y) in enumerate(train_loader, start=start + 1):  # i: batches of the epoch done after this one
                with autocast(cfg.amp, device.type):
                    logits = net(x)  # (B, num_classes)
                y = y.to(logits.device)
                loss = F.cross_entropy(logits.float(), y)
                step += 1
                lv = loss.detach().double()
                first = (bad_step < 0) & ~lv.isfinite()
                bad_step, bad_val = torch.where(first, step, bad_step), torch.where(first, lv, bad_val)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                window += lv.to(device)
                loss_sum += lv.to(device) * y.shape[0]
                wrong += (logits.detach().argmax(1) != y).sum().to(device)
                seen += y.shape[0]
                if i % sync_every and i < len(train_loader):
                    continue
                # every process learns whether any of them diverged or was asked to stop
                flags = torch.stack([(bad_step >= 0).double(), torch.tensor(float(stop.signum is not None),
                                    dtype=torch.float64, device=device), window])
                if d.world > 1:
                    dist.all_reduce(flags)
                diverged, stopping, window_sum = flags.tolist()
                window.zero_()
                if diverged:
                    if bar is not None:
                        bar.close()  # the message then starts on a line of its own
                    at, value = int(bad_step.item()), bad_val.item()
                    if at < 0:  # another process diverged (here it shows from the next step on)
                        at, value = step, float("nan")
                    raise ImgnetError(_diverged_message(value, at, epoch, i - (step - at), len(train_loader), lr,
                                                        ckdir, cfg))
                if bar is not None:
                    dt = time.perf_counter() - t0
                    n_win = (i - 1) % sync_every + 1
                    bar.set_postfix_str(f"loss {window_sum / d.world / n_win:.3f} lr {lr:g} "
                                        f"{(seen - seen0) * d.world / dt:.0f} img/s", refresh=False)
                    bar.update(n_win)
                if stopping and i < len(train_loader):
                    if bar is not None:
                        bar.close()
                    inner = {"epoch": epoch, "batch": i, "step": step, "loss_sum": float(loss_sum.item()),
                             "wrong": int(wrong.item()), "seen": seen}
                    rng = _gather_rng(d)
                    if d.main:
                        path = ck.save_checkpoint(ckdir / "last.pt", checkpoint(
                            done, last_metrics, sched_state, (best_err, best_epoch), rng, interrupted=inner))
                        print(f"stopped in epoch {epoch} after batch {i}/{len(train_loader)}: saved {path}; "
                              "the same command with --resume continues exactly", file=sys.stderr)
                    raise KeyboardInterrupt("stop requested")
            if bar is not None:
                bar.close()
            t_train = time.perf_counter() - t0
            loss_total, wrong_total, n_total = _all_sum([loss_sum.item(), float(wrong.item()), float(seen)], d, device)
            val = _validate(eval_net, val_loader, d, device, cfg.amp)
            t_epoch = time.perf_counter() - t0
            is_best = val["top1_err"] < best_err
            best = (val["top1_err"], epoch) if is_best else (best_err, best_epoch)
            sched.step(epoch, val["top1_err"])
            metrics = {"epoch": epoch, "lr": lr, "train_loss": loss_total / n_total,
                       "train_top1_err": wrong_total / n_total, "val_top1_err": val["top1_err"],
                       "val_top5_err": val["top5_err"], "val_loss": val["loss"],
                       "images_per_s": (n_total - seen0 * d.world) / t_train, "seconds": t_epoch,
                       "train_seconds": t_train, "val_seconds": t_epoch - t_train, "step": step,
                       "lr_drops": sched.drops, "next_lr": sched.lr, "best_val_top1_err": best[0],
                       "is_best": is_best, "n_train": int(n_total), "train_dropped": train_loader.dropped,
                       "n_val": val["n"],
                       "val_source": data["val_source"], "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            if note:
                metrics["note"], note = note, None
            rng = _gather_rng(d)
            if d.main:
                last = ck.save_checkpoint(ckdir / "last.pt", checkpoint(epoch, metrics, sched.state_dict(), best, rng))
                if is_best:
                    ck.link_checkpoint(last, ckdir / "best.pt")
                _append_line(log_path, metrics)
                _plot(run)
            done, last_metrics, (best_err, best_epoch) = epoch, metrics, best
            say(_epoch_line(metrics, cfg.epochs))
            stopping = torch.tensor(float(stop.signum is not None), dtype=torch.float64, device=device)
            if d.world > 1:
                dist.all_reduce(stopping)
            if stopping.item() and epoch < cfg.epochs:
                say(f"stopped after epoch {epoch}: {ckdir / 'last.pt'}; the same command with --resume continues")
                raise KeyboardInterrupt("stop requested")
    return {"run": str(run), "epochs": done, "best_val_top1_err": best_err if best_epoch else None,
            "best_epoch": best_epoch, "last": last_metrics, "checkpoint": str(ckdir / "best.pt"),
            "seconds": time.perf_counter() - t_start}


# ---------------------------------------------------------------------------------- helpers
def _gather_rng(d: Dist) -> list:
    """Every process's RNG states (rank order), so a resume with the same process count is exact."""
    state = ck.rng_state()
    if d.world == 1:
        return [state]
    out = [None] * d.world
    dist.all_gather_object(out, state)
    return out


def _diverged_message(value: float, step: int, epoch: int, batch: int, batches: int, lr: float, ckdir: Path,
                      cfg: TrainConfig) -> str:
    last = ckdir / "last.pt"
    if last.is_file():
        try:
            e = ck.load_checkpoint(last).get("epoch")
        except ImgnetError:
            e = "?"
        good = f"last good checkpoint {last} (after epoch {e})"
    else:
        good = "no checkpoint yet (it diverged in the first epoch)"
    hints = [f"a lower --lr (it was {lr:g})"] + ["--amp off"] * (cfg.amp != "off") \
        + ["--bias-init caffe"] * (cfg.bias_init == "paper")
    return (f"training loss became {value} at step {step} (epoch {epoch}, batch {batch}/{batches}) and training "
            f"stopped; {good}. Try {', or '.join(hints)}, in a new --out")


def _epoch_line(m: dict, epochs: int) -> str:
    return (f"epoch {m['epoch']}/{epochs}  lr {m['lr']:g}  train loss {m['train_loss']:.4f} "
            f"top-1 err {m['train_top1_err']:.4f}  |  val top-1 err {m['val_top1_err']:.4f} "
            f"top-5 err {m['val_top5_err']:.4f}  |  {m['images_per_s']:.0f} img/s  {m['seconds']:.0f} s"
            + ("  best" if m["is_best"] else ""))


def _printer(enabled: bool):
    def say(msg: str) -> None:
        if enabled:
            from tqdm import tqdm

            tqdm.write(msg, file=sys.stderr)
    return say


def _bar(total: int, desc: str, enabled: bool, initial: int = 0):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="batch", dynamic_ncols=True, leave=False,
                file=sys.stderr)


_plot_failed = False


def _plot(run: Path) -> None:
    """Redraw RUN/curves.png; a plotting problem never stops training (warned about once)."""
    global _plot_failed
    from trainer.plot import plot_run

    try:
        plot_run(run)
    except Exception as e:  # noqa: BLE001 - the plot is a convenience, the log holds the numbers
        if not _plot_failed:
            print(f"warning: could not draw {run / 'curves.png'}: {e}", file=sys.stderr)
        _plot_failed = True

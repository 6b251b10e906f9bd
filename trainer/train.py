"""`imgnet train`: the paper's recipe (Krizhevsky et al. 2012, section 5) from packed splits, for AlexNet or
any model `--arch` names (trainer/arch.py).

    from trainer.train import TrainConfig, train
    summary = train(TrainConfig(data="DATA", out="RUN"))

RUN/config.json (launch record, one more per resume), RUN/log.jsonl (one line per epoch),
RUN/checkpoints/last.pt and best.pt (self-contained, see trainer/checkpoint.py), RUN/curves.png.

Layout: `_train` sets the run up and runs the epoch loop; one epoch of SGD is trainer.loop.train_epoch, the
every-N-steps host sync trainer.loop.HostSync, the run's state trainer.checkpoint.RunState (turned into a
checkpoint and back by trainer.checkpoint), the run folder trainer.runfolder.

Devices: one GPU or the CPU; two GPUs as in the paper with `model_parallel` (one tower per GPU); many
GPUs or machines data parallel, one process per GPU:
    torchrun --nproc_per_node 8 -m cli train --data DATA --out RUN
(NCCL on CUDA, gloo on CPU). `batch_size` is the SGD batch of all processes together (128 in the
paper), split evenly between them, so the recipe does not change with the process count. Only rank 0
writes files; RUN must be on a filesystem every node sees for --resume.

Exact resume: the loader's order and augmentation are a function of (seed, epoch), and the checkpoint
holds the optimizer, schedule and every RNG state. A Ctrl-C or SIGTERM inside an epoch saves the position
in it (batch, step, running sums); resuming continues with the batches that epoch had not seen.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from imagenet_prep.errors import ImgnetError
from imagenet_prep.inuse import hold_data
from trainer import checkpoint as ck
from trainer import runfolder, weights
from trainer.config import RUNTIME_FIELDS, TrainConfig, check_config, config_for  # noqa: F401 - this module's interface
from trainer.hostmem import keep_freed_memory
from trainer.loop import EpochTotals, HostSync, LimitedLoader, StepKnobs, StopRequest, set_lr, train_epoch
from trainer.models import registry
from trainer.schedule import LrSchedule, parse_schedule  # noqa: F401 - part of this module's interface

HOLDOUT_SEED = 0  # --val-from-train picks the same images whatever --seed, so runs compare on one set
SYNC_EVERY = 16  # CUDA: steps between host syncs (NaN check, stop request, progress bar)


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
    """Splits, statistics and label map of DATA, checked against each other; the image size and the run's
    crop ("size", "crop"), checked against the model. Validation is on val, or where DATA has none on test
    (a CIFAR download's test batch)."""
    from imagenet_prep import open_split
    from imagenet_prep.labels import read_labels_json
    from imagenet_prep.stats import load_stats
    from trainer.data import held_out_split, resolve_crop

    labels = read_labels_json(cfg.data)
    train_split = open_split(cfg.data, "train")
    size = train_split.size
    crop = resolve_crop(cfg.crop, size)
    registry.check_crop(cfg.arch, crop)
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
        source = held_out_split(cfg.data)
        try:
            val_split = open_split(cfg.data, source)
        except ImgnetError as e:
            raise ImgnetError(f"{e} (validation steers the lr schedule and picks best.pt; "
                              "or hold out train images with --val-from-train N)") from e
    return {"labels": labels, "stats": stats, "train": train_split, "val": val_split, "train_idx": train_idx,
            "val_idx": val_idx, "val_source": source, "num_classes": n, "size": size, "crop": crop}


def make_loaders(cfg: TrainConfig, data: dict, d: Dist, device: torch.device):
    from trainer.data import InputTransform, check_split
    from trainer.loader import Loader

    if cfg.batch_size % d.world:
        raise ImgnetError(f"--batch-size {cfg.batch_size} does not split over {d.world} processes; "
                          f"expected a multiple of {d.world}")
    per_rank = cfg.batch_size // d.world
    common = dict(workers=cfg.workers, seed=cfg.seed, device=str(device), shard=(d.rank, d.world))
    for split in (data["train"], data["val"]):
        check_split(split, data["stats"], data["num_classes"], data["labels"])
    transform = functools.partial(InputTransform, data["stats"], mean=cfg.mean, channels_last=cfg.channels_last,
                                  crop=data["crop"], flip=cfg.flip)
    train_loader = Loader(data["train"], transform(lighting_std=cfg.lighting_std), per_rank, train=True,
                          views="random", indices=data["train_idx"], **common)
    val_loader = Loader(data["val"], transform(lighting_std=0.0), per_rank, train=False, views="center",
                        indices=data["val_idx"], **common)
    if len(train_loader) == 0:
        n = len(data["train"]) if data["train_idx"] is None else len(data["train_idx"])
        raise ImgnetError(f"{n} train images make no full batch of {cfg.batch_size}; expected a smaller --batch-size")
    return train_loader, val_loader


# ---------------------------------------------------------------------------------- training
def build_model(cfg: TrainConfig, num_classes: int, device: torch.device, state: dict | None = None,
                crop: int | None = None):
    """(the model of `cfg.arch` on `device`, or AlexNet split over cuda:0 and cuda:1 with model_parallel;
    the kwargs that rebuild it). `state`: grouped (one-device) weights to start from, as checkpoints hold them;
    None: `cfg.init_from`'s where given (not on --resume), else the model's own init.
    `crop`: the input side, for a model whose settings take it (`side`: the CIFAR nets)."""
    taken = {"num_classes": num_classes, **({} if crop is None else {"side": crop})}
    settings = registry.settings_of(cfg.arch, {**asdict(cfg), **taken})
    torch.manual_seed(cfg.seed)  # the same initial weights in every process (DDP also broadcasts rank 0's)
    model, kwargs = registry.build(cfg.arch, settings, init=cfg.init)
    if state is None and cfg.init_from and not cfg.resume:  # fine-tuning: trainer/weights.py
        state, note = weights.init_state(cfg.init_from, cfg.arch, model)
        if note and os.environ.get("RANK", "0") == "0":  # one line, from rank 0 under torchrun
            print(note, file=sys.stderr)
    if state is not None:
        model.load_state_dict(state)
    if cfg.model_parallel:
        model = model.to_model_parallel(("cuda:0", "cuda:1"))  # section 3.2: one tower per GPU
    else:
        model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if crop is not None:
        check_takes_crop(model, cfg.arch, crop)
    return model, kwargs


def check_takes_crop(model: torch.nn.Module, arch: str, crop: int) -> None:
    """ImgnetError, one line, where the model cannot take (2, 3, crop, crop) inputs (layers the crop is too
    small for): found before any training, not in the first step. Eval mode and no_grad, so no statistics move
    and no random number is drawn: the run is the same as without the check."""
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, 3, crop, crop, device=device))
    except RuntimeError as e:
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ImgnetError(f"--crop {crop}: --arch {arch} cannot take {crop}x{crop} inputs ({why}); expected a "
                          "larger --crop (up to DATA's size, prep --size) or an arch that takes this size") from e
    finally:
        model.train(was)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    """Section 5: v <- 0.9 v - 0.0005 lr w - lr g; w <- w + v. torch keeps v in gradient units (w -= lr v):
    the same steps at a constant lr; after a drop the carried momentum moves at the new lr at once.
    bias_decay=False: no decay on biases (any 1-d parameter), as Caffe and cuda-convnet. A model with its own
    parameter groups (ModelSpec.param_groups: the CIFAR nets' per-layer lr and decay multipliers) gets those."""
    own = registry.optimizer_groups(cfg.arch, model, cfg.lr, cfg.weight_decay, cfg.bias_decay)
    if own is not None:
        return torch.optim.SGD(own, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    params = list(model.parameters())
    if not cfg.bias_decay:
        params = [{"params": [p for p in params if p.ndim > 1]},
                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def check_device(cfg: TrainConfig, device: torch.device, d: Dist) -> None:
    if cfg.amp == "fp16" and device.type != "cuda":
        raise ImgnetError(f"--amp fp16 needs CUDA (GradScaler); on {device.type} use --amp bf16 or --amp off")
    if not cfg.model_parallel:
        return
    if d.world > 1:
        raise ImgnetError("--model-parallel under torchrun is not supported; use one or the other")
    registry.check_model_parallel(cfg.arch, registry.settings_of(cfg.arch, {**asdict(cfg), "num_classes": 1000}))
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


def _validate(model, loader, d: Dist, device: torch.device, amp: str = "off", sets=None,
              progress: bool = False) -> dict:
    """{metric name: mean over the val images of all processes} for every metric of trainer.eval.metrics.METRICS,
    and "n"; with `sets` (`_val_label_sets`) the figures of its label lists too (ReaL's)."""
    from trainer.eval.metrics import METRICS, figures, label_set_figures
    from trainer.eval.scoring import evaluate

    keys = list(METRICS) + (list(label_set_figures(sets.lists)) if sets is not None else [])
    # a process whose share of a small val split is empty still joins the sums (or the others would wait)
    m = (evaluate(model, loader, amp=amp, label_sets=sets, progress=progress and "val") if len(loader)
         else {"sums": dict.fromkeys(keys, 0.0), "n": 0})
    *sums, n = _all_sum([m["sums"][k] for k in keys] + [m["n"]], d, device)
    if n == 0:
        raise ImgnetError("the validation split yielded no images; expected a non-empty labelled split")
    return {**figures(dict(zip(keys, sums)), n), "n": int(n)}


def _val_label_sets(data: dict):
    """The val split's label sets where a label list applies to it (ReaL on the ILSVRC2012 val: log.jsonl's
    val_real_*), else None."""
    from trainer.labelsets.sets import label_sets

    if data["val_source"] != "val":
        return None
    sets = label_sets(data["val"].names, data["labels"])
    return sets if sets.lists else None


def train(cfg: TrainConfig) -> dict:
    """Train the model `cfg` names; returns a summary {"run", "epochs", "best_val_top1_err", "best_epoch",
    "last", "checkpoint", "seconds", "main"} ("main": this is rank 0, the process that reports), or {"run",
    "finished", "main"} for a --resume of a run that has trained its --epochs ("finished": saying so). Raises
    ImgnetError for bad input (before any work where possible)."""
    check_config(cfg)
    keep_freed_memory()  # every step's activations reused, not faulted in again (trainer/hostmem.py)
    d, device = init_distributed(cfg.device)
    if cfg.channels_last is None:  # NHWC where it is the faster layout: oneDNN's CPU convolutions
        cfg = replace(cfg, channels_last=device.type == "cpu")
    try:
        with contextlib.ExitStack() as opened:  # splits and loaders (worker processes, LMDB handles)
            return _train(cfg, d, device, opened)
    finally:
        if d.owns_group and dist.is_initialized():
            dist.destroy_process_group()


@dataclass
class Session:
    """One training process's run: its settings, loaders, model, optimizer and state (`open_session`)."""

    cfg: TrainConfig
    d: Dist
    device: torch.device
    run: Path
    data: dict
    train_loader: object
    val_loader: object
    model: torch.nn.Module  # the plain model (checkpoints)
    net: torch.nn.Module  # what the loop trains: DDP and/or compiled around `model`
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    state: ck.RunState
    fixed: dict  # what every checkpoint of the run holds unchanged
    val_sets: object  # trainer.labelsets.sets.LabelSets of the val split, or None
    say: object
    knobs: StepKnobs = StepKnobs()  # the knobs beside the paper's recipe (`_knobs`)
    tb: object = None  # trainer.tensorboard.RunScalars on rank 0 with --tensorboard

    @property
    def ckdir(self) -> Path:
        return self.run / "checkpoints"

    def save(self, path: Path, best: bool = False) -> Path | None:
        """Every process takes part (RNG gather); rank 0 writes the checkpoint and, when `best`, its lean form
        as best.pt."""
        rng = _gather_rng(self.d)
        ckpt = ck.to_checkpoint(self.state, run=self.fixed, model=self.model, optimizer=self.optimizer,
                                scaler=self.scaler, rng=rng)
        if self.knobs.ema is not None:  # the average's state, so that a resume continues it
            ckpt["ema"] = self.knobs.ema.state_dict()
        if not self.d.main:
            return None
        ck.save_checkpoint(path, ckpt)
        if best:
            ck.save_best(self.ckdir, ckpt)
        if self.knobs.ema is not None:  # and its weights as a checkpoint of their own, for test and predict
            from trainer.ema import ema_checkpoint

            ck.save_checkpoint(self.ckdir / "ema" / "last.pt", ema_checkpoint(ckpt))
        return path


def open_session(cfg: TrainConfig, d: Dist, device: torch.device, opened: contextlib.ExitStack):
    """(Session, a note for the first log line or None): the run folder checked (and, on resume, the checkpoint
    loaded into the state), the data opened, the loaders and the model built."""
    check_device(cfg, device, d)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: time the convolution algorithms once
    run = Path(cfg.out)
    if d.main:  # one train per run folder, for the whole run; DATA marked as read (imagenet_prep.inuse)
        opened.enter_context(runfolder.hold_run(run))
    opened.enter_context(hold_data(cfg.data))
    resume_from = runfolder.prepare(run, cfg.resume, asdict(cfg), RUNTIME_FIELDS)
    data = open_data(cfg)
    for split in (data["train"], data["val"]):
        opened.callback(split.close)
    if resume_from is not None:
        ck.check_labels(resume_from, run / "checkpoints" / "last.pt", data["labels"], cfg.data)
        if resume_from["epoch"] >= cfg.epochs:  # no record, no training: only a killed save's repairs
            if d.main:
                _repair_run_folder(run, resume_from, resume_from["epoch"], resume_from.get("metrics"),
                                   _printer(cfg.progress))
            return None, (f"{run} has already trained {resume_from['epoch']} epochs (--epochs {cfg.epochs}); "
                          "nothing to do (pass a larger --epochs to train on)")
    loaders = make_loaders(cfg, data, d, device)
    if cfg.limit_batches is not None:  # smoke runs: the first N batches of every epoch and validation
        loaders = [LimitedLoader(ld, cfg.limit_batches) for ld in loaders]
    train_loader, val_loader = (opened.enter_context(ld) for ld in loaders)
    model, model_kwargs = build_model(cfg, data["num_classes"], device, resume_from["model"] if resume_from else None,
                                      crop=data["crop"])
    optimizer = make_optimizer(model, cfg)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp == "fp16")
    state = ck.RunState(LrSchedule(cfg.lr_schedule, cfg.lr, cfg.lr_factor, cfg.patience, cfg.max_lr_drops,
                                   warmup_epochs=cfg.warmup_epochs, epochs=cfg.epochs,
                                   steps_per_epoch=len(train_loader)))
    _seed_process(cfg.seed, d.rank)
    note = None if resume_from is None else ck.restore(resume_from, state, optimizer=optimizer, scaler=scaler,
                                                        rank=d.rank, world=d.world, steps_per_epoch=len(train_loader))
    net, _ = _wrap(model, cfg, device, d)
    fixed = {"arch": cfg.arch, "model_kwargs": model_kwargs, "config": asdict(cfg), "labels": data["labels"],
             "stats": _checkpoint_stats(data["stats"]), "size": data["size"], "crop": data["crop"]}
    s = Session(cfg, d, device, run, data, train_loader, val_loader, model, net, optimizer, scaler, state, fixed,
                _val_label_sets(data), _printer(cfg.progress and d.main))
    s.knobs, s.tb = _knobs(cfg, model, state, resume_from), _tensorboard(cfg, run, d, optimizer, opened)
    _open_run_folder(cfg, run, d, device, model, model_kwargs, data, resume_from, state, s.say)
    s.say(f"train: {len(train_loader.indices)} images, {len(train_loader)} steps of {cfg.batch_size} per epoch; "
          f"{train_loader.dropped} left out by drop_last each epoch (other ones each epoch)" + (f"; {note}" * bool(note)))
    return s, note


def _knobs(cfg: TrainConfig, model, state: ck.RunState, resume_from: dict | None) -> StepKnobs:
    """The knobs beside the paper's recipe that act in every step; with none given, StepKnobs() (the recipe)."""
    ema = None
    if cfg.ema:
        from trainer.ema import Ema

        ema = Ema(model, cfg.ema)
        if resume_from is not None:
            ema.load_state_dict(resume_from["ema"])
    return StepKnobs(lr_at=state.schedule.lr_at if state.schedule.per_step else None,
                     label_smoothing=cfg.label_smoothing, ema=ema, max_steps=cfg.max_steps)


def _tensorboard(cfg: TrainConfig, run: Path, d: Dist, optimizer, opened: contextlib.ExitStack):
    if not (cfg.tensorboard and d.main):
        return None
    from trainer.tensorboard import RunScalars

    return opened.enter_context(RunScalars(run, optimizer))


def _max_steps_reached(s: Session) -> bool:
    """Whether --max-steps has been reached (said once, on rank 0); the run then ends, its checkpoint saved."""
    if s.cfg.max_steps is None or s.state.step < s.cfg.max_steps:
        return False
    if s.d.main:
        print(f"stopped at step {s.state.step} (--max-steps {s.cfg.max_steps}): saved {s.ckdir / 'last.pt'}; "
              "--resume with a larger --max-steps, or without it, continues exactly", file=sys.stderr)
    return True


def _train(cfg: TrainConfig, d: Dist, device: torch.device, opened: contextlib.ExitStack) -> dict:
    t_start = time.perf_counter()
    s, note = open_session(cfg, d, device, opened)
    if s is None:  # finished already: nothing written
        return {"run": cfg.out, "finished": note, "main": d.main}
    state, ckdir = s.state, s.ckdir
    with StopRequest() as stop:
        # one host sync (NaN check, stop request, bar) every SYNC_EVERY steps on CUDA: each is a pipeline stall
        sync = HostSync(device, d.world, stop, SYNC_EVERY if device.type == "cuda" else 1,
                        functools.partial(_diverged_message, ckdir=ckdir, cfg=cfg), s.tb and s.tb.add_step)
        for epoch in range(state.epoch + 1, cfg.epochs + 1):
            if _max_steps_reached(s):
                break
            metrics = run_epoch(s, epoch, sync)
            if metrics is None:  # --max-steps inside the epoch: its position is saved
                _max_steps_reached(s)
                break
            if note:
                metrics["note"], note = note, None
            if s.save(ckdir / "last.pt", best=metrics["is_best"]) is not None:
                runfolder.append_line(s.run / "log.jsonl", metrics)
                if s.tb is not None:
                    s.tb.add(metrics)
                _plot(s.run)
            s.say(_epoch_line(metrics, cfg.epochs))
            if epoch < cfg.epochs and sync.stop_requested():
                _stopped(ckdir / "last.pt" if d.main else None, f"after epoch {epoch}")
    return {"run": str(s.run), "epochs": state.epoch, "best_val_top1_err": state.best_err if state.best_epoch else None,
            "best_epoch": state.best_epoch, "last": state.metrics, "checkpoint": str(ckdir / "best.pt"),
            "seconds": time.perf_counter() - t_start, "main": d.main}


def run_epoch(s: Session, epoch: int, sync: HostSync) -> dict | None:
    """Train one epoch (from where an interrupt stopped it, on resume) and validate; returns its log line. A
    stop request inside the epoch saves the position in it and ends the run (KeyboardInterrupt); --max-steps
    inside it saves the position too and returns None."""
    cfg, state, loader = s.cfg, s.state, s.train_loader
    start = _epoch_start(state, epoch)
    lr = state.schedule.lr_at(state.step - start.batch + 1)  # of the epoch's first step (all of it: the recipe)
    set_lr(s.optimizer, lr)  # a group's lr_mult (a recipe's per-layer multiplier) scales the schedule
    loader.set_epoch(epoch, start.batch)
    t0 = time.perf_counter()
    with _bar(len(loader), f"epoch {epoch}/{cfg.epochs}", cfg.progress and s.d.main, start.batch) as bar:
        sync.begin(epoch, len(loader), lr, bar)
        totals = train_epoch(s.net, loader, s.optimizer, s.scaler, sync, state, cfg.amp, start, s.knobs)
    if totals.stopped:  # the position inside the epoch goes into the checkpoint: the resume is exact
        state.inside = {"epoch": epoch, "batch": totals.batch, "step": state.step,
                        "loss_sum": totals.loss_sum, "wrong": totals.wrong, "seen": totals.seen}
        saved = s.save(s.ckdir / "last.pt")
        if totals.at_max_steps:
            return None
        _stopped(saved, f"in epoch {epoch} after batch {totals.batch}/{len(loader)}")
    t_train = time.perf_counter() - t0
    val = _validate(s.model, s.val_loader, s.d, s.device, cfg.amp, s.val_sets, cfg.progress and s.d.main)
    metrics = _end_epoch(state, epoch, lr, totals, val, s.d, s.device, t0, t_train, loader, s.data)
    if s.knobs.ema is not None:  # the average, validated beside the weights (best.pt follows the weights)
        ema_val = _validate(s.knobs.ema.module, s.val_loader, s.d, s.device, cfg.amp, s.val_sets,
                            cfg.progress and s.d.main)
        metrics.update({f"val_ema_{k}": v for k, v in ema_val.items() if k != "n"})
    return metrics


def _stopped(path: Path | None, where: str):
    """End the run on a stop request; rank 0 (`path` not None) says where and what continues it."""
    if path is not None:
        print(f"stopped {where}: saved {path}; the same command with --resume continues exactly", file=sys.stderr)
    raise KeyboardInterrupt("stop requested")


def _epoch_start(state: ck.RunState, epoch: int) -> EpochTotals:
    """Where `epoch` starts: its first batch, or where an interrupt inside it stopped (consumed here)."""
    inside, state.inside = state.inside, None
    if not inside:
        return EpochTotals()
    assert inside["epoch"] == epoch, (inside, epoch)
    return EpochTotals(inside["loss_sum"], inside["wrong"], inside["seen"], batch=inside["batch"])


def _end_epoch(state: ck.RunState, epoch: int, lr: float, totals: EpochTotals, val: dict, d: Dist,
               device: torch.device, t0: float, t_train: float, train_loader, data: dict) -> dict:
    """Record a finished epoch in `state` (best, schedule, counters); returns its log.jsonl line."""
    loss_total, wrong_total, n_total = _all_sum([totals.loss_sum, float(totals.wrong), float(totals.seen)], d, device)
    t_epoch = time.perf_counter() - t0
    is_best = val["top1_err"] < state.best_err
    if is_best:
        state.best_err, state.best_epoch = val["top1_err"], epoch
    state.schedule.step(epoch, val["top1_err"])
    metrics = {"epoch": epoch, "lr": lr, "train_loss": loss_total / n_total, "train_top1_err": wrong_total / n_total,
               **{f"val_{k}": v for k, v in val.items() if k != "n"},
               "images_per_s": (n_total - totals.seen_before * d.world) / t_train, "seconds": t_epoch,
               "train_seconds": t_train, "val_seconds": t_epoch - t_train, "step": state.step,
               "lr_drops": state.schedule.drops, "next_lr": state.schedule.lr_at(state.step + 1),
               "best_val_top1_err": state.best_err,
               "is_best": is_best, "n_train": int(n_total), "train_dropped": train_loader.dropped, "n_val": val["n"],
               "val_source": data["val_source"], "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    state.epoch, state.metrics = epoch, metrics
    return metrics


def _checkpoint_stats(stats: dict) -> dict:
    out = {k: v for k, v in stats.items() if k != "mean_image"}
    out["mean_image"] = torch.from_numpy(np.asarray(stats["mean_image"], np.float32))
    return out


def _open_run_folder(cfg: TrainConfig, run: Path, d: Dist, device: torch.device, model, model_kwargs: dict,
                     data: dict, resume_from: dict | None, state: ck.RunState, say) -> None:
    """Rank 0 writes this launch's record; on resume it trims the log to the checkpoint, repairs best.pt
    and clears the temporary files a killed save left."""
    if d.world > 1:  # every process has checked RUN (prepare) before rank 0 writes into it
        dist.barrier()
    if not d.main:
        return
    ckdir = run / "checkpoints"
    ckdir.mkdir(parents=True, exist_ok=True)
    record = {**asdict(cfg), "model_kwargs": model_kwargs, "parameters": sum(p.numel() for p in model.parameters()),
              "val_source": data["val_source"], "input": {"size": data["size"], "crop": data["crop"]},
              "data_identity": {"labels_sha256": data["train"].meta.get("labels_sha256"),
                                "train_records": len(data["train"])},
              "environment": runfolder.environment(device, d.world)}
    if cfg.init_from and resume_from is None:  # which weights it started from, whatever the file is later
        record["init_from_sha256"] = weights.file_sha256(cfg.init_from)
    runfolder.write_record(run, record, resume=resume_from is not None)
    if resume_from is not None:
        _repair_run_folder(run, resume_from, state.epoch, state.metrics, say)


def _repair_run_folder(run: Path, resume_from: dict, epochs: int, metrics: dict | None, say) -> None:
    """On resume: the log trimmed to the checkpoint, best.pt repaired, a killed save's temporary files gone."""
    ckdir = run / "checkpoints"
    runfolder.trim_log(run / "log.jsonl", epochs, metrics)
    for tmp in ck.remove_stale_temps(ckdir):
        say(f"removed {tmp}, left by a save that did not finish")
    fixed = ck.repair_best(ckdir, resume_from)
    if fixed:
        say(fixed)


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
    hints = [f"a lower --lr (it was {lr:g})"] + ["--amp off"] * (cfg.amp != "off") + model_hints(cfg)
    return (f"training loss became {value} at step {step} (epoch {epoch}, batch {batch}/{batches}) and training "
            f"stopped; {good}. Try {', or '.join(hints)}, in a new --out")


def model_hints(cfg: TrainConfig) -> list[str]:
    """The model switches worth trying after a divergence: those whose metadata names a `divergence_hint`
    value that the run does not use (--bias-init caffe)."""
    from dataclasses import fields

    own = {f.name for f in fields(registry.spec_of(cfg.arch).settings)}  # hints of the run's own model only
    return [f"--{f.name.replace('_', '-')} {f.metadata['divergence_hint']}" for f in registry.switch_fields()
            if f.name in own and f.metadata.get("divergence_hint") not in (None, getattr(cfg, f.name))]


def _epoch_line(m: dict, epochs: int) -> str:
    return (f"epoch {m['epoch']}/{epochs}  lr {m['lr']:g}  train loss {m['train_loss']:.4f} "
            f"top-1 err {m['train_top1_err']:.4f}  |  val top-1 err {m['val_top1_err']:.4f} "
            f"top-5 err {m['val_top5_err']:.4f}  |  {m['images_per_s']:.0f} img/s  {m['seconds']:.0f} s"
            + (f"  |  ema val top-1 err {m['val_ema_top1_err']:.4f}" if "val_ema_top1_err" in m else "")
            + ("  best" if m["is_best"] else ""))


def _printer(enabled: bool):
    def say(msg: str) -> None:
        if enabled:
            from tqdm import tqdm

            tqdm.write(msg, file=sys.stderr)
    return say


def _bar(total: int, desc: str, enabled: bool, initial: int = 0):
    """A tqdm bar on stderr; a disabled one (every call a no-op) where not `enabled`."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="batch", dynamic_ncols=True, leave=False,
                file=sys.stderr, disable=not enabled)


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

"""`imgnet figure1`: the paper's Figure 1 (Krizhevsky et al. 2012, section 3.1) on CIFAR-10: "a four-layer
convolutional neural network with ReLUs reaches a 25% training error rate on CIFAR-10 six times faster than an
equivalent network with tanh neurons. The learning rates for each network were chosen independently to make
training as fast as possible. No regularization of any kind was employed."

    from trainer.figure1 import Figure1Config, run_figure1
    result = run_figure1(Figure1Config(data="CIFAR", out="FIG1"))   # the dict of FIG1/figure1.json

The net is cuda-convnet's 18pct net (`--arch cifar-18pct`, trainer/cuda_convnet.py) with `--norm off` (its
response normalisation is a regulariser of sorts, and the paper used none), no weight decay, no dropout (the
net has none), no augmentation (crop = the data's size, no flip, no PCA lighting), momentum 0.9, batch 100
and a constant learning rate (no drops); the recipe's per-layer lr multipliers (bias x2) stay, as the net's
own definition. Per activation:

1. sweep: each learning rate of `lrs` trains `sweep_epochs` epochs in its own run folder OUT/<act>-lr<lr>;
   the lowest training error (log.jsonl's train_top1_err, the error over the epoch's SGD steps) at the last
   sweep epoch wins; a rate whose loss diverges loses (its folder gets diverged.json).
2. the winner's run continues in the same folder, one epoch at a time (train(..., resume=True) with one more
   epoch), until its training error over an epoch is at most `target` or `max_epochs` is reached.

OUT/figure1.json (`figure_record`) and OUT/figure1.png (the paper's form) follow; `imgnet compare OUT/*/`
reads the run folders. A rerun after a kill continues every run where its checkpoint stands.
"""

from __future__ import annotations

import os
import signal
import threading
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from imagenet_prep.errors import ImgnetError

ACTIVATIONS = ("relu", "tanh")  # the figure's two nets, in the order they are drawn and run
LINE_STYLE = {"relu": "-", "tanh": "--"}  # the paper: solid ReLU, dashed tanh
LABEL = {"relu": "ReLU", "tanh": "tanh"}
ARCH = "cifar-18pct"
DIVERGED = "diverged.json"  # in a run folder whose loss went non-finite: the rerun does not repeat it
# reference on ../shared/data/cifar10 (its README): 0.003 beat 0.001 for both nets after two epochs; ReLU
# reached 25% in epoch 8; tanh was at 33.7% after 23 epochs, falling about 0.4 points an epoch (~45 epochs)
DEFAULT_LRS = (0.001, 0.003, 0.01)


@dataclass
class Figure1Config:
    """The settings of `imgnet figure1` (the options of the command)."""

    data: str  # DATA: prep'd CIFAR-10 (train, and test or val) with pca-stats
    out: str  # OUT: run folders, figure1.json, figure1.png
    lrs: tuple = DEFAULT_LRS  # candidate constant learning rates, each net picks its own
    sweep_epochs: int = 2  # epochs each candidate trains before the pick
    target: float = 0.25  # training error rate to reach (the paper's 25%)
    max_epochs: int = 40  # cap per net; tanh needs about 45 on the JPEG CIFAR-10 by the reference runs
    jobs: int = 1  # 2: the relu and tanh chains side by side in two processes
    threads: int | None = None  # torch threads per chain [default: torch's own with jobs 1, 1 with jobs 2]
    workers: int = 0  # loader processes per run (0: in process; 3 KB records cost less than a worker)
    channels_last: bool = True  # NHWC: these nets' CPU steps take about 0.7x the time (oneDNN), same function
    device: str = "auto"  # where each run trains
    seed: int = 0  # weights and batch order, the same for every run
    force: bool = False  # redo figure1.json/png over a finished one (the run folders continue, never restart)
    progress: bool = True  # the trainer's bars and epoch lines (off in the side-by-side children)

    def __post_init__(self):
        lrs = tuple(float(x) for x in self.lrs)
        if not lrs or any(not x > 0 for x in lrs) or len(set(lrs)) != len(lrs):
            raise ImgnetError(f"--lrs {','.join(map(str, self.lrs))}; expected distinct positive learning rates, "
                              "e.g. 0.001,0.003,0.01")
        self.lrs = lrs
        if not 0 < self.target < 1:
            raise ImgnetError(f"--target {self.target}; expected a training error rate in (0, 1), e.g. 0.25")
        if not 1 <= self.sweep_epochs <= self.max_epochs:
            raise ImgnetError(f"--sweep-epochs {self.sweep_epochs} with --max-epochs {self.max_epochs}; expected "
                              "1 <= sweep epochs <= max epochs")
        if self.jobs not in (1, 2):
            raise ImgnetError(f"--jobs {self.jobs}; expected 1 (one net after the other) or 2 (side by side)")
        if self.threads is not None and self.threads < 1:
            raise ImgnetError(f"--threads {self.threads}; expected a positive number of torch threads")


# ------------------------------------------------------------------------------------ pure parts
def outcome(rows: list[dict], target: float, cap: int) -> dict:
    """When a run's training error over an epoch first reached `target` within `cap` epochs: {"reached": True,
    "epochs" (that epoch), "train_top1_err"}; else the epochs it trained (the cap, or fewer where it stopped early)
    with its error and "reached": False. `rows`: log.jsonl's lines."""
    rows = [r for r in rows if r["epoch"] <= cap]
    for r in rows:
        if r["train_top1_err"] <= target:
            return {"reached": True, "epochs": r["epoch"], "train_top1_err": r["train_top1_err"]}
    last = rows[-1] if rows else {"epoch": 0, "train_top1_err": None}
    return {"reached": False, "epochs": last["epoch"], "train_top1_err": last["train_top1_err"]}


def epoch_ratio(relu: dict, tanh: dict) -> dict:
    """tanh's epochs to the target over ReLU's (`outcome` dicts): "measured" when both reached it;
    "lower_bound" when only ReLU did (tanh needs more than its epochs so far: the ratio is at least that);
    "upper_bound" when only tanh did; None ("undetermined") when neither did."""
    if relu["reached"] and tanh["reached"]:
        return {"ratio": tanh["epochs"] / relu["epochs"], "ratio_kind": "measured"}
    if relu["reached"]:
        return {"ratio": tanh["epochs"] / relu["epochs"], "ratio_kind": "lower_bound"}
    if tanh["reached"] and relu["epochs"]:
        return {"ratio": tanh["epochs"] / relu["epochs"], "ratio_kind": "upper_bound"}
    return {"ratio": None, "ratio_kind": "undetermined"}


def pick_lr(sweep: dict) -> float:
    """The learning rate with the lowest training error at the sweep's last epoch ({lr: error, None where it
    diverged}); ties go to the rate listed first. ImgnetError when every rate diverged."""
    ok = {lr: e for lr, e in sweep.items() if e is not None}
    if not ok:
        raise ImgnetError(f"every learning rate of the sweep ({', '.join(f'{x:g}' for x in sweep)}) diverged; "
                          "expected lower --lrs")
    return min(ok, key=lambda lr: (ok[lr], list(sweep).index(lr)))


def ratio_text(rec: dict) -> str:
    """'6.0x' / '>= 5.0x' / '<= 2.0x' / 'undetermined' for figure1.json's ratio."""
    r, kind = rec["ratio"], rec["ratio_kind"]
    if r is None:
        return "undetermined"
    return {"measured": "", "lower_bound": ">= ", "upper_bound": "<= "}[kind] + f"{r:.1f}x"


def run_name(activation: str, lr: float) -> str:
    return f"{activation}-lr{lr:g}"


# --------------------------------------------------------------------------------------- runs
def _say(msg: str) -> None:
    print(f"figure1: {msg}", file=sys.stderr, flush=True)


def data_size(data: str) -> int:
    """The side of DATA's train images (the crop: the whole image, no augmentation)."""
    from imagenet_prep import open_split

    split = open_split(data, "train")
    try:
        return split.size
    finally:
        split.close()


def run_config(fc: Figure1Config, activation: str, lr: float, epochs: int, crop: int):
    """The TrainConfig of one run of the figure: the 18pct net without normalisation, nothing that regularises,
    a constant lr; the recipe's batch 100, momentum 0.9 and per-layer multipliers."""
    from trainer.config import config_for

    run = Path(fc.out) / run_name(activation, lr)
    # plateau with no drops: a constant lr
    settings = dict(data=fc.data, out=str(run), arch=ARCH, activation=activation, norm="off", lr=lr, epochs=epochs,
                    batch_size=100, momentum=0.9, weight_decay=0.0, lr_schedule="plateau", max_lr_drops=0,
                    crop=crop, flip=False, lighting_std=0.0, mean="image", seed=fc.seed, workers=fc.workers,
                    device=fc.device, channels_last=fc.channels_last, progress=fc.progress,
                    resume=(run / "checkpoints" / "last.pt").is_file())
    return config_for(**settings)


def advance(fc: Figure1Config, activation: str, lr: float, epochs: int, crop: int) -> list[dict]:
    """Train run (activation, lr) to `epochs` epochs (resuming its folder); returns its log.jsonl lines. A loss
    that goes non-finite ends the run: diverged.json records where, and the log stays as it was."""
    from trainer.runfolder import read_log
    from trainer.train import train

    run = Path(fc.out) / run_name(activation, lr)
    rows = read_log(run / "log.jsonl")
    if (run / DIVERGED).is_file() or (rows and rows[-1]["epoch"] >= epochs):
        return rows
    try:
        train(run_config(fc, activation, lr, epochs, crop))
    except ImgnetError as e:
        if not str(e).startswith("training loss became"):  # trainer.train._diverged_message
            raise
        from imagenet_prep.atomic import write_json

        write_json(run / DIVERGED, {"after_epoch": rows[-1]["epoch"] if rows else 0, "message": str(e)})
        _say(f"{run_name(activation, lr)} diverged: {e}")
    return read_log(run / "log.jsonl")


def run_chain(fc: Figure1Config, activation: str, crop: int) -> dict:
    """One net of the figure: the sweep over `fc.lrs`, then the winner trained on to the target or the cap.
    Returns figure1.json's record of the net."""
    from trainer.runfolder import read_log

    t0 = time.perf_counter()  # this invocation's; logged_seconds: every epoch of the net's runs, any invocation
    sweep = {}
    for i, lr in enumerate(fc.lrs, 1):
        _say(f"{activation} lr {lr:g}: sweep run {i}/{len(fc.lrs)}, epochs 1-{fc.sweep_epochs} in "
             f"{Path(fc.out) / run_name(activation, lr)}")
        rows = train_until(fc, activation, lr, crop, fc.sweep_epochs, target=None)
        at = [r for r in rows if r["epoch"] == fc.sweep_epochs]
        sweep[lr] = at[0]["train_top1_err"] if at else None  # None: diverged
    lr = pick_lr(sweep)
    _say(f"{activation}: lr {lr:g} wins the sweep (" + ", ".join(
        f"{x:g}: {'diverged' if e is None else f'{e:.4f}'}" for x, e in sweep.items()) + f"); on until the "
        f"training error is at most {fc.target:g} or epoch {fc.max_epochs}")
    rows = train_until(fc, activation, lr, crop, fc.max_epochs, target=fc.target)
    logged = sum(r.get("seconds") or 0.0 for x in fc.lrs
                 for r in read_log(Path(fc.out) / run_name(activation, x) / "log.jsonl"))
    return {"lr": lr, "sweep": {f"{x:g}": e for x, e in sweep.items()},
            "diverged": [f"{x:g}" for x, e in sweep.items() if e is None],
            "run": str(Path(fc.out) / run_name(activation, lr)), **outcome(rows, fc.target, fc.max_epochs),
            "curve": [{"epoch": r["epoch"], "train_top1_err": r["train_top1_err"]} for r in rows
                      if r["epoch"] <= fc.max_epochs],
            "wall_seconds": time.perf_counter() - t0, "logged_seconds": logged}


def train_until(fc: Figure1Config, activation: str, lr: float, crop: int, epochs: int,
                target: float | None) -> list[dict]:
    """Run (activation, lr) on, one epoch at a time, to `epochs` epochs, or (with `target`) until an epoch's
    training error is at most `target`, or a divergence; returns its log lines. Each epoch is one
    train(resume=True) call with one more epoch, so the run stops right after the epoch that reaches the target."""
    from trainer.runfolder import read_log

    name = run_name(activation, lr)
    rows = read_log(Path(fc.out) / name / "log.jsonl")
    done = rows[-1]["epoch"] if rows else 0
    while done < epochs and not (target is not None and outcome(rows, target, epochs)["reached"]):
        rows = advance(fc, activation, lr, done + 1, crop)
        if not rows or rows[-1]["epoch"] <= done:  # diverged (diverged.json says where)
            break
        done = rows[-1]["epoch"]
        _say(f"{name}: epoch {done}: training error {rows[-1]['train_top1_err']:.4f}" +
             (f" (target {target:g}, cap {epochs})" if target is not None else f" (sweep, {epochs} epochs)"))
    return rows


def _chain_alone(fc: Figure1Config, activation: str, crop: int, parent: int) -> dict:
    """run_chain in a process of its own (--jobs 2): `fc.threads` torch threads (1 by default), no bars (two
    would interleave). It stops as a kill stops a run (SIGTERM: the position is saved, a rerun continues)
    when its parent goes, even by kill -9, so no orphan keeps writing into the run folders."""
    import torch

    _stop_with(parent)
    torch.set_num_threads(fc.threads or 1)
    fc.progress = False
    return run_chain(fc, activation, crop)


def _stop_with(parent: int) -> None:
    """SIGTERM to this process once `parent` is no longer its parent (checked every second)."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def run_chains(fc: Figure1Config, crop: int) -> dict:
    """{activation: run_chain's record}: one after the other, or (jobs 2) side by side in two processes,
    which a stop of this one (Ctrl-C, SIGTERM, an error in the other chain) stops too."""
    if fc.jobs == 1:
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(fc.threads or before)
        try:
            return {a: run_chain(fc, a, crop) for a in ACTIVATIONS}
        finally:
            torch.set_num_threads(before)
    import multiprocessing as mp

    pool = mp.get_context("spawn").Pool(len(ACTIVATIONS))
    try:
        pending = {a: pool.apply_async(_chain_alone, (fc, a, crop, os.getpid())) for a in ACTIVATIONS}
        return {a: r.get() for a, r in pending.items()}
    finally:
        pool.terminate()  # SIGTERM: a chain still running saves its position
        pool.join()


# ------------------------------------------------------------------------------------ outputs
def figure_record(fc: Figure1Config, nets: dict, crop: int, seconds: float) -> dict:
    """figure1.json: each net's record, the ratio of epochs to the target (or its bound) and how it was made."""
    ratio = epoch_ratio(nets["relu"], nets["tanh"])
    return {"figure": "Krizhevsky et al. 2012, Figure 1: epochs to a training error of 25% on CIFAR-10, ReLU vs tanh",
            "data": os.path.abspath(fc.data), "out": os.path.abspath(fc.out), "arch": ARCH,
            "settings": {"norm": "off", "weight_decay": 0.0, "dropout": None, "crop": crop, "flip": False,
                         "lighting_std": 0.0, "momentum": 0.9, "batch_size": 100,
                         "lr_schedule": "constant", "lr_mult": lr_multipliers(),
                         "regularization": "none (the paper: no regularization of any kind)"},
            "lrs": [f"{x:g}" for x in fc.lrs], "sweep_epochs": fc.sweep_epochs, "target": fc.target,
            "max_epochs": fc.max_epochs, "nets": nets, **ratio, "ratio_text": ratio_text(ratio),
            "paper_ratio": 6.0, "jobs": fc.jobs, "threads": fc.threads, "wall_seconds": seconds, "complete": True}


def lr_multipliers() -> dict:
    """{layer: [weight, bias]} lr multipliers of the 18pct recipe, which every run of the figure keeps."""
    from trainer.cuda_convnet import RECIPES

    return {layer: list(m) for layer, m in RECIPES[ARCH]["lr_mult"].items()}


def plot_figure(rec: dict, out) -> Path:
    """The paper's Figure 1: training error rate against epochs, ReLU solid, tanh dashed, the target line;
    the measured ratio in the title."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    out = Path(out)
    fig = Figure(figsize=(6, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for act in ACTIVATIONS:
        net = rec["nets"][act]
        pts = [(c["epoch"], c["train_top1_err"]) for c in net["curve"]]
        if pts:
            ax.plot(*zip(*pts), LINE_STYLE[act], color="black", lw=1.5, label=f"{LABEL[act]} (lr {net['lr']:g})")
    ax.axhline(rec["target"], color="grey", ls=":", lw=1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(left=0)
    ax.set_ylim(0, 1.05 * max([0.75] + [c["train_top1_err"] for n in rec["nets"].values() for c in n["curve"]]))
    ax.set_xlabel("Epochs")
    ax.set_ylabel("Training error rate")
    ax.legend()
    r, t = rec["nets"]["relu"], rec["nets"]["tanh"]
    ax.set_title(f"tanh/ReLU epochs to {100 * rec['target']:g}% training error: {ratio_text(rec)}\n"
                 f"(ReLU {r['epochs']}{'' if r['reached'] else ' (not reached)'}, tanh {t['epochs']}"
                 f"{'' if t['reached'] else ' (not reached)'} epochs; paper: 6x)", fontsize=10)
    fig.tight_layout()
    from trainer.plot import save_png

    return save_png(fig, out)


def run_figure1(fc: Figure1Config) -> dict:
    """Figure 1 into fc.out: the run folders, figure1.json and figure1.png; returns the JSON's dict. Refuses a
    finished figure1.json without `force`."""
    from imagenet_prep.atomic import write_json
    from trainer.runfolder import read_record

    out = Path(fc.out)
    done = out / "figure1.json"
    if done.is_file() and not fc.force:
        old = read_record(done, "the figure1.json that `imgnet figure1` writes")
        if old.get("complete"):
            raise ImgnetError(f"{done} already holds a finished Figure 1 (ratio {ratio_text(old)}); pass --force "
                              "to write it again from the run folders (they continue, e.g. with a higher "
                              "--max-epochs) or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    crop = data_size(fc.data)
    nets = run_chains(fc, crop)
    rec = figure_record(fc, nets, crop, time.perf_counter() - t0)
    plot_figure(rec, out / "figure1.png")
    write_json(done, rec)
    _say(f"tanh/ReLU epochs to {fc.target:g} training error: {ratio_text(rec)}; wrote {done} and "
         f"{out / 'figure1.png'}")
    return rec
